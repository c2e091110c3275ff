"""Health checks from vmesh_probe and draining a host, with real sidecars under load.

Each service has two hosts. ``web`` is probed with an HTTP GET, ``kv`` (TCP) with a TCP connect, ``job`` with a
command run by ``vmesh-probe`` (roles/proxy/files), all every second. ``api`` has no probe: it is drained and
undrained as playbooks/drain.yml and undrain.yml do it (the client endpoints pushed without the host, then its
Envoy's health failed so its connections close after their current request; the reverse to undrain).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import ROOT, TARGET_PYTHON
from harness.netmesh import PROXY_UID
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

PROBE_RUNNER = ROOT / "roles" / "proxy" / "files" / "vmesh-probe"
_HTTP = [{"port": 8080, "protocol": "http"}]
_TIMING = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}
# the exec probe: the app answers on its own host (run by vmesh-probe, in the host's namespace)
_EXEC = [TARGET_PYTHON, "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/', timeout=1)"]
HOSTS = {
    "client": {},
    **{f"web-{i}": {"vmesh_service": "web", "vmesh_ports": _HTTP,
                    "vmesh_probe": {"httpGet": {"path": "/healthz"}, **_TIMING}} for i in (1, 2)},
    **{f"kv-{i}": {"vmesh_service": "kv", "vmesh_ports": [{"port": 9000, "protocol": "tcp"}],
                   "vmesh_probe": {"tcpSocket": {}, **_TIMING}} for i in (1, 2)},
    **{f"job-{i}": {"vmesh_service": "job", "vmesh_ports": _HTTP,
                    "vmesh_probe": {"exec": {"command": _EXEC}, **_TIMING}} for i in (1, 2)},
    **{f"api-{i}": {"vmesh_service": "api", "vmesh_ports": _HTTP} for i in (1, 2)},
}
# a probe declares an app down after 1 failure in a 1 s period; the client's next check (1 s) takes it out
DETECT_SECONDS = 6


@pytest.fixture(scope="module")
def mesh(netmesh_module):
    mesh = netmesh_module(HOSTS)
    for host in HOSTS:
        if host.startswith(("web", "job", "api")):
            mesh.start_echo(host)
        elif host.startswith("kv"):
            mesh.start_echo(host, tcp=True)
    for host in ("job-1", "job-2"):
        start_runner(mesh, host)
    # a host joins a client's load balancing once its first check there passed (its app may start after it)
    for service, port in (("web", 8080), ("kv", 9000), ("job", 8080)):
        for host in (f"{service}-1", f"{service}-2"):
            wait_health(mesh, service, port, host, healthy=True, timeout=30)
    return mesh


def start_runner(mesh, host: str) -> None:
    mesh.start_app(host, [TARGET_PYTHON, "-I", str(PROBE_RUNNER), "--period", "1", "--timeout", "1",
                          "--failure", "1", "--success", "1", "--", *_EXEC], name="vmesh-probe", uid=65534)


def health(mesh, client: str, service: str, port: int) -> dict[str, str]:
    """{endpoint address: its health flags} in ``client``'s Envoy for the service's cluster."""
    cluster = f"outbound|{port}||{service}.default.svc.cluster.local"
    out = {}
    for line in mesh.admin(client, "/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
            out[parts[1].rsplit(":", 1)[0]] = parts[3]
    return out


def wait_health(mesh, service: str, port: int, host: str, healthy: bool, timeout: float = DETECT_SECONDS) -> float:
    """Seconds until ``client`` sees ``host`` (un)healthy; fails the test after ``timeout``."""
    started = time.monotonic()
    address = mesh.address(host)
    while True:
        flags = health(mesh, "client", service, port).get(address)
        if flags is not None and (flags == "healthy") == healthy:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"{host} not {'healthy' if healthy else 'unhealthy'} in the client after {timeout} s: {flags}")
        time.sleep(0.1)


def inbound_requests(mesh, host: str) -> int:
    stats = mesh.stats(host, "http.inbound_")
    return sum(v for k, v in stats.items() if k.endswith(".downstream_rq_total"))


def restart_echo(mesh, host: str) -> None:
    mesh.start_echo(host)


def test_http_probe_takes_a_stopped_app_out_within_the_period_and_back(mesh):
    assert {who for _, who in mesh.sequence("client", "http://web:8080/", 20)} == {"web-1", "web-2"}
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(mesh.sequence, "client", "http://web:8080/", 300, concurrency=2)
        time.sleep(0.5)
        mesh.stop_app("web-2", "echo-8080")
        detected = wait_health(mesh, "web", 8080, "web-2", healthy=False)
        answered = load.result()
    assert detected < DETECT_SECONDS
    # the requests in flight when the app stopped were retried on web-1 (Istio's default retry on 503)
    assert {status for status, _ in answered} == {200}, sorted(set(answered))
    before = inbound_requests(mesh, "web-2")
    after = mesh.sequence("client", "http://web:8080/", 40, concurrency=2)
    assert set(after) == {(200, "web-1")}
    assert inbound_requests(mesh, "web-2") == before  # no request even reaches web-2's proxy
    restart_echo(mesh, "web-2")
    wait_health(mesh, "web", 8080, "web-2", healthy=True)
    assert {who for _, who in mesh.sequence("client", "http://web:8080/", 20)} == {"web-1", "web-2"}


def test_tcp_probe_takes_a_stopped_app_out(mesh):
    kv = mesh.resolve("client", "kv")
    who = {mesh.tcp("client", kv, 9000, b"x").split(b" ")[0] for _ in range(10)}
    assert who == {b"host=kv-1", b"host=kv-2"}
    mesh.stop_app("kv-2", "echo-9000")
    wait_health(mesh, "kv", 9000, "kv-2", healthy=False)
    # TCP has no retry: without the probe, every other connection would be cut (kv-2's proxy finds no app)
    answers = [mesh.tcp("client", kv, 9000, b"x") for _ in range(20)]
    assert all(a.startswith(b"host=kv-1") for a in answers), answers
    mesh.start_echo("kv-2", tcp=True)
    wait_health(mesh, "kv", 9000, "kv-2", healthy=True)


def test_exec_probe_fails_the_host_through_its_proxy(mesh):
    wait_health(mesh, "job", 8080, "job-2", healthy=True)
    mesh.stop_app("job-2", "echo-8080")
    wait_health(mesh, "job", 8080, "job-2", healthy=False)
    assert "the app is unhealthy" in mesh.log("job-2", "vmesh-probe")
    assert set(mesh.sequence("client", "http://job:8080/", 20)) == {(200, "job-1")}
    restart_echo(mesh, "job-2")
    wait_health(mesh, "job", 8080, "job-2", healthy=True)
    assert {who for _, who in mesh.sequence("client", "http://job:8080/", 20)} == {"job-1", "job-2"}


def test_an_unhealthy_app_is_refused_on_the_probe_path_only(mesh):
    # what a client's proxy asks: /healthz/probe on 15021, plaintext; /healthz/ready is the proxy's own readiness
    probe = f"http://{mesh.address('web-1')}:15021/healthz/probe"
    assert mesh.request("client", probe, uid=PROXY_UID).status == 200
    mesh.stop_app("web-1", "echo-8080")
    deadline = time.monotonic() + DETECT_SECONDS
    while mesh.request("client", probe, uid=PROXY_UID).status != 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert mesh.request("client", probe, uid=PROXY_UID).status == 503
    assert mesh.request("client", f"http://{mesh.address('web-1')}:15021/healthz/ready", uid=PROXY_UID).status == 200
    restart_echo(mesh, "web-1")
    wait_health(mesh, "web", 8080, "web-1", healthy=True)


def test_drain_and_undrain_under_load_fail_no_request(mesh):
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(mesh.sequence, "client", "http://api:8080/?delay=0.05", 300, concurrency=4)
        time.sleep(1)
        mesh.push(mesh.sources, drained={"api-2"})  # drain.yml: every client's endpoints without api-2
        mesh.admin("api-2", "/healthcheck/fail", "POST")  # its connections close after their current request
        drained_at = inbound_requests(mesh, "api-2")
        answered = load.result()
    assert {status for status, _ in answered} == {200}, sorted(set(answered))
    assert {"api-1", "api-2"} <= {who for _, who in answered}  # api-2 served until it was drained
    assert health(mesh, "client", "api", 8080) == {mesh.address("api-1"): "healthy"}
    assert set(mesh.sequence("client", "http://api:8080/", 20)) == {(200, "api-1")}
    assert inbound_requests(mesh, "api-2") == drained_at
    with ThreadPoolExecutor(max_workers=1) as pool:  # undrain.yml: the host first, then the clients
        load = pool.submit(mesh.sequence, "client", "http://api:8080/?delay=0.05", 200, concurrency=4)
        time.sleep(0.5)
        mesh.admin("api-2", "/healthcheck/ok", "POST")
        mesh.push(mesh.sources, drained=set())
        answered = load.result()
    assert {status for status, _ in answered} == {200}, sorted(set(answered))
    assert answered[-1][1] in ("api-1", "api-2")
    assert {who for _, who in mesh.sequence("client", "http://api:8080/", 20)} == {"api-1", "api-2"}
