"""Prometheus (Debian's package) scraping the mesh with the config and targets the monitoring role writes
(vmesh.monitoring): Istio's metrics for known requests, queried from Prometheus as Kiali and Flagger query them.

Hosts: ``client`` (service account ``sleep``), ``echo-v1`` and ``echo-v2`` (the ``echo`` service, 90/10 by a
VirtualService), and ``prometheus``, a machine outside the mesh that runs Prometheus.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from harness import prometheus
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401
from harness.prometheus import prometheus_dir, requires_prometheus  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns, requires_prometheus]

HOSTS = {
    "client": {"vmesh_service_account": "sleep", "vmesh_labels": {"app": "sleep", "version": "v1"}},
    "echo-v1": {"vmesh_service": "echo", "vmesh_labels": {"app": "echo", "version": "v1"},
                "vmesh_ports": [{"port": 8080, "protocol": "http"}]},
    "echo-v2": {"vmesh_service": "echo", "vmesh_labels": {"app": "echo", "version": "v2"},
                "vmesh_ports": [{"port": 8080, "protocol": "http"}]},
    "prometheus": {"netmesh_outside": True},
}
SPLIT = ("mesh/echo.yaml", """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - route:
    - {destination: {host: echo, subset: v1}, weight: 90}
    - {destination: {host: echo, subset: v2}, weight: 10}
""")


@pytest.fixture(scope="module")
def mesh(netmesh_module, prometheus_dir):
    mesh = netmesh_module(HOSTS, [SPLIT])
    mesh.start_echo("echo-v1")
    mesh.start_echo("echo-v2")
    prometheus.start(mesh, "prometheus", prometheus_dir)
    return mesh


def query(mesh, promql: str) -> list[dict]:
    url = f"http://{mesh.address('prometheus')}:9090/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = mesh.request("prometheus", url)
    assert answer.status == 200, answer
    body = json.loads(answer.text)
    assert body["status"] == "success", body
    return body["data"]["result"]


def value(mesh, promql: str) -> float:
    result = query(mesh, promql)
    return sum(float(r["value"][1]) for r in result)


def wait_for(mesh, promql: str, expected: float, seconds: float = 40) -> float:
    deadline = time.monotonic() + seconds
    while True:
        seen = value(mesh, promql)
        if seen >= expected or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def test_prometheus_scrapes_every_proxy_from_the_inventory(mesh):
    up = wait_for(mesh, 'sum(up{job="vmesh-proxies"})', 3)
    assert up == 3  # client, echo-v1, echo-v2; the machine outside the mesh is no target
    instances = {r["metric"]["instance"] for r in query(mesh, 'up{job="vmesh-proxies"}')}
    assert instances == {"client", "echo-v1", "echo-v2"}


def test_istio_requests_total_from_prometheus_counts_each_request_with_its_version(mesh):
    count = 40
    answers = mesh.sample("client", "http://echo:8080/", count)
    assert sum(answers.values()) == count and set(answers) <= {(200, "echo-v1"), (200, "echo-v2")}, answers
    by_version = {host.removeprefix("echo-"): n for (_, host), n in answers.items()}
    source = 'istio_requests_total{reporter="source",source_workload="client",destination_service="echo.default.svc.cluster.local"}'
    assert wait_for(mesh, f"sum({source})", count) == count
    for version, seen in by_version.items():
        # the server's side, as Flagger asks it: reporter="destination", destination_workload
        served = (f'sum(istio_requests_total{{reporter="destination",destination_workload="echo-{version}",'
                  f'destination_version="{version}",response_code="200",'
                  f'connection_security_policy="mutual_tls",source_workload="client"}})')
        assert wait_for(mesh, served, seen) == seen
    # the recording rule gives the same total without the instance label
    rule = 'sum(workload:istio_requests_total{reporter="source",source_workload="client"})'
    assert wait_for(mesh, rule, count) == count
    # Flagger's request-success-rate for v1: every request succeeded
    rate = query(mesh, 'sum(rate(istio_requests_total{reporter="destination",destination_workload=~"echo-v1",'
                       'response_code!~"5.*"}[1m])) / sum(rate(istio_requests_total{reporter="destination",'
                       'destination_workload=~"echo-v1"}[1m])) * 100')
    assert rate and float(rate[0]["value"][1]) == 100.0
