"""EnvoyFilter patches: what is supported is applied where it selects, the rest is refused by name."""

from __future__ import annotations

import json

import pytest

from harness import DATA
from harness.mesh import bookinfo_hosts, build, resources
from vmesh.compile import render_all, render_host
from vmesh.errors import MeshError

LIMIT = (DATA / "ratelimit" / "local-rate-limit.yaml").read_text()
GLOBAL = (DATA / "ratelimit" / "productpage_envoy_ratelimit.yaml").read_text()  # Istio's sample, verbatim
GATEWAY = (DATA / "bookinfo" / "bookinfo-gateway.yaml").read_text()
STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


def labelled_hosts():
    hosts = bookinfo_hosts()
    for h in hosts.values():
        h["vmesh_labels"] = {**h["vmesh_labels"], "app": h["vmesh_service"]}
    return hosts


def test_local_rate_limit_patch_lands_on_the_selected_hosts_inbound_side(envoy_validate):
    mesh = build(LIMIT, hosts=labelled_hosts())
    files = render_host(mesh, "reviews-v2").files
    inbound = next(l for l in resources(files, "lds.json") if l["name"] == "virtualInbound")
    http_filters = inbound["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert [f["name"] for f in http_filters] == ["envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]
    (route_config,) = resources(files, "rds_inbound_9080__.json")
    route = route_config["virtual_hosts"][0]["routes"][0]
    assert route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]["token_bucket"]["max_tokens"] == 6
    assert route["route"]["rate_limits"][0]["actions"][0]["header_value_match"]["descriptor_value"] == "reviews-1"
    # outbound side and other services untouched
    assert "local_ratelimit" not in json.dumps(resources(files, "lds.json")[0])
    assert "local_ratelimit" not in render_host(mesh, "productpage-v1").files["lds.json"]
    for config in render_all(mesh).values():
        envoy_validate(config.validation)


@pytest.mark.parametrize("change,expected", [
    (("applyTo: HTTP_FILTER", "applyTo: LISTENER"), "configPatches[0].applyTo: applyTo LISTENER is not supported by vmesh yet"),
    (("applyTo: HTTP_FILTER", "applyTo: CLUSTER"),
     "configPatches[0].match.listener: match.listener does not select where applyTo CLUSTER applies"),
    (("context: SIDECAR_INBOUND\n      listener", "context: SIDECAR_INBOND\n      listener"),
     "configPatches[0].match.context: context SIDECAR_INBOND is not supported by vmesh yet"),
    (("operation: MERGE", "operation: INSERT_FIRST"), "configPatches[1].patch.operation: INSERT_FIRST on HTTP_ROUTE"),
    (("name: envoy.filters.http.local_ratelimit\n", "nam: envoy.filters.http.local_ratelimit\n"),
     "configPatches[0].patch.value.name: an HTTP filter needs a name"),
])
def test_envoy_filter_errors(change, expected):
    with pytest.raises(MeshError) as info:
        build(LIMIT.replace(*change), hosts=labelled_hosts())
    assert expected in str(info.value)


def with_ratelimit(hosts: dict | None = None) -> dict:
    """Bookinfo, two ingress hosts and the rate-limit service on a host of its own (gRPC on 8081)."""
    hosts = hosts or labelled_hosts()
    for index in (1, 2):
        hosts[f"ingress-{index}"] = {"vmesh_labels": {"istio": "ingressgateway"}, "ansible_host": f"10.213.0.2{index}"}
    hosts["ratelimit-1"] = {"vmesh_service": "ratelimit", "vmesh_ports": [{"port": 8081, "name": "grpc",
                                                                            "protocol": "grpc"}],
                            "ansible_host": "10.213.0.30"}
    return hosts


def clusters_named(files: dict[str, str]) -> dict[str, dict]:
    return {c["name"]: c for c in resources(files, "cds.json")}


