"""Istio's Telemetry kind with real traffic: access logs turned on and off per Telemetry (Istio's JSON format, to
a file), tracing to a Zipkin collector with the sampling a Telemetry sets, and metrics overrides (a metric
disabled, a tag removed) as Prometheus reads :15090.

Hosts: ``client`` (service account ``sleep``), ``echo`` (HTTP on 8080), and ``collector``, a machine outside the
mesh that runs a Zipkin stand-in on 9411 (declared to the mesh by a ServiceEntry, as a Jaeger VM without a
sidecar would be). The providers come from ``vmesh_mesh_config``, as an IstioOperator's meshConfig says them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from harness import APPS, TARGET_PYTHON
from harness.netmesh import FIRST_HOST_ADDRESS, NETWORK, PROXY_UID
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

COLLECTOR = str(NETWORK.network_address + FIRST_HOST_ADDRESS + 2)  # the third host below
ZIPKIN = ("mesh/zipkin.yaml", f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: zipkin, namespace: istio-system}}
spec:
  hosts: [zipkin.monitoring.internal]
  location: MESH_EXTERNAL
  ports: [{{number: 9411, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {COLLECTOR}}}]
""")


def telemetry(spec: str) -> tuple[str, str]:
    return ("mesh/telemetry.yaml", "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
                                   "metadata: {name: mesh-default, namespace: istio-system}\nspec:\n" + spec)


