"""Istio's metrics in the compiled config: what each connection manager records, the peers file the stats
listener reads. (Real traffic and the labels Prometheus reads: tests/netns/test_telemetry_metrics.py.)"""

from __future__ import annotations

import json

from harness.mesh import bookinfo_hosts, build, resources
from vmesh.compile import render_host, telemetry


def _loggers(node) -> list[dict]:
    found = []
    if isinstance(node, dict):
        if node.get("name") == "envoy.access_loggers.stats":
            found.append(node["typed_config"])
        for value in node.values():
            found += _loggers(value)
    elif isinstance(node, list):
        for value in node:
            found += _loggers(value)
    return found


def test_every_mesh_connection_manager_records_istio_metrics_and_the_stats_listener_writes_them():
    files = render_host(build(), "reviews-v1").files
    listeners = {item["name"]: item for item in resources(files, "lds.json")}
    outbound = _loggers(listeners["virtualOutbound"])
    inbound = _loggers(listeners["virtualInbound"])
    assert outbound and inbound
    assert {h["stat"]["tags"][0]["value_format"] for c in outbound for h in c["histograms"]} == {telemetry.KEY_SOURCE}
    assert {h["stat"]["tags"][0]["value_format"] for c in inbound for h in c["histograms"]} == \
        {telemetry.KEY_DESTINATION}
    assert [h["value_format"] for h in inbound[0]["histograms"]] == [
        "%DURATION%", "%DOWNSTREAM_WIRE_BYTES_RECEIVED%", "%DOWNSTREAM_WIRE_BYTES_SENT%"]
    # a tag's values are bounded by the mesh: nothing a client writes in a header becomes a stat's name, and the
    # caller is the address its connection came from, not the one X-Forwarded-For names (an ingress's caller)
    for key in (telemetry.KEY_SOURCE, telemetry.KEY_DESTINATION):
        assert "%REQ(" not in key and "%RESP(" not in key
    assert "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%" in telemetry.KEY_DESTINATION
    assert "%DOWNSTREAM_REMOTE_ADDRESS" not in telemetry.KEY_DESTINATION
    bootstrap = json.loads(files["envoy.json"])
    stats = next(item for item in bootstrap["static_resources"]["listeners"] if item["name"] == "vmesh_prometheus")
    hcm = stats["filter_chains"][0]["filters"][0]["typed_config"]
    lua = hcm["http_filters"][0]
    assert lua["name"] == "envoy.filters.http.lua"
    assert "/etc/vmesh/envoy/peers.json" in lua["typed_config"]["default_source_code"]["inline_string"]
    assert "access_log" not in hcm  # scraping is not a request of the mesh


def test_peers_name_the_hosts_a_proxy_sends_to_and_those_that_call_it():
    hosts = bookinfo_hosts()
    sidecar = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: ratings}
spec:
  workloadSelector: {labels: {app: ratings}}
  egress: [{hosts: [./details.default.svc.cluster.local]}]
"""
    for host in hosts.values():
        host["vmesh_labels"] = {**host["vmesh_labels"], "app": host["vmesh_service"]}
    mesh = build(sidecar, hosts=hosts)
    entries = json.loads(render_host(mesh, "ratings-v1").files["peers.json"])["peers"]
    me = entries[0].split(" ")
    assert me == ["self", "ratings-v1", "default", "ratings", "v1", "ratings", "-", "-",
                  "ratings.default.svc.cluster.local", "cluster.local", "vmesh"]
    by_host = {e.split(" ")[1]: e.split(" ")[0] for e in entries[1:]}
    registry = mesh.registry
    # ratings sends to details only; every host without a Sidecar sees ratings, so all of them may call it
    assert by_host["details-v1"] == registry.workloads["details-v1"].address
    assert {"reviews-v1", "reviews-v2", "reviews-v3", "productpage-v1"} <= set(by_host)
    assert all(address == registry.workloads[host].address for host, address in by_host.items())


def test_a_workload_without_app_or_service_is_named_after_its_host():
    """Istio's canonical service falls back to the workload's name: an ingress VM labelled only
    istio: ingressgateway is 'istio-ingressgateway' in its callees' metrics and in its spans, not 'unknown'."""
    hosts = bookinfo_hosts()
    hosts["istio-ingressgateway"] = {"vmesh_labels": {"istio": "ingressgateway"}, "ansible_host": "10.213.0.30"}
    mesh = build(hosts=hosts)
    entries = json.loads(render_host(mesh, "productpage-v1").files["peers.json"])["peers"]
    (ingress,) = [e.split(" ") for e in entries if e.startswith("10.213.0.30 ")]
    assert ingress == ["10.213.0.30", "istio-ingressgateway", "default", "unknown", "unknown", "default",
                       "istio-ingressgateway", "-"]