def test_istios_global_rate_limit_sample_works_verbatim_and_reaches_the_service_over_mtls(envoy_validate):
    mesh = build(GATEWAY, GLOBAL, STRICT, hosts=with_ratelimit())
    for ingress in ("ingress-1", "ingress-2"):
        config = render_host(mesh, ingress)
        (gateway,) = [item for item in resources(config.files, "lds.json") if item["name"] == "0.0.0.0_8080"]
        hcm = gateway["filter_chains"][0]["filters"][0]["typed_config"]
        names = [f["name"] for f in hcm["http_filters"]]
        assert names[-2:] == ["envoy.ratelimit", "envoy.filters.http.router"]
        limit = hcm["http_filters"][-2]["typed_config"]
        assert limit["domain"] == "productpage-ratelimit" and limit["failure_mode_deny"] is True
        # the sample's vhost name "" selects every virtual host, as in Istio
        (table,) = resources(config.files, "rds_http.8080.json")
        assert table["virtual_hosts"][0]["rate_limits"] == [
            {"actions": [{"request_headers": {"header_name": ":path", "descriptor_key": "PATH"}}]}]
        # ratelimit.default.svc.cluster.local:8081 is a mesh service: its endpoints from the inventory, kept in the
        # mesh's endpoints file, and the mesh's mTLS to the service's identity; the sample's own settings stay
        cluster = clusters_named(config.files)["rate_limit_cluster"]
        assert cluster["type"] == "EDS" and "load_assignment" not in cluster
        assert cluster["eds_cluster_config"]["service_name"] == "outbound|8081||ratelimit.default.svc.cluster.local"
        (assignment,) = resources(config.files, "eds_outbound_8081__ratelimit.default.svc.cluster.local.json")
        (endpoint,) = assignment["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "10.213.0.30", "port_value": 8081}
        tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        sans = tls["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
        assert [s["matcher"]["exact"] for s in sans] == ["spiffe://cluster.local/ns/default/sa/ratelimit"]
        assert cluster["connect_timeout"] == "10s" and cluster["http2_protocol_options"] == {}
        envoy_validate(config.validation)
    # the sidecars are not selected: no filter, no cluster
    productpage = render_host(mesh, "productpage-v1").files
    assert "rate_limit_cluster" not in productpage["cds.json"] and "envoy.ratelimit" not in productpage["lds.json"]
    envoy_validate(render_host(mesh, "ratelimit-1").validation)


def test_an_added_cluster_that_names_no_mesh_service_is_kept_as_written(envoy_validate):
    outside = GLOBAL.replace("address: ratelimit.default.svc.cluster.local", "address: ratelimit.example.test")
    config = render_host(build(GATEWAY, outside, hosts=with_ratelimit()), "ingress-1")
    cluster = clusters_named(config.files)["rate_limit_cluster"]
    assert cluster["type"] == "STRICT_DNS" and "transport_socket" not in cluster
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "ratelimit.example.test", "port_value": 8081}
    envoy_validate(config.validation)


CLUSTER_PATCHES = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: clusters, namespace: default}
spec:
  workloadSelector: {labels: {app: productpage}}
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {service: reviews.default.svc.cluster.local, subset: v2}}
    patch: {operation: MERGE, value: {connect_timeout: 3s, circuit_breakers: {thresholds: [{max_retries: 7}]}}}
  - applyTo: CLUSTER
    match: {cluster: {portNumber: 9080, service: reviews.default.svc.cluster.local, subset: v3}}
    patch: {operation: REMOVE}
  - applyTo: CLUSTER
    match: {context: SIDECAR_INBOUND}
    patch: {operation: MERGE, value: {connectTimeout: 2s}}
  - applyTo: CLUSTER
    match: {context: GATEWAY}
    patch: {operation: MERGE, value: {connect_timeout: 9s}}
"""


def test_cluster_merge_and_remove_select_by_context_service_subset_and_port(envoy_validate):
    split = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v2}}]
"""
    mesh = build(split, CLUSTER_PATCHES, hosts=labelled_hosts())
    config = render_host(mesh, "productpage-v1")
    named = clusters_named(config.files)
    # where one subset is routed to, all are there (a canary changes routes only); the patches change them
    v1, v2 = named["outbound|9080|v1|reviews.default.svc.cluster.local"], \
        named["outbound|9080|v2|reviews.default.svc.cluster.local"]
    assert v2["connect_timeout"] == "3s" and v1["connect_timeout"] != "3s"
    # lists are appended to, as Istio merges protobufs
    assert v2["circuit_breakers"]["thresholds"][-1] == {"max_retries": 7}
    assert len(v2["circuit_breakers"]["thresholds"]) == len(v1["circuit_breakers"]["thresholds"]) + 1
    assert "outbound|9080|v3|reviews.default.svc.cluster.local" not in named
    assert named["inbound|9080||"]["connect_timeout"] == "2s"
    assert "9s" not in config.files["cds.json"]  # no gateway on this host
    # a host the filter does not select: as compiled
    assert clusters_named(render_host(mesh, "reviews-v1").files)["inbound|9080||"]["connect_timeout"] != "2s"
    envoy_validate(config.validation)


@pytest.mark.parametrize("change,expected", [
    (("              - endpoint:\n", "              - endpoint: {address: {socket_address: "
                                  "{address: 10.0.0.9, port_value: 8081}}}\n              - endpoint:\n"),
     "configPatches[1].patch.value.load_assignment: ratelimit.default.svc.cluster.local:8081 is a mesh service"),
    (("name: rate_limit_cluster\n          type", "nam: rate_limit_cluster\n          type"),
     "configPatches[1].patch.value.name: an added cluster needs a name"),
    (("name: rate_limit_cluster\n          type", "name: outbound|9080||productpage.default.svc.cluster.local\n"
                                                    "          type"),
     "configPatches[1].patch.value.name: this host already has a cluster named "
     "'outbound|9080||productpage.default.svc.cluster.local'"),
    (("      match:\n        cluster:", "      match:\n        routeConfiguration: {}\n        cluster:"),
     "configPatches[1].match.routeConfiguration: match.routeConfiguration does not select where applyTo CLUSTER"),
    (("operation: ADD", "operation: INSERT_FIRST"), "configPatches[1].patch.operation: INSERT_FIRST on CLUSTER"),
])
def test_cluster_patch_errors(change, expected):
    assert change[0] in GLOBAL
    with pytest.raises(MeshError) as info:
        mesh = build(GATEWAY, GLOBAL.replace(*change, 1), hosts=with_ratelimit())
        render_host(mesh, "ingress-1")
    assert str(info.value).startswith("mesh/doc1.yaml: EnvoyFilter/istio-system/filter-ratelimit") \
        and expected in str(info.value)


def test_an_added_cluster_shaped_wrong_is_left_to_envoys_check(envoy_validate):
    # no traceback from the compiler: Envoy's validation names what is wrong
    bad = GLOBAL.replace("            endpoints:\n            - lb_endpoints:", "            endpoints:\n            - lb_endpoints: 7\n"
                         "            - nothing:", 1)
    assert bad != GLOBAL
    config = render_host(build(GATEWAY, bad, hosts=with_ratelimit()), "ingress-1")
    assert clusters_named(config.files)["rate_limit_cluster"]["type"] == "STRICT_DNS"
    with pytest.raises(AssertionError, match="lb_endpoints"):
        envoy_validate(config.validation)