@pytest.fixture(scope="module")
def log_dir():
    """A folder Envoy's user can reach and write its access log in (pytest's own are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="vmesh-netns-logs-"))
    os.chmod(folder, 0o755)
    os.chown(folder, PROXY_UID, PROXY_UID)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mesh(netmesh_module, log_dir):
    mesh_config = {
        "extensionProviders": [
            {"name": "zipkin", "zipkin": {"service": "zipkin.monitoring.internal", "port": 9411}},
            {"name": "json-file", "envoyFileAccessLog": {"path": f"{log_dir}/access.json",
                                                         "logFormat": {"labels": {}}}},
        ]}
    common = {"vmesh_mesh_config": mesh_config}
    hosts = {
        "client": {**common, "vmesh_service_account": "sleep", "vmesh_labels": {"app": "sleep", "version": "v1"}},
        "echo": {**common, "vmesh_service": "echo", "vmesh_labels": {"app": "echo", "version": "v1"},
                 "vmesh_ports": [{"port": 8080, "protocol": "http"}]},
        "collector": {"netmesh_outside": True},
    }
    mesh = netmesh_module(hosts, [ZIPKIN])
    assert mesh.address("collector") == COLLECTOR
    mesh.start_echo("echo")
    mesh.start_app("collector", [TARGET_PYTHON, str(APPS / "span_collector.py"), "--port", "9411"],
                   name="collector", wait_port=9411)
    return mesh


def call(mesh, path: str = "/hello") -> str:
    """One request from the client to echo with a request id of its own; the id."""
    request_id = str(uuid.uuid4())
    answer = mesh.request("client", f"http://echo:8080{path}", headers={"x-request-id": request_id})
    assert answer.status == 200, answer
    return request_id


def traced(mesh) -> str:
    """One request with a path of its own (a traced call's request id is rewritten: it carries the trace's
    reason); its path."""
    path = f"/trace/{uuid.uuid4()}"
    call(mesh, path)
    return path


def push(mesh, sources) -> None:
    """Push, then one call: a connection the client's proxy pooled before the push was accepted by the server's
    old filter chain, and the call after a push closes it (the chain drains); every call after that sees the
    new config."""
    mesh.push(sources)
    call(mesh)


def logged(log_dir, request_id: str) -> list[dict]:
    path = log_dir / "access.json"
    lines = path.read_text().splitlines() if path.exists() else []
    return [entry for entry in map(json.loads, lines) if entry.get("request_id") == request_id]


def wait_until(check, seconds: float = 15):
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_access_logs_follow_the_telemetry_kind(mesh, log_dir):
    quiet = call(mesh)
    push(mesh, [ZIPKIN, telemetry("  accessLogging:\n  - providers: [{name: json-file}]\n")])
    loud = call(mesh)
    entries = wait_until(lambda: len(logged(log_dir, loud)) == 2 and logged(log_dir, loud))
    assert entries, (log_dir / "access.json").read_text() if (log_dir / "access.json").exists() else "no log"
    # one line from each side of the call, in Istio's JSON format
    by_cluster = {e["upstream_cluster"]: e for e in entries}
    assert set(by_cluster) == {"outbound|8080||echo.default.svc.cluster.local", "inbound|8080||"}, entries
    for entry in entries:
        assert entry["method"] == "GET" and entry["path"] == "/hello" and entry["response_code"] == 200
        assert entry["authority"] == "echo:8080" and entry["protocol"] == "HTTP/1.1"
    assert logged(log_dir, quiet) == []  # before the Telemetry: no access log
    # disabled again: the next call leaves no line (the file is flushed every second)
    push(mesh, [ZIPKIN, telemetry("  accessLogging:\n  - providers: [{name: json-file}]\n    disabled: true\n")])
    off = call(mesh)
    time.sleep(2.5)
    assert logged(log_dir, off) == []


def spans(mesh) -> list[dict]:
    return [json.loads(line) for line in mesh.log("collector", "collector").splitlines() if line.startswith("{")]


def test_a_traced_call_is_one_trace_with_the_client_span_as_parent(mesh):
    push(mesh, [ZIPKIN, telemetry("  tracing:\n  - providers: [{name: zipkin}]\n    randomSamplingPercentage: 100\n")])
    path = traced(mesh)
    mine = lambda: [s for s in spans(mesh) if s.get("tags", {}).get("http.url", "").endswith(path)]  # noqa: E731
    found = wait_until(lambda: len(mine()) >= 2 and mine(), seconds=20)
    assert found, spans(mesh)
    by_kind = {s["kind"]: s for s in found}
    client, server = by_kind["CLIENT"], by_kind["SERVER"]
    # one trace: the server's span is the child of the client's
    assert client["traceId"] == server["traceId"] and len(client["traceId"]) == 32
    assert server["parentId"] == client["id"]
    # Istio's names: the service is app.namespace, the span host:port/*
    assert client["localEndpoint"]["serviceName"] == "sleep.default"
    assert server["localEndpoint"]["serviceName"] == "echo.default"
    assert client["name"] == server["name"] == "echo.default.svc.cluster.local:8080/*"
    assert server["tags"]["http.status_code"] == "200"
    assert server["tags"]["istio.canonical_service"] == "echo"
    # sampling 0 %: calls go through, nothing is reported
    push(mesh, [ZIPKIN, telemetry("  tracing:\n  - providers: [{name: zipkin}]\n    randomSamplingPercentage: 0\n")])
    unsampled = traced(mesh)
    time.sleep(6)  # Envoy's Zipkin tracer sends what it has every 5 s
    assert not [s for s in spans(mesh) if s.get("tags", {}).get("http.url", "").endswith(unsampled)]


def test_metrics_overrides_disable_a_metric_and_remove_a_tag(mesh):
    push(mesh, [ZIPKIN, telemetry("""  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_SIZE}
      disabled: true
    - match: {metric: ALL_METRICS, mode: SERVER}
      tagOverrides:
        source_principal: {operation: REMOVE}
        mesh_name: {value: "'prod'"}
""")])
    for _ in range(3):
        call(mesh)
    text = wait_until(lambda: (lambda t: "istio_requests_total{" in t and t)(
        mesh.request("collector", f"http://{mesh.address('echo')}:15090/stats/prometheus").text))
    served = [line for line in text.splitlines() if line.startswith("istio_requests_total{")]
    assert served and all('reporter="destination"' in line for line in served)
    assert all("source_principal=" not in line and 'mesh_name="prod"' in line for line in served), served
    assert "istio_request_bytes" not in text and "istio_response_bytes_count{" in text
    client = mesh.request("collector", f"http://{mesh.address('client')}:15090/stats/prometheus").text
    sent = [line for line in client.splitlines() if line.startswith("istio_requests_total{")]
    # the client's side keeps its tags (the tag override is for the server's side only)
    assert sent and all('source_principal="spiffe://cluster.local/ns/default/sa/sleep"' in line for line in sent)
    assert "mesh_name" not in client and "istio_request_bytes" not in client
