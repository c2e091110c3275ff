"""A global rate limit with real traffic: Istio's sample EnvoyFilter, verbatim, on two ingress hosts, and Envoy's
reference rate-limit service (envoyproxy/ratelimit, counters in Redis) on a host of its own, reached over mTLS.

The seed's limit: 5 requests a minute to /productpage across every ingress, the 6th through either gets 429.
Then per-descriptor limits (the path, an end-user header), what happens when the service or Redis is down
(``failure_mode_deny`` both ways), and new limits taking effect with no restart. The service counts in fixed
windows (a calendar minute), so each counting test starts early in a minute with every counter at zero.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from harness import DATA
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401
from harness.ratelimit import GRPC_PORT, Service, requires_ratelimit

pytestmark = [pytest.mark.netns, requires_netns, requires_ratelimit]

FOLDER = Path("/run/vmesh-tests-ratelimit")  # readable by the service's uid; removed after the module
SAMPLE = (DATA / "ratelimit" / "productpage_envoy_ratelimit.yaml").read_text()  # Istio's, verbatim
EDGE = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - route: [{destination: {host: productpage, port: {number: 9080}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""
# a second descriptor: who the user is (Bookinfo's end-user header), counted apart from the path
BY_USER = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: filter-ratelimit-user, namespace: istio-system}
spec:
  workloadSelector:
    labels: {istio: ingressgateway}
  configPatches:
  - applyTo: VIRTUAL_HOST
    match:
      context: GATEWAY
      routeConfiguration: {vhost: {name: "", route: {action: ANY}}}
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions: [{request_headers: {header_name: end-user, descriptor_key: USER}}]
"""
LIMITS = [{"domain": "productpage-ratelimit", "descriptors": [
    {"key": "PATH", "value": "/productpage", "rate_limit": {"unit": "minute", "requests_per_unit": 5}},
    {"key": "PATH", "rate_limit": {"unit": "minute", "requests_per_unit": 100}},
    {"key": "USER", "value": "jason", "rate_limit": {"unit": "minute", "requests_per_unit": 2}},
    # shadow mode: counted and reported by the service, never enforced
    {"key": "USER", "value": "trial", "rate_limit": {"unit": "minute", "requests_per_unit": 1}, "shadow_mode": True},
]}]
# Envoy counts the filter's answers on the cluster the route goes to
COUNTED = "cluster.outbound|9080||productpage.default.svc.cluster.local.ratelimit."
SOURCES = [("mesh/edge.yaml", EDGE), ("mesh/ratelimit.yaml", SAMPLE), ("mesh/by-user.yaml", BY_USER)]


@pytest.fixture(scope="module")
def mesh(netmesh_module):
    hosts = {
        "ingress-1": {"vmesh_labels": {"istio": "ingressgateway"}},
        "ingress-2": {"vmesh_labels": {"istio": "ingressgateway"}},
        "productpage-v1": {"vmesh_service": "productpage", "vmesh_ports": [{"port": 9080, "protocol": "http"}]},
        "ratelimit-1": {"vmesh_service": "ratelimit", "vmesh_labels": {"app": "ratelimit"},
                        "vmesh_ports": [{"port": GRPC_PORT, "name": "grpc", "protocol": "grpc"}]},
        "browser": {"netmesh_outside": True},
    }
    mesh = netmesh_module(hosts, SOURCES)
    mesh.start_echo("productpage-v1")
    return mesh


@pytest.fixture(scope="module")
def service(mesh):
    shutil.rmtree(FOLDER, ignore_errors=True)
    try:
        yield Service(mesh, "ratelimit-1", FOLDER).start(LIMITS)
    finally:
        shutil.rmtree(FOLDER, ignore_errors=True)


@pytest.fixture
def limits(service):
    """Every counter at zero, early in a calendar minute (the service's window), the test's limits in force."""
    service.write(LIMITS)
    assert "USER_jason" in service.wait_loaded("USER_jason")
    left = 60 - time.time() % 60
    if left < 25:
        time.sleep(left + 0.5)
    service.flush()
    yield service
    service.write(LIMITS)


def get(mesh, ingress: str, path: str = "/productpage", **headers: str):
    return mesh.request("browser", f"http://{mesh.address(ingress)}:8080{path}", headers=headers)


def test_the_6th_request_through_either_ingress_gets_429(mesh, limits):
    # the seed: 5 a minute across all ingress hosts; Istio's sample as it is written selects both
    answers = [get(mesh, f"ingress-{1 + i % 2}") for i in range(6)]
    assert [a.status for a in answers] == [200] * 5 + [429], answers
    assert answers[5].headers.get("x-envoy-ratelimited") == "true", answers[5]
    # and stays limited through both for the rest of the minute
    assert {get(mesh, "ingress-1").status, get(mesh, "ingress-2").status} == {429}
    # the service was asked over mTLS, by both ingress hosts
    for ingress in ("ingress-1", "ingress-2"):
        handshakes = mesh.stats(ingress, "cluster.rate_limit_cluster.ssl.handshake")
        assert handshakes["cluster.rate_limit_cluster.ssl.handshake"] >= 1, handshakes
        assert mesh.stats(ingress, COUNTED)[COUNTED + "ok"] >= 2
    assert mesh.stats("ingress-2", COUNTED)[COUNTED + "over_limit"] >= 1


