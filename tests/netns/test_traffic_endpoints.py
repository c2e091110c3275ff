"""A VM leaving a service, with real sidecars: its clients get new endpoints (EDS) while their clusters, and the
connections pooled to the other VMs, stay as they were."""

from __future__ import annotations

import time

import pytest

from harness.netmesh_fixtures import netmesh, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

_HTTP = [{"port": 8080, "protocol": "http"}]
HOSTS = {
    "client": {},
    "echo-1": {"vmesh_service": "echo", "vmesh_ports": _HTTP},
    "echo-2": {"vmesh_service": "echo", "vmesh_ports": _HTTP},
    "echo-3": {"vmesh_service": "echo", "vmesh_ports": _HTTP},
}
CLUSTER = "cluster.outbound|8080||echo.default.svc.cluster.local."
URL = "http://echo.default.svc.cluster.local:8080/"


def counters(mesh) -> dict[str, int]:
    stats = mesh.stats("client", CLUSTER)
    stats.update(mesh.stats("client", "cluster_manager."))
    return stats


def test_a_vm_leaving_changes_endpoints_only_and_keeps_pools(netmesh):
    mesh = netmesh(HOSTS)
    for host in ("echo-1", "echo-2", "echo-3"):
        mesh.start_echo(host)
    first = mesh.sample("client", URL, 30)
    assert {who for (status, who) in first if status == 200} == {"echo-1", "echo-2", "echo-3"}, first
    before = counters(mesh)
    assert before[CLUSTER + "membership_total"] == 3
    pooled = before[CLUSTER + "upstream_cx_total"]

    changes = mesh.push(mesh.sources, without=["echo-3"])
    # the clients' and the servers' configs: only the service's endpoint file changes (and the peers the
    # metrics name, which Envoy does not read: vmesh.compile.telemetry)
    assert changes["client"] == ["eds_outbound_8080__echo.default.svc.cluster.local.json", "peers.json"], changes
    deadline = time.monotonic() + 10
    while counters(mesh)[CLUSTER + "membership_total"] != 2 and time.monotonic() < deadline:
        time.sleep(0.05)

    after_push = mesh.sample("client", URL, 30)
    assert after_push == {(200, "echo-1"): after_push[(200, "echo-1")], (200, "echo-2"): after_push[(200, "echo-2")]}
    assert after_push[(200, "echo-1")] >= 5 and after_push[(200, "echo-2")] >= 5, after_push
    after = counters(mesh)
    assert after[CLUSTER + "membership_total"] == 2
    assert after["cluster_manager.cluster_modified"] == before["cluster_manager.cluster_modified"]
    assert after["cluster_manager.cluster_added"] == before["cluster_manager.cluster_added"]
    # the 30 requests went over the connections pooled before the push: not one new connection
    assert after[CLUSTER + "upstream_cx_total"] == pooled, (pooled, after[CLUSTER + "upstream_cx_total"])
