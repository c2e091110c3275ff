"""Istio's TCP metrics on :15090 with real connections: N connections give N opened and N closed, and the bytes
each way, once per reporter, with Istio's labels; a Telemetry turning a TCP metric off.

Hosts: ``client`` (service account ``sleep``), ``tcp-echo`` (a TCP service on 9000; it answers with a line naming
itself, then what it got), and ``outside``, from which Prometheus would scrape.
"""

from __future__ import annotations

import re
import time

import pytest

from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

HOSTS = {
    "client": {"vmesh_service_account": "sleep", "vmesh_labels": {"app": "sleep", "version": "v1"}},
    "tcp-echo": {"vmesh_service": "tcp-echo", "vmesh_labels": {"app": "tcp-echo", "version": "v1"},
                 "vmesh_ports": [{"port": 9000, "protocol": "tcp"}]},
    "outside": {"netmesh_outside": True},
}
STRICT = ("mesh/peer.yaml", """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
""")
NO_BYTES = ("mesh/telemetry.yaml", """apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - match: {metric: TCP_SENT_BYTES}
      disabled: true
""")
SERIES = re.compile(r'^(istio_tcp_[a-z_]+)\{([^}]*)\} (\S+)$', re.M)
LABEL = re.compile(r'([a-z_]+)="([^"]*)"')


@pytest.fixture(scope="module")
def mesh(netmesh_module):
    mesh = netmesh_module(HOSTS, [STRICT])
    mesh.start_echo("tcp-echo", tcp=True)
    return mesh


def scrape(mesh, host: str) -> dict[tuple[str, str], tuple[float, dict[str, str]]]:
    """{(metric, reporter): (value summed over series, the labels of the last series)}."""
    answer = mesh.request("outside", f"http://{mesh.address(host)}:15090/stats/prometheus")
    assert answer.status == 200, answer
    out: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
    for name, labels, value in SERIES.findall(answer.text):
        parsed = dict(LABEL.findall(labels))
        key = (name, parsed["reporter"])
        out[key] = (out.get(key, (0.0, {}))[0] + float(value), parsed)
    return out


def wait_for(mesh, host: str, metric: str, reporter: str, expected: float) -> float:
    deadline = time.monotonic() + 15
    while True:
        seen = scrape(mesh, host).get((metric, reporter), (0.0, {}))[0]
        if seen >= expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def test_tcp_connections_and_bytes_are_counted_once_per_reporter(mesh):
    count, payload = 4, b"ping-0123456789"
    answers = [mesh.tcp("client", "tcp-echo", 9000, payload) for _ in range(count)]
    assert all(a.endswith(payload) and a.startswith(b"host=tcp-echo") for a in answers), answers
    reply = len(answers[0])
    for host, reporter in (("client", "source"), ("tcp-echo", "destination")):
        assert wait_for(mesh, host, "istio_tcp_connections_closed_total", reporter, count) == count
        metrics = scrape(mesh, host)
        assert metrics[("istio_tcp_connections_opened_total", reporter)][0] == count
        assert metrics[("istio_tcp_received_bytes_total", reporter)][0] == count * len(payload)
        assert metrics[("istio_tcp_sent_bytes_total", reporter)][0] == count * reply
        labels = metrics[("istio_tcp_connections_opened_total", reporter)][1]
        assert labels["request_protocol"] == "tcp" and "response_code" not in labels
        assert labels["source_workload"] == "client" and labels["destination_workload"] == "tcp-echo"
        assert labels["destination_service"] == "tcp-echo.default.svc.cluster.local"
        assert labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/sleep"
    assert scrape(mesh, "tcp-echo")[("istio_tcp_connections_opened_total", "destination")][1][
        "connection_security_policy"] == "mutual_tls"
    assert ("istio_tcp_connections_opened_total", "destination") not in scrape(mesh, "client")


def test_a_disabled_tcp_metric_is_not_recorded(mesh):
    mesh.push([STRICT, NO_BYTES])
    try:
        before = scrape(mesh, "client")
        mesh.tcp("client", "tcp-echo", 9000, b"more")
        closed = before[("istio_tcp_connections_closed_total", "source")][0] + 1
        assert wait_for(mesh, "client", "istio_tcp_connections_closed_total", "source", closed) == closed
        after = scrape(mesh, "client")
        assert ("istio_tcp_sent_bytes_total", "source") not in after
        assert after[("istio_tcp_received_bytes_total", "source")][0] == \
            before[("istio_tcp_received_bytes_total", "source")][0] + len(b"more")
    finally:
        mesh.push([STRICT])