def test_limits_hold_per_descriptor_path_and_end_user(mesh, limits):
    # another path has the key's own limit (100), not /productpage's 5
    assert [get(mesh, "ingress-1", "/static/app.css").status for _ in range(7)] == [200] * 7
    # jason may make 2 a minute, whatever the path; another user is not counted with him
    jason = [get(mesh, "ingress-2", "/api/v1/products", **{"end-user": "jason"}).status for _ in range(3)]
    assert jason == [200, 200, 429], jason
    assert get(mesh, "ingress-1", "/api/v1/products", **{"end-user": "jason"}).status == 429
    assert get(mesh, "ingress-1", "/api/v1/products", **{"end-user": "mike"}).status == 200
    # a limit in shadow mode lets everything through
    trial = [get(mesh, "ingress-1", "/api/v1/products", **{"end-user": "trial"}).status for _ in range(3)]
    assert trial == [200, 200, 200], trial


def test_envoy_reports_the_limit_in_the_ratelimit_headers_when_asked(mesh, limits):
    # the sample with the filter's enable_x_ratelimit_headers (IETF draft 03): every answer tells the limit
    headers = SAMPLE.replace("failure_mode_deny: true", "failure_mode_deny: true\n"
                             "            enable_x_ratelimit_headers: DRAFT_VERSION_03")
    assert headers != SAMPLE
    mesh.push([("mesh/edge.yaml", EDGE), ("mesh/ratelimit.yaml", headers), ("mesh/by-user.yaml", BY_USER)])
    try:
        first = get(mesh, "ingress-1")
        assert first.status == 200, first
        assert first.headers["x-ratelimit-limit"] == "5, 5;w=60", first.headers
        assert first.headers["x-ratelimit-remaining"] == "4", first.headers
        assert 0 < int(first.headers["x-ratelimit-reset"]) <= 60, first.headers
        answers = [get(mesh, "ingress-2") for _ in range(5)]
        assert [a.status for a in answers] == [200] * 4 + [429], answers
        assert answers[-1].headers["x-ratelimit-remaining"] == "0", answers[-1].headers
        assert answers[-1].headers.get("x-envoy-ratelimited") == "true", answers[-1].headers
    finally:
        mesh.push(SOURCES)


def test_the_service_is_reached_only_through_its_sidecar_with_mtls(mesh, service):
    # plaintext from outside the mesh to the service's port is refused by its sidecar (STRICT); the service
    # itself listens on loopback only
    plain = mesh.request("browser", f"http://{mesh.address('ratelimit-1')}:{GRPC_PORT}/")
    assert plain.status == 0, plain
    for port in (8080, 6070):  # its HTTP and debug ports: not on the host's address at all
        try:
            answer = mesh.tcp("browser", mesh.address("ratelimit-1"), port, "GET / HTTP/1.0\r\n\r\n", timeout=3)
        except ConnectionError:
            answer = b""
        assert answer == b"", answer


def test_limits_change_with_no_restart(mesh, limits):
    pid = limits.service.pid
    tighter = [{"domain": "productpage-ratelimit", "descriptors": [
        {"key": "PATH", "value": "/productpage", "rate_limit": {"unit": "minute", "requests_per_unit": 2}},
        {"key": "PATH", "rate_limit": {"unit": "minute", "requests_per_unit": 100}}]}]
    limits.write(tighter)
    loaded = limits.wait_loaded("requests_per_unit=2")
    assert "requests_per_unit=2" in loaded and "USER_jason" not in loaded, loaded
    statuses = [get(mesh, f"ingress-{1 + i % 2}").status for i in range(3)]
    assert statuses == [200, 200, 429], statuses
    # the same process: read again, not restarted
    assert limits.service.pid == pid and limits.service.poll() is None


def _failure_mode(deny: bool) -> list[tuple[str, str]]:
    sample = SAMPLE.replace("failure_mode_deny: true", f"failure_mode_deny: {str(deny).lower()}")
    assert deny or sample != SAMPLE
    return [("mesh/edge.yaml", EDGE), ("mesh/ratelimit.yaml", sample), ("mesh/by-user.yaml", BY_USER)]


@pytest.mark.parametrize("down", ["service", "redis"])
def test_when_the_limit_cannot_be_asked_failure_mode_deny_decides(mesh, service, down):
    # counts nothing near a limit: any time in the minute will do
    stop, start = (service.stop_service, service.start_service) if down == "service" else \
        (service.stop_redis, service.start_redis)
    stop()
    try:
        # failure_mode_deny: true (the sample's): no answer, no entry; Envoy says 500
        denied = get(mesh, "ingress-1", "/static/app.css")
        assert denied.status == 500, denied
        stats = mesh.stats("ingress-1", COUNTED)
        assert stats[COUNTED + "error"] >= 1, stats
        # false: the request goes through unlimited
        mesh.push(_failure_mode(False))
        allowed = get(mesh, "ingress-2", "/static/app.css")
        assert allowed.status == 200, allowed
        assert stats.get(COUNTED + "failure_mode_allowed", 0) == 0
        assert mesh.stats("ingress-2", COUNTED)[COUNTED + "failure_mode_allowed"] >= 1
    finally:
        mesh.push(SOURCES)
        start()
    # back: the service reconnects to Redis by itself, within seconds (until then the sample's deny holds)
    deadline = time.monotonic() + 20
    while (answer := get(mesh, "ingress-1", "/static/app.css")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert answer.status == 200, answer
