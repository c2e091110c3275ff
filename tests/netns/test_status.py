"""``vmesh status`` and ``vmesh proxy-config`` on real sidecars: what the host program reads (run in each host's
namespace as it runs over SSH on a VM) compared with the render, and the running config as tables."""

from __future__ import annotations

import subprocess

import pytest

from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401
from vmesh import load, proxyconfig, status
from vmesh.compile import render_all

pytestmark = [pytest.mark.netns, requires_netns]

_HTTP = [{"port": 8080, "protocol": "http"}]
HOSTS = {"client": {}, "web-1": {"vmesh_service": "web", "vmesh_ports": _HTTP, "vmesh_labels": {"version": "v1"}}}
RULE = ("mesh/web-dr.yaml", """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}]
""")
ROUTE = ("mesh/web-vs.yaml", """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /v1}}]
    route: [{destination: {host: web, subset: v1}}]
  - route: [{destination: {host: web}}]
""")


@pytest.fixture(scope="module")
def mesh(netmesh_module):
    mesh = netmesh_module(HOSTS, [RULE])
    mesh.start_echo("web-1")
    return mesh


def report(mesh, host: str, paths=(status.SERVER_INFO, status.CONFIG_DUMP)):
    workload = mesh.registry.workloads[host]
    return mesh.hostinfo(host, status.request(workload.config_dir, workload.certs_dir, True, tuple(paths)))


def line(mesh, host: str, config=None):
    return status.host_status(config or mesh.config(host), report(mesh, host))


def test_every_proxy_is_synced_with_what_it_runs(mesh):
    for host in HOSTS:
        got = line(mesh, host)
        assert got["status"] == status.SYNCED and got["differs"] == [], got
        assert got["envoy"].startswith("1.40.") and got["redirect"] == "intact", got
        assert got["identity"] == mesh.identity(host) and got["identity_ok"], got
        assert got["expires"]  # (no last push here: the harness writes plain files, not versions)
        assert status.healthy(got)


def test_a_change_not_pushed_yet_is_stale_naming_the_route_table(mesh):
    wanted = render_all(load.mesh({h: mesh.host_vars(h) for h in HOSTS}, [RULE, ROUTE]))["client"]
    got = line(mesh, "client", wanted)
    assert got["status"] == status.STALE
    table = "rds_8080.json"
    assert f"file {table}" in got["differs"] and f"envoy {table}" in got["differs"], got["differs"]
    assert "file lds.json" not in got["differs"]
    mesh.push([RULE, ROUTE])  # pushed: in force
    assert line(mesh, "client", wanted)["status"] == status.SYNCED
    mesh.push([RULE])


def test_a_rule_removed_from_the_redirect_is_drift(mesh):
    namespace = mesh.namespace("web-1")
    rule = ["-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "VMESH_INBOUND"]
    subprocess.run(["ip", "netns", "exec", namespace, "iptables", *rule], check=True, timeout=30)
    try:
        got = line(mesh, "web-1")
        assert got["redirect"] == "DRIFT" and not status.healthy(got)
    finally:
        subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-t", "nat", "-I", "PREROUTING", "1",
                        *rule[4:]], check=True, timeout=30)
    assert line(mesh, "web-1")["redirect"] == "intact"


def test_proxy_config_tables(mesh):
    admin = report(mesh, "client", ("/config_dump", "/clusters?format=json", "/certs"))["admin"]
    clusters = proxyconfig.render("clusters", admin)
    assert any(row.split()[:4] == ["web.default.svc.cluster.local", "8080", "-", "outbound"]
               for row in clusters.splitlines()), clusters
    listeners = proxyconfig.render("listeners", admin)
    assert "15001" in listeners and "15006" in listeners and "Route: 8080" in listeners
    routes = proxyconfig.render("routes", admin)
    assert any(row.split()[:2] == ["8080", "web.default.svc.cluster.local:8080"]
               and row.split()[-1] == "outbound|8080||web.default.svc.cluster.local" for row in routes.splitlines()), routes
    endpoints = proxyconfig.render("endpoints", admin)
    assert f"{mesh.address('web-1')}:8080  HEALTHY" in endpoints, endpoints
    secrets = proxyconfig.render("secrets", admin)
    assert "default" in secrets and "ROOTCA" in secrets and mesh.identity("client") in secrets, secrets
    assert proxyconfig.resources("clusters", admin)["dynamic_active_clusters"]


def test_a_stopped_proxy_is_not_running(mesh):
    mesh._host("client").envoy.terminate()
    mesh._host("client").envoy.wait(timeout=10)
    got = line(mesh, "client")
    assert got["status"] == status.NOT_RUNNING and not status.healthy(got)
