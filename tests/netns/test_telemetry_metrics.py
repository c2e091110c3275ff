"""Istio's standard metrics on every sidecar's :15090/stats/prometheus, with real traffic: N requests give N in
istio_requests_total once per reporter, with Istio's labels (who called whom, which version answered, the code,
whether it was mTLS).

Hosts: ``client`` (service account ``sleep``), ``echo-v1`` and ``echo-v2`` (the ``echo`` service, HTTP on 8080),
and ``outside``, a machine with no sidecar, from which Prometheus would scrape.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse

import pytest

from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401
from vmesh.rollout import metrics

pytestmark = [pytest.mark.netns, requires_netns]

HOSTS = {
    "client": {"vmesh_service_account": "sleep", "vmesh_labels": {"app": "sleep", "version": "v1"}},
    "echo-v1": {"vmesh_service": "echo", "vmesh_labels": {"app": "echo", "version": "v1"},
                "vmesh_ports": [{"port": 8080, "protocol": "http"}]},
    "echo-v2": {"vmesh_service": "echo", "vmesh_labels": {"app": "echo", "version": "v2"},
                "vmesh_ports": [{"port": 8080, "protocol": "http"}]},
    "outside": {"netmesh_outside": True},
}
SUBSETS = ("mesh/dr.yaml", """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
""")
ONLY_V2 = ("mesh/vs.yaml", """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - route:
    - destination: {host: echo, subset: v2}
""")
STRICT = ("mesh/peer.yaml", """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
""")
SERIES = re.compile(r'^(istio_[a-z_]+)\{([^}]*)\} (\S+)$', re.M)
LABEL = re.compile(r'([a-z_]+)="([^"]*)"')


@pytest.fixture(scope="module")
def mesh(netmesh_module):
    mesh = netmesh_module(HOSTS, [SUBSETS, ONLY_V2, STRICT])
    mesh.start_echo("echo-v1")
    mesh.start_echo("echo-v2")
    return mesh


def prometheus_answer(mesh, host: str):
    """The host's :15090/stats/prometheus as Prometheus reads it (from a machine outside the mesh)."""
    answer = mesh.request("outside", f"http://{mesh.address(host)}:15090/stats/prometheus")
    assert answer.status == 200, answer
    return answer


def istio_series(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(name, dict(LABEL.findall(labels)), float(value)) for name, labels, value in SERIES.findall(text)]


def scrape(mesh, host: str) -> list[tuple[str, dict[str, str], float]]:
    """Istio's series in what Prometheus reads from the host."""
    return istio_series(prometheus_answer(mesh, host).text)


def requests_total(mesh, host: str, **match: str) -> float:
    return sum(v for name, labels, v in scrape(mesh, host)
               if name == "istio_requests_total" and all(labels.get(k) == x for k, x in match.items()))


def wait_for(mesh, host: str, expected: float, **match: str) -> float:
    """Envoy publishes histograms every 5 s: poll until the count is there (or 20 s went by)."""
    deadline = time.monotonic() + 20
    while True:
        seen = requests_total(mesh, host, **match)
        if seen >= expected or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def test_each_request_is_counted_once_per_reporter_with_istio_labels(mesh):
    count = 7
    answers = mesh.sample("client", "http://echo:8080/", count)
    assert answers == {(200, "echo-v2"): count}, answers
    source = {"reporter": "source", "source_workload": "client", "source_app": "sleep",
              "source_principal": "spiffe://cluster.local/ns/default/sa/sleep",
              "destination_workload": "echo-v2", "destination_version": "v2", "destination_app": "echo",
              "destination_service": "echo.default.svc.cluster.local", "destination_service_name": "echo",
              "destination_service_namespace": "default", "response_code": "200", "request_protocol": "http"}
    destination = {**source, "reporter": "destination", "connection_security_policy": "mutual_tls",
                   "destination_principal": "spiffe://cluster.local/ns/default/sa/echo"}
    assert wait_for(mesh, "client", count, **source) == count
    assert wait_for(mesh, "echo-v2", count, **destination) == count
    # nothing reached v1, and the client reports nothing as a destination
    assert requests_total(mesh, "echo-v1") == 0
    assert requests_total(mesh, "client", reporter="destination") == 0
    # Istio's histograms, with the same labels and counts
    series = scrape(mesh, "echo-v2")
    names = {name for name, labels, _ in series if labels.get("reporter") == "destination"}
    assert {"istio_request_duration_milliseconds_bucket", "istio_request_duration_milliseconds_count",
            "istio_request_bytes_count", "istio_response_bytes_sum"} <= names
    durations = [v for name, labels, v in series
                 if name == "istio_request_duration_milliseconds_count" and labels.get("reporter") == "destination"]
    assert sum(durations) == count
    received = sum(v for name, labels, v in series
                   if name == "istio_request_bytes_sum" and labels.get("reporter") == "destination")
    assert received >= count * len("GET / HTTP/1.1\r\n")  # wire bytes: at least each request line


def all_published(mesh) -> None:
    """Envoy publishes histograms every 5 s: until Istio's count of every call echo-v2 served is there (so the
    next test finds nothing of these calls unpublished)."""
    served = mesh.stats("echo-v2", "cluster.inbound|8080||.upstream_rq_total")
    deadline = time.monotonic() + 20
    while requests_total(mesh, "echo-v2", reporter="destination") != sum(served.values()):
        assert time.monotonic() < deadline, served
        time.sleep(1)


