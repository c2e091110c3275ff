"""Sidecar egress scoping and the outbound traffic policy."""

from __future__ import annotations

import pytest

from harness.mesh import PRODUCTPAGE_SIDECAR, bookinfo_hosts, build, resources
from vmesh.compile import render_all, render_host
from vmesh.errors import MeshError

NAMESPACE_DEFAULT = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - hosts: ["./ratings.default.svc.cluster.local"]
"""
MESH_WIDE_REGISTRY_ONLY = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""


def hosts_with_app_labels():
    hosts = bookinfo_hosts()
    for name, h in hosts.items():
        h["vmesh_labels"] = {**h["vmesh_labels"], "app": h["vmesh_service"]}
    return hosts


def visible(mesh, host):
    return sorted(c["name"].split("|")[3] for c in resources(render_host(mesh, host).files, "cds.json")
                  if c["name"].startswith("outbound|") and c["name"].split("|")[2] == "")


def test_egress_hosts_scope_each_hosts_config(envoy_validate):
    mesh = build(PRODUCTPAGE_SIDECAR, NAMESPACE_DEFAULT, hosts=hosts_with_app_labels())
    assert visible(mesh, "productpage-v1") == ["details.default.svc.cluster.local", "reviews.default.svc.cluster.local"]
    # other hosts of the namespace get the namespace's default Sidecar
    assert visible(mesh, "reviews-v2") == ["ratings.default.svc.cluster.local"]
    config = render_host(mesh, "productpage-v1")
    assert not any("ratings" in line for line in config.hosts_entries)
    assert len(config.files["cds.json"]) < len(render_host(build(hosts=hosts_with_app_labels()), "productpage-v1")
                                               .files["cds.json"])
    for c in render_all(mesh).values():
        envoy_validate(c.validation)


def test_destinations_of_visible_routes_are_kept():
    vs = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details}
spec:
  hosts: [details]
  http:
  - route: [{destination: {host: ratings}}]
"""
    mesh = build(PRODUCTPAGE_SIDECAR, vs, hosts=hosts_with_app_labels())
    assert "ratings.default.svc.cluster.local" in visible(mesh, "productpage-v1")


@pytest.mark.parametrize("docs,hostvars,expected", [
    ((), {}, "PassthroughCluster"),
    ((MESH_WIDE_REGISTRY_ONLY,), {}, "BlackHoleCluster"),
    ((), {"vmesh_outbound_traffic_policy": "REGISTRY_ONLY"}, "BlackHoleCluster"),
])
def test_outbound_traffic_policy(docs, hostvars, expected):
    hosts = bookinfo_hosts()
    for h in hosts.values():
        h.update(hostvars)
    outbound = resources(render_host(build(*docs, hosts=hosts), "productpage-v1").files, "lds.json")[0]
    assert outbound["default_filter_chain"]["filters"][0]["typed_config"]["cluster"] == expected


@pytest.mark.parametrize("doc,expected", [
    (NAMESPACE_DEFAULT.replace('"./ratings.default.svc.cluster.local"', '"ratings"'),
     "spec.egress[0].hosts[0]: expected namespace/host"),
    (MESH_WIDE_REGISTRY_ONLY.replace("REGISTRY_ONLY", "DENY"),
     "spec.outboundTrafficPolicy.mode: expected ALLOW_ANY or REGISTRY_ONLY"),
    (MESH_WIDE_REGISTRY_ONLY.replace("spec:", "spec:\n  workloadSelector: {labels: {app: x}}"),
     "spec.workloadSelector: a Sidecar in the root namespace applies mesh-wide"),
])
def test_sidecar_errors(doc, expected):
    with pytest.raises(MeshError) as info:
        build(doc)
    assert expected in str(info.value)


def test_two_namespace_default_sidecars_conflict():
    with pytest.raises(MeshError, match="is already the Sidecar of namespace default"):
        build(NAMESPACE_DEFAULT, NAMESPACE_DEFAULT.replace("name: default}", "name: other}"))
