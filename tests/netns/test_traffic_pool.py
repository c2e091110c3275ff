"""Load balancing and connection-pool settings with real sidecars: what each DestinationRule setting changes.

``lb`` has a slow host (``lb-slow``, every answer 0.4 s late) and a fast one (``lb-fast``); ``flaky`` answers 503
to ``?status=503``; ``nowhere`` is a ServiceEntry whose endpoint is an address nothing answers at.
"""

from __future__ import annotations

import time

import pytest

from harness.netmesh import NETWORK
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

_HTTP = [{"port": 8080, "protocol": "http"}]
NOWHERE = str(NETWORK.network_address + 250)  # on the mesh's switch, no host there: connects hang
HOSTS = {
    "client": {"netmesh_etc_hosts": [f"{NOWHERE} nowhere.example.test"]},
    "lb-slow": {"vmesh_service": "lb", "vmesh_labels": {"version": "slow"}, "vmesh_ports": _HTTP},
    "lb-fast": {"vmesh_service": "lb", "vmesh_labels": {"version": "fast"}, "vmesh_ports": _HTTP},
    "flaky-v1": {"vmesh_service": "flaky", "vmesh_ports": _HTTP},
}
NOWHERE_ENTRY = f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: nowhere}}
spec:
  hosts: [nowhere.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: {NOWHERE}}}]
"""


def rule(host: str, policy: str) -> tuple[str, str]:
    return (f"mesh/{host}-dr.yaml", f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  trafficPolicy:
{policy}""")


RETRIES = ("mesh/flaky-vs.yaml", """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: [flaky]
  http:
  - route: [{destination: {host: flaky}}]
    retries: {attempts: 3, retryOn: 5xx}
""")


@pytest.fixture(scope="module")
def mesh(netmesh_module):
    mesh = netmesh_module(HOSTS, [("mesh/nowhere.yaml", NOWHERE_ENTRY)])
    mesh.start_echo("lb-slow", delay=0.4)
    mesh.start_echo("lb-fast")
    mesh.start_echo("flaky-v1")
    return mesh


def answered(counts, host: str) -> int:
    return counts.get((200, host), 0)


def stat(mesh, host: str, name: str) -> int:
    return mesh.stats(host, name).get(name, 0)


def test_round_robin_ignores_the_slow_host_least_request_avoids_it(mesh):
    mesh.push([rule("lb", "    loadBalancer: {simple: ROUND_ROBIN}\n")])
    spread = mesh.sample("client", "http://lb:8080/", 40, concurrency=4)
    assert answered(spread, "lb-slow") == answered(spread, "lb-fast") == 20, spread
    mesh.push([rule("lb", "    loadBalancer: {simple: LEAST_REQUEST}\n")])
    spread = mesh.sample("client", "http://lb:8080/", 60, concurrency=4)
    # While a slow answer is pending, a new request goes to the host with fewer requests in flight. Envoy draws
    # two hosts at random (power of two choices): a quarter of the draws are the slow host twice, so it still
    # gets some; round robin would give it half.
    assert sum(spread.values()) == 60 and answered(spread, "lb-fast") >= 36, spread


def test_random_picks_without_a_pattern(mesh):
    mesh.push([rule("lb", "    loadBalancer: {simple: ROUND_ROBIN}\n")])
    alternating = [who for _, who in mesh.sequence("client", "http://lb:8080/?delay=0", 20)]
    assert all(a != b for a, b in zip(alternating, alternating[1:])), alternating  # strictly alternating
    mesh.push([rule("lb", "    loadBalancer: {simple: RANDOM}\n")])
    picks = [who for _, who in mesh.sequence("client", "http://lb:8080/", 60, concurrency=6)]
    assert {"lb-slow", "lb-fast"} <= set(picks)
    assert any(a == b for a, b in zip(picks, picks[1:])), picks  # runs: no alternation


def test_http2_max_requests_caps_requests_in_flight(mesh):
    mesh.push([rule("lb", "    connectionPool:\n      http: {http2MaxRequests: 1}\n")])
    results = mesh.sequence("client", "http://lb:8080/?delay=1", 4, concurrency=4)
    statuses = sorted(status for status, _ in results)
    # one request in flight at a time: the others overflow at once with Envoy's 503
    assert statuses.count(200) >= 1 and statuses.count(503) >= 2, results


def test_max_requests_per_connection_opens_a_connection_per_request(mesh):
    cluster = "cluster.outbound|8080||lb.default.svc.cluster.local.upstream_cx_total"
    mesh.push([rule("lb", "    loadBalancer: {simple: ROUND_ROBIN}\n")])
    before = stat(mesh, "client", cluster)
    mesh.sample("client", "http://lb:8080/?delay=0", 10)
    pooled = stat(mesh, "client", cluster) - before
    mesh.push([rule("lb", "    loadBalancer: {simple: ROUND_ROBIN}\n"
                          "    connectionPool:\n      http: {maxRequestsPerConnection: 1}\n")])
    before = stat(mesh, "client", cluster)
    mesh.sample("client", "http://lb:8080/?delay=0", 10)
    assert stat(mesh, "client", cluster) - before == 10 and pooled <= 2, pooled


def test_idle_timeout_closes_unused_connections(mesh):
    prefix = "cluster.outbound|8080||lb.default.svc.cluster.local."
    mesh.push([rule("lb", "    connectionPool:\n      http: {idleTimeout: 500ms}\n")])
    mesh.sample("client", "http://lb:8080/?delay=0", 4)
    deadline = time.monotonic() + 5
    while stat(mesh, "client", prefix + "upstream_cx_active") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stat(mesh, "client", prefix + "upstream_cx_active") == 0
    assert stat(mesh, "client", prefix + "upstream_cx_idle_timeout") >= 1


def test_max_retries_bounds_retries_across_the_cluster(mesh):
    inbound = "cluster.inbound|8080||.upstream_rq_total"
    mesh.push([RETRIES])
    before = stat(mesh, "flaky-v1", inbound)
    assert mesh.request("client", "http://flaky:8080/?status=503").status == 503
    assert stat(mesh, "flaky-v1", inbound) - before == 4  # the request and 3 retries
    mesh.push([RETRIES, rule("flaky", "    connectionPool:\n      http: {maxRetries: 0}\n")])
    before = stat(mesh, "flaky-v1", inbound)
    assert mesh.request("client", "http://flaky:8080/?status=503").status == 503
    assert stat(mesh, "flaky-v1", inbound) - before == 1  # no retry budget: only the request itself


def test_connect_timeout(mesh):
    docs = [("mesh/nowhere.yaml", NOWHERE_ENTRY)]
    mesh.push(docs + [rule("nowhere.example.test", "    connectionPool:\n      tcp: {connectTimeout: 200ms}\n")])
    started = time.monotonic()
    answer = mesh.request("client", "http://nowhere.example.test:8080/", timeout=15)
    assert answer.status == 503 and time.monotonic() - started < 2, answer
    name = "cluster.outbound|8080||nowhere.example.test.upstream_cx_connect_timeout"
    assert stat(mesh, "client", name) >= 1
