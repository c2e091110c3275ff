"""Mesh mTLS in the compiled config: PeerAuthentication scopes and modes, auto mTLS, ISTIO_MUTUAL, SDS files."""

from __future__ import annotations

import json

import pytest

from harness.mesh import HTTP_GATEWAY, bookinfo_hosts, build, lb_endpoints, resources, routes_to
from vmesh.compile import mtls, render_host
from vmesh.errors import MeshError


def pa(name: str, namespace: str = "default", mode: str | None = "STRICT", selector: dict | None = None,
       ports: dict | None = None) -> str:
    spec = {}
    if mode:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if ports is not None:
        spec["portLevelMtls"] = {port: {"mode": m} for port, m in ports.items()}
    return json.dumps({"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
                       "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def inbound_chains(mesh, host: str) -> list[str]:
    lds = resources(render_host(mesh, host).files, "lds.json")
    listener = next(item for item in lds if item["name"] == "virtualInbound")
    return [c["name"] for c in listener["filter_chains"]] + [listener["default_filter_chain"]["filters"][0]
                                                             ["typed_config"]["cluster"]]


PERMISSIVE = ["inbound|9080||~mtls", "inbound|9080||", "inbound|9080||~tls", "virtualInbound-blackhole",
              "InboundPassthroughCluster"]
STRICT = ["inbound|9080||~mtls", "inbound|9080||~refused", "inbound|9080||~refused-tls", "virtualInbound-blackhole",
          "BlackHoleCluster"]
DISABLE = ["inbound|9080||", "virtualInbound-blackhole", "InboundPassthroughCluster"]


@pytest.mark.parametrize("docs,host,expected", [
    ([], "reviews-v1", PERMISSIVE),
    ([pa("default", "istio-system")], "reviews-v1", STRICT),
    ([pa("default", "istio-system"), pa("ns", mode="DISABLE")], "reviews-v1", DISABLE),
    # UNSET inherits from the next scope up
    ([pa("default", "istio-system"), pa("ns", mode="UNSET")], "reviews-v1", STRICT),
    ([pa("r", selector={"app": "reviews"})], "reviews-v1", STRICT),
    ([pa("r", selector={"app": "reviews"})], "ratings-v1", PERMISSIVE),
    ([pa("r", selector={"version": "v2"})], "reviews-v1", PERMISSIVE),
    # a selector in the root namespace picks workloads in every namespace
    ([pa("r", "istio-system", selector={"app": "reviews"})], "reviews-v1", STRICT),
    # a policy in another namespace does not apply
    ([pa("other", "payments")], "reviews-v1", PERMISSIVE),
    # the workload's policy wins over the namespace's; a port-level mode wins over both
    ([pa("ns", mode="DISABLE"), pa("r", selector={"app": "reviews"})], "reviews-v1", STRICT),
    # (undeclared ports keep the workload-wide STRICT)
    ([pa("r", selector={"app": "reviews"}, ports={9080: "DISABLE"})], "reviews-v1", DISABLE[:-1] + ["BlackHoleCluster"]),
    ([pa("r", selector={"app": "reviews"}, ports={9080: "UNSET"})], "reviews-v1", STRICT),
])
def test_peer_authentication_scopes(docs, host, expected):
    assert inbound_chains(build(*docs), host) == expected


@pytest.mark.parametrize("doc,expected", [
    (pa("x", mode="SOMETIMES"), "PeerAuthentication/x: spec.mtls.mode: expected one of UNSET, DISABLE, PERMISSIVE, "
                                "STRICT, got 'SOMETIMES'"),
    (pa("x", ports={9080: "STRICT"}), "PeerAuthentication/x: spec.portLevelMtls: portLevelMtls applies only with a "
                                      "selector"),
    (pa("x", selector={"app": "reviews"}, ports={"http": "STRICT"}),
     "spec.portLevelMtls.http: expected a port number 1-65535 as key, got 'http'"),
    (pa("x").replace('"spec": {', '"spec": {"targetRef": {"kind": "Service", "name": "reviews"}, '),
     "PeerAuthentication/x: spec.targetRef: targetRef is not supported"),
])
def test_peer_authentication_errors(doc, expected):
    with pytest.raises(MeshError) as err:
        build(doc)
    assert expected in str(err.value)


def test_ambiguous_policies_are_refused():
    with pytest.raises(MeshError, match="already the mesh-wide PeerAuthentication"):
        build(pa("a", "istio-system"), pa("b", "istio-system"))
    with pytest.raises(MeshError, match="PeerAuthentication/a in mesh/doc0.yaml already selects this workload"):
        build(pa("a", selector={"app": "reviews"}), pa("b", selector={"version": "v1"}))


def cluster(mesh, host: str, name: str) -> dict:
    """The host's cluster ``name``, with the endpoints Envoy gets for it (``_endpoints``)."""
    files = render_host(mesh, host).files
    found = next(c for c in resources(files, "cds.json") if c["name"] == name)
    return {**found, "_endpoints": lb_endpoints(files, found)}


REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"
REVIEWS_V2 = "outbound|9080|v2|reviews.default.svc.cluster.local"


def sans(socket: dict) -> list[str]:
    context = socket["typed_config"]["common_tls_context"]["combined_validation_context"]
    return [m["matcher"]["exact"] for m in context["default_validation_context"]["match_typed_subject_alt_names"]]


def test_auto_mtls_follows_each_server_mode():
    mesh = build()
    socket = cluster(mesh, "productpage-v1", REVIEWS)["transport_socket"]
    assert socket["typed_config"]["sni"] == "outbound_.9080_._.reviews.default.svc.cluster.local"
    assert sans(socket) == ["spiffe://cluster.local/ns/default/sa/reviews"]
    assert socket["typed_config"]["common_tls_context"]["alpn_protocols"] == ["istio"]
    # one reviews host with mTLS disabled: it gets plaintext, the others mTLS, chosen per endpoint
    mesh = build(pa("v2", selector={"version": "v2"}, mode="DISABLE"), routes_to("reviews", "v2"))
    mixed = cluster(mesh, "productpage-v1", REVIEWS)
    assert "transport_socket" not in mixed
    assert [m["name"] for m in mixed["transport_socket_matches"]] == ["tlsMode-istio", "tlsMode-disabled"]
    tagged = {e["endpoint"]["address"]["socket_address"]["address"]: "metadata" in e
              for e in mixed["_endpoints"]}
    assert tagged == {"10.213.0.12": True, "10.213.0.13": False, "10.213.0.14": True}
    assert "transport_socket" not in cluster(mesh, "productpage-v1", REVIEWS_V2)


def test_destination_rule_tls_modes_override_auto_mtls():
    dr = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls: %s
  subsets:
  - {name: v2, labels: {version: v2}}
"""
    explicit = build(dr % "{mode: ISTIO_MUTUAL}", pa("v2", selector={"version": "v2"}, mode="DISABLE"),
                     routes_to("reviews", "v2"), with_rules=False)
    assert "transport_socket" in cluster(explicit, "productpage-v1", REVIEWS_V2)  # asked for, even if it fails
    disabled = build(dr % "{mode: DISABLE}", with_rules=False)
    assert "transport_socket" not in cluster(disabled, "productpage-v1", REVIEWS)
    named = build(dr % "{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/reviews-v2]}",
                  with_rules=False)
    assert sans(cluster(named, "productpage-v1", REVIEWS)["transport_socket"]) == [
        "spiffe://cluster.local/ns/default/sa/reviews-v2"]


def test_each_service_account_is_checked_and_trust_domain_is_used():
    hosts = bookinfo_hosts()
    hosts["reviews-v3"]["vmesh_service_account"] = "reviews-next"
    for h in hosts.values():
        h["vmesh_trust_domain"] = "corp.example"
    mesh = build(hosts=hosts)
    assert sans(cluster(mesh, "productpage-v1", REVIEWS)["transport_socket"]) == [
        "spiffe://corp.example/ns/default/sa/reviews", "spiffe://corp.example/ns/default/sa/reviews-next"]
    config = render_host(mesh, "reviews-v1")
    assert config.identity == "spiffe://corp.example/ns/default/sa/reviews"
    lds = resources(config.files, "lds.json")
    chain = next(c for c in lds[1]["filter_chains"] if c["name"].endswith("~mtls"))
    context = chain["transport_socket"]["typed_config"]
    assert context["require_client_certificate"] is True
    matcher = context["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    assert matcher["match_typed_subject_alt_names"] == [{"san_type": "URI",
                                                         "matcher": {"prefix": "spiffe://corp.example/"}}]


def test_secrets_are_read_from_the_certs_dir(envoy_validate):
    hosts = bookinfo_hosts()
    hosts["ratings-v1"]["vmesh_certs_dir"] = "/srv/identity"
    config = render_host(build(pa("default", "istio-system"), hosts=hosts), "ratings-v1")
    (default,) = resources(config.files, mtls.secret_file("default"))
    assert default["tls_certificate"] == {"certificate_chain": {"filename": "/srv/identity/cert-chain.pem"},
                                          "private_key": {"filename": "/srv/identity/key.pem"},
                                          "watched_directory": {"path": "/srv/identity"}}
    (root,) = resources(config.files, mtls.secret_file("ROOTCA"))
    assert root["validation_context"]["trusted_ca"] == {"filename": "/srv/identity/root-cert.pem"}
    envoy_validate(config.validation)
    mixed = render_host(build(pa("v2", selector={"version": "v2"}, mode="DISABLE")), "productpage-v1")
    envoy_validate(mixed.validation)


def test_gateway_traffic_into_the_mesh_is_mtls():
    mesh = build(HTTP_GATEWAY, hosts={**bookinfo_hosts(), "ingress": {
        "vmesh_labels": {"istio": "ingressgateway"}, "vmesh_service_account": "istio-ingressgateway"}})
    socket = cluster(mesh, "ingress", "outbound|9080||productpage.default.svc.cluster.local")["transport_socket"]
    assert sans(socket) == ["spiffe://cluster.local/ns/default/sa/productpage"]
    assert render_host(mesh, "ingress").identity == "spiffe://cluster.local/ns/default/sa/istio-ingressgateway"