def test_envoys_own_histograms_and_per_code_counts_are_left_out(mesh):
    """Istio's request duration covers both sides and counts by code: Envoy's own histograms, and its routers'
    counts per response code ("dynamic stats"), are not in what Prometheus reads. The clusters count their calls."""
    assert mesh.sample("client", "http://echo:8080/", 3) == {(200, "echo-v2"): 3}
    all_published(mesh)
    client, server = prometheus_answer(mesh, "client").text, prometheus_answer(mesh, "echo-v2").text
    assert re.search(r'_upstream_rq_total\{envoy_cluster_name="outbound\|8080\|v2\|echo[^"]*"\} [1-9]',
                     client), client
    assert re.search(r'envoy_cluster_upstream_rq_total\{envoy_cluster_name="inbound\|8080\|\|"\} [1-9]', server)
    for text in (client, server):
        assert "istio_request_duration_milliseconds_count" in text
        for name in ("downstream_rq_time", "downstream_cx_length_ms", "upstream_cx_length_ms", "upstream_rq_time",
                     "upstream_cx_connect_ms", "external_upstream_rq_time", "internal_upstream_rq_time"):
            assert not re.search(rf"_{name}_(bucket|count|sum)\{{", text), name
        found = re.findall(r"^\S*_upstream_rq_(?:2xx|200)\{.*$", text, re.M)
        assert not found, found
    # no zero that misleads on the inbound side (outbound clusters keep the counter for rollouts: metrics.md)
    assert 'upstream_rq_completed{envoy_cluster_name="inbound|8080||"}' not in server


def test_a_declared_rollout_has_its_clients_record_what_it_is_judged_on(mesh):
    """A canary rollout of echo (declared: all traffic to its stable version) is judged on what the client
    sidecars count of each version: the client's router now records the counts and request times, as the canary
    role reads them from its admin endpoint."""
    declared = {"echo": {"stable": "v2", "canary": "v1"}}
    cluster = "outbound|8080|v2|echo.default.svc.cluster.local"
    # what the canary role asks each client sidecar
    judged = metrics.stats_filter({"ports": [8080], "stable": "v2", "canary": "v1",
                                   "fqdn": "echo.default.svc.cluster.local"})
    query = "/stats?format=json&histogram_buckets=cumulative&filter=" + urllib.parse.quote(judged)
    mesh.push([SUBSETS, ONLY_V2, STRICT], rollouts=declared)
    try:
        before = metrics.measure([json.loads(mesh.admin("client", query))], cluster)
        assert mesh.sample("client", "http://echo:8080/", 5) == {(200, "echo-v2"): 5}
        deadline = time.monotonic() + 20  # the histogram is published every 5 s
        while True:
            seen = metrics.measure([json.loads(mesh.admin("client", query))], cluster) - before
            if seen.buckets and seen.buckets[-1][1] >= 5 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert seen.buckets and (seen.requests, seen.errors, seen.buckets[-1][1]) == (5, 0, 5), seen
        assert seen.quantile(0.99) is not None
    finally:
        mesh.push([SUBSETS, ONLY_V2, STRICT], rollouts={})
    completed = f"cluster.{cluster}.upstream_rq_completed"
    left = mesh.stats("client", completed).get(completed, 0)
    assert mesh.sample("client", "http://echo:8080/", 3) == {(200, "echo-v2"): 3}
    assert mesh.stats("client", completed).get(completed, 0) == left  # counted no longer
    all_published(mesh)


def test_a_request_no_host_answers_is_counted_by_the_client_only(mesh):
    """A subset no host carries: Envoy answers 503 itself (no healthy upstream), so only the client reports."""
    nobody = SUBSETS[1] + "  - {name: v3, labels: {version: v3}}\n"
    mesh.push([("mesh/dr.yaml", nobody), ("mesh/vs.yaml", ONLY_V2[1].replace("subset: v2", "subset: v3")), STRICT])
    try:
        before = requests_total(mesh, "echo-v1") + requests_total(mesh, "echo-v2")
        assert mesh.request("client", "http://echo:8080/").status == 503
        match = {"reporter": "source", "response_code": "503", "response_flags": "UH",
                 "destination_service": "echo.default.svc.cluster.local", "destination_workload": "unknown"}
        assert wait_for(mesh, "client", 1, **match) == 1
        assert requests_total(mesh, "echo-v1") + requests_total(mesh, "echo-v2") == before
    finally:
        mesh.push([SUBSETS, ONLY_V2, STRICT])


def test_a_scrape_larger_than_envoys_default_buffer_still_answers(mesh):
    """Istio's labels make the metrics grow with every response code a proxy has seen: past 1 MiB (Envoy's default
    buffer, reached on a Bookinfo VM after a few faults) the scrape failed with 500 and every metric of the proxy
    was gone. Forty codes later, both proxies still answer Prometheus with each code counted."""
    codes = range(400, 440)
    for code in codes:
        assert mesh.request("client", f"http://echo:8080/?status={code}").status == code
    for host, reporter in (("echo-v2", "destination"), ("client", "source")):
        # each proxy publishes its histograms on its own 5-second clock: wait for the last code on this one
        assert wait_for(mesh, host, 1, reporter=reporter, response_code=str(codes[-1])) == 1
        answer = prometheus_answer(mesh, host)
        assert len(answer.body) > 1024 * 1024  # what Envoy's default would have refused
        counted = {labels["response_code"] for name, labels, _ in istio_series(answer.text)
                   if name == "istio_requests_total" and labels.get("reporter") == reporter
                   and labels.get("response_code", "").startswith("4")}
        assert counted == {str(code) for code in codes}, host
