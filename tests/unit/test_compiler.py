"""The compiler: Istio documents + inventory -> each host's Envoy files (table-driven)."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import subprocess
import sys

import pytest

from harness import DATA
from harness.mesh import (HTTP_GATEWAY, PRODUCTPAGE_SIDECAR, bookinfo_hosts, build, lb_endpoints, outbound_routes,
                          outbound_vhost, resources, routes_to, sidecar)
from vmesh import registry
from vmesh.compile import mtls, render_all, render_host
from vmesh.errors import MeshError

VS_ALL_V1 = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""

VS_90_10 = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
      weight: 10
"""

VS_MATCHES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
    - headers:
        user-agent: {regex: ".*Android.*"}
      uri: {prefix: /reviews}
    route:
    - destination: {host: reviews, subset: v2}
  - match:
    - uri: {exact: /health}
    - uri: {regex: "/reviews/[0-9]+"}
      headers:
        x-canary: {prefix: "yes"}
        x-present: {}
    route:
    - destination: {host: reviews, subset: v3}
    timeout: 2.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "gateway-error,connect-failure,503"}
  - route:
    - destination: {host: reviews, subset: v1}
"""


def clusters_by_name(mesh, host):
    """The host's clusters by name, each with the endpoints Envoy gets for it (``_endpoints``)."""
    files = render_host(mesh, host).files
    return {c["name"]: {**c, "_endpoints": lb_endpoints(files, c)} for c in resources(files, "cds.json")}


def endpoints(cluster):
    return sorted(e["endpoint"]["address"]["socket_address"]["address"] for e in cluster["_endpoints"])


# --- routing ---------------------------------------------------------------------------------------------------

def test_no_virtual_service_routes_to_every_endpoint():
    mesh = build()
    (route,) = outbound_routes(mesh, "productpage-v1", "reviews")
    assert route["route"]["cluster"] == "outbound|9080||reviews.default.svc.cluster.local"
    cluster = clusters_by_name(mesh, "productpage-v1")["outbound|9080||reviews.default.svc.cluster.local"]
    assert endpoints(cluster) == ["10.213.0.12", "10.213.0.13", "10.213.0.14"]
    assert "lb_policy" not in cluster  # Envoy's default: ROUND_ROBIN


def test_subset_clusters_select_by_label():
    clusters = clusters_by_name(build(routes_to("reviews", "v1", "v3"), routes_to("ratings", "v2-mysql")),
                                "productpage-v1")
    assert endpoints(clusters["outbound|9080|v1|reviews.default.svc.cluster.local"]) == ["10.213.0.12"]
    assert endpoints(clusters["outbound|9080|v3|reviews.default.svc.cluster.local"]) == ["10.213.0.14"]
    # a subset no host carries yet is a cluster with no endpoints (503, as in Istio), not an error
    assert endpoints(clusters["outbound|9080|v2-mysql|ratings.default.svc.cluster.local"]) == []


def _referenced(node) -> set[str]:
    """Every cluster a listener or route sends to, walked structurally (not the compiler's own text scan)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("cluster", "cluster_name") and isinstance(value, str):
                found.add(value)
            elif key == "weighted_clusters":
                found |= {c["name"] for c in value["clusters"]}
            found |= _referenced(value)
    elif isinstance(node, list):
        for value in node:
            found |= _referenced(value)
    return found


def _reviews_clusters(mesh, host="productpage-v1") -> list[str]:
    files = render_host(mesh, host).files
    return sorted(c["name"].split("|")[2] or "all" for c in resources(files, "cds.json") if "reviews" in c["name"])


REVIEWS_WITH_TCP = {"vmesh_ports": [{"port": 9080, "protocol": "http", "name": "http"},
                                    {"port": 9000, "protocol": "tcp", "name": "tcp"}]}
MIRROR_V3 = VS_ALL_V1.replace("subset: v1}\n", "}\n    mirror: {host: reviews, subset: v3}\n")
ROUTE_PATCH = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: to-v3, namespace: istio-system}
spec:
  configPatches:
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration: {vhost: {name: "details.default.svc.cluster.local:9080", route: {action: ANY}}}
    patch:
      operation: MERGE
      value: {route: {cluster: "outbound|9080|v3|reviews.default.svc.cluster.local"}}
"""


def test_only_clusters_something_sends_to_are_written(envoy_validate):
    # no VirtualService: every reviews host's cluster, no subset's (the DestinationRule alone sends nothing there)
    assert _reviews_clusters(build()) == ["all"]
    # a route to some subsets brings every subset of that port, so shifting weight between them (a canary) changes
    # the route table only; the cluster of all hosts, no longer used, goes
    split = render_host(build(VS_90_10), "productpage-v1").files
    assert _reviews_clusters(build(VS_90_10)) == ["v1", "v2", "v3"]
    flipped = render_host(build(VS_90_10.replace("90", "5").replace("10", "95")), "productpage-v1").files
    assert [n for n in split if split[n] != flipped[n]] == ["rds_9080.json"]
    assert not [n for n in split if n.startswith("eds_") and "reviews" in n and "9080__" in n]
    # a TCP port with no tcp route keeps only its cluster of all hosts
    hosts = bookinfo_hosts()
    for name, host in hosts.items():
        if name.startswith("reviews"):
            host.update(REVIEWS_WITH_TCP)
    assert [c for c in _reviews_clusters(build(VS_90_10, hosts=hosts))] == ["all", "v1", "v2", "v3"]
    files = render_host(build(VS_90_10, hosts=hosts), "productpage-v1").files
    assert "outbound|9000||reviews.default.svc.cluster.local" in files["cds.json"]
    assert "outbound|9000|v1|" not in files["cds.json"]
    # what a mirror or an EnvoyFilter's route sends to counts as well
    assert _reviews_clusters(build(MIRROR_V3)) == ["all", "v1", "v2", "v3"]
    patched = build(ROUTE_PATCH)
    assert _reviews_clusters(patched) == ["all", "v1", "v2", "v3"]
    # on every host of these meshes, whatever is sent to is there, and every endpoint file belongs to a cluster
    for mesh in (build(), build(VS_90_10), build(VS_90_10, hosts=hosts), patched, build(MIRROR_V3)):
        for config in render_all(mesh).values():
            cds = {c["name"] for c in resources(config.files, "cds.json")}
            texts = [config.files["lds.json"]] + [t for n, t in config.files.items() if n.startswith("rds_")]
            assert set().union(*(_referenced(json.loads(t)) for t in texts)) <= cds, config.host
            eds = {n for n in config.files if n.startswith("eds_")}
            assert eds == {c["eds_cluster_config"]["eds_config"]["path_config_source"]["path"].rsplit("/", 1)[1]
                           for c in resources(config.files, "cds.json") if "eds_cluster_config" in c}
        envoy_validate(render_host(mesh, "productpage-v1").validation)


def test_all_v1():
    (route,) = outbound_routes(build(VS_ALL_V1), "productpage-v1", "reviews")
    assert route["route"]["cluster"] == "outbound|9080|v1|reviews.default.svc.cluster.local"


def test_weights():
    (route,) = outbound_routes(build(VS_90_10), "productpage-v1", "reviews")
    assert route["route"]["weighted_clusters"]["clusters"] == [
        {"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "weight": 90},
        {"name": "outbound|9080|v2|reviews.default.svc.cluster.local", "weight": 10},
    ]


def test_zero_weight_destination_is_dropped():
    text = VS_90_10.replace("weight: 10\n", "weight: 0\n").replace("weight: 90\n", "weight: 100\n")
    (route,) = outbound_routes(build(text), "productpage-v1", "reviews")
    assert route["route"]["cluster"] == "outbound|9080|v1|reviews.default.svc.cluster.local"


def test_matches_are_ored_in_order_and_anded_inside():
    routes = outbound_routes(build(VS_MATCHES), "productpage-v1", "reviews")
    assert [r["match"] for r in routes] == [
        {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
        {"prefix": "/reviews", "headers": [{"name": "user-agent", "string_match": {"safe_regex": {"regex": ".*Android.*"}}}]},
        {"path": "/health"},
        {"safe_regex": {"regex": "/reviews/[0-9]+"},
         "headers": [{"name": "x-canary", "string_match": {"prefix": "yes"}}, {"name": "x-present", "present_match": True}]},
        {"prefix": "/"},
    ]
    clusters = [r["route"]["cluster"].split("|")[2] for r in routes]
    assert clusters == ["v2", "v2", "v3", "v3", "v1"]
    assert routes[0]["name"] == "jason"


def test_timeout_and_retries():
    routes = outbound_routes(build(VS_MATCHES), "productpage-v1", "reviews")
    v3 = routes[2]["route"]
    assert v3["timeout"] == "2.5s"
    assert v3["retry_policy"]["num_retries"] == 3
    assert v3["retry_policy"]["per_try_timeout"] == "0.5s"
    assert v3["retry_policy"]["retry_on"] == "gateway-error,connect-failure,retriable-status-codes"
    assert v3["retry_policy"]["retriable_status_codes"] == [503]
    # without timeout/retries: Istio's defaults (no timeout, 2 retries on connect failures and 503)
    default = routes[4]["route"]
    assert default["timeout"] == "0s"
    assert default["retry_policy"]["num_retries"] == 2


def test_attempts_zero_disables_retries():
    text = VS_ALL_V1 + "    retries: {attempts: 0}\n"
    (route,) = outbound_routes(build(text), "productpage-v1", "reviews")
    assert "retry_policy" not in route["route"]


# --- addresses, names, listeners -------------------------------------------------------------------------------

def test_vips_are_stable_unique_and_independent_of_inventory_order():
    hosts = bookinfo_hosts()
    first = {fqdn: s.vip for fqdn, s in build(hosts=hosts).registry.services.items()}
    shuffled = list(hosts.items())
    random.Random(7).shuffle(shuffled)
    again = {fqdn: s.vip for fqdn, s in build(hosts=dict(shuffled)).registry.services.items()}
    assert first == again
    assert len(set(first.values())) == len(first)
    assert all(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("240.240.0.0/16") for ip in first.values())
    # adding a service does not move the others
    hosts["new-v1"] = {"vmesh_service": "newsvc", "vmesh_ports": [{"port": 80, "protocol": "http"}],
                       "ansible_host": "10.213.0.30"}
    grown = {fqdn: s.vip for fqdn, s in build(hosts=hosts).registry.services.items()}
    assert {k: grown[k] for k in first} == first


def test_vip_collisions_resolve_deterministically():
    vips = registry.allocate_vips([f"s{i}.default.svc.cluster.local" for i in range(60)], "10.99.0.0/26", {})
    assert len(set(vips.values())) == 60
    assert vips == registry.allocate_vips(sorted(vips, reverse=True), "10.99.0.0/26", {})


def test_pinned_vip():
    hosts = bookinfo_hosts()
    for h in hosts.values():
        h["vmesh_vips"] = {"reviews": "240.240.9.9"}
    mesh = build(hosts=hosts)
    assert mesh.registry.services["reviews.default.svc.cluster.local"].vip == "240.240.9.9"


def test_hosts_entries_carry_the_three_name_forms():
    mesh = build()
    entries = render_host(mesh, "productpage-v1").hosts_entries
    vip = mesh.registry.services["reviews.default.svc.cluster.local"].vip
    line = next(e for e in entries if e.startswith(vip + " "))
    assert set(line.split()[1:]) >= {"reviews", "reviews.default", "reviews.default.svc.cluster.local"}


def test_short_names_only_in_own_namespace():
    hosts = bookinfo_hosts()
    hosts["ratings-v1"]["vmesh_namespace"] = "other"
    entries = render_host(build(hosts=hosts, with_rules=False), "productpage-v1").hosts_entries
    ratings = next(e for e in entries if "ratings.other" in e).split()[1:]
    assert "ratings" not in ratings and "ratings.other" in ratings


def test_outbound_listener_has_a_chain_per_http_port_for_its_services_vips_and_passthrough():
    mesh = build()
    lds = resources(render_host(mesh, "productpage-v1").files, "lds.json")
    outbound = next(listener for listener in lds if listener["name"] == "virtualOutbound")
    assert outbound["address"]["socket_address"]["port_value"] == 15001
    vips = [mesh.registry.services[f"{s}.default.svc.cluster.local"].vip
            for s in ("details", "productpage", "ratings", "reviews")]
    (chain,) = [c for c in outbound["filter_chains"] if c["name"].endswith("9080")]
    assert chain["name"] == "0.0.0.0_9080"
    assert sorted(p["address_prefix"] for p in chain["filter_chain_match"]["prefix_ranges"]) == sorted(vips)
    assert {p["prefix_len"] for p in chain["filter_chain_match"]["prefix_ranges"]} == {32}
    assert chain["filter_chain_match"]["destination_port"] == 9080
    hcm = chain["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == "9080" and hcm["stat_prefix"] == "outbound_0.0.0.0_9080"
    assert outbound["default_filter_chain"]["filters"][0]["typed_config"]["cluster"] == "PassthroughCluster"


def test_the_host_header_picks_the_service_in_its_ports_route_table():
    """One table per outbound HTTP port, as Istio's: a virtual host per service, found by each name a caller may
    use for it (the short one in its own namespace only) and its VIP, bare or with the port; any other Host goes
    where the app sent it (ALLOW_ANY) or gets 502 (REGISTRY_ONLY)."""
    mesh = build()
    files = render_host(mesh, "productpage-v1").files
    (table,) = resources(files, "rds_9080.json")
    assert table["name"] == "9080"
    names = [v["name"] for v in table["virtual_hosts"]]
    assert names == [f"{s}.default.svc.cluster.local:9080" for s in ("details", "productpage", "ratings", "reviews")] + [
        "allow_any"]
    vip = mesh.registry.services["reviews.default.svc.cluster.local"].vip
    reviews = outbound_vhost(files, "reviews.default.svc.cluster.local")
    assert set(reviews["domains"]) == {d for n in ("reviews.default.svc.cluster.local", "reviews.default.svc",
                                                   "reviews.default", "reviews", vip) for d in (n, f"{n}:9080")}
    assert table["virtual_hosts"][-1]["routes"][0]["route"]["cluster"] == "PassthroughCluster"
    strict = build("""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
""")
    (table,) = resources(render_host(strict, "productpage-v1").files, "rds_9080.json")
    assert table["virtual_hosts"][-1]["routes"][0]["direct_response"] == {"status": 502}


def test_a_name_two_services_answer_to_is_kept_by_one(envoy_validate):
    """A ServiceEntry host that is also a name of a mesh service on the same port: Envoy refuses a domain twice in
    one route table, so the first virtual host (by FQDN) keeps it and the other keeps the rest of its names."""
    entry = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow}
spec:
  hosts: [reviews.default]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 9080, name: http, protocol: HTTP}]
"""
    config = render_host(build(entry), "productpage-v1")
    (table,) = resources(config.files, "rds_9080.json")
    domains = [d for v in table["virtual_hosts"] for d in v["domains"]]
    assert len(domains) == len(set(domains))
    owners = {d: v["name"] for v in table["virtual_hosts"] for d in v["domains"]}
    assert owners["reviews.default"] == owners["reviews.default:9080"] == "reviews.default:9080"
    assert owners["reviews"] == owners["reviews.default.svc"] == "reviews.default.svc.cluster.local:9080"
    envoy_validate(config.validation)


def test_inbound_only_for_served_ports_and_client_has_none():
    mesh = build()
    lds = resources(render_host(mesh, "reviews-v1").files, "lds.json")
    inbound = next(listener for listener in lds if listener["name"] == "virtualInbound")
    # PERMISSIVE (Istio's default): mesh mTLS told by ALPN, plaintext, and a client's own TLS
    assert [c["filter_chain_match"] for c in inbound["filter_chains"]] == [
        {"destination_port": 9080, "transport_protocol": "tls", "application_protocols": mtls.ISTIO_ALPNS},
        {"destination_port": 9080}, {"destination_port": 9080, "transport_protocol": "tls"},
        {"destination_port": 15006}]
    hosts = bookinfo_hosts()
    hosts["client"] = {}
    files = render_host(build(hosts=hosts), "client").files
    inbound = next(l for l in resources(files, "lds.json") if l["name"] == "virtualInbound")
    assert [c["name"] for c in inbound["filter_chains"]] == ["virtualInbound-blackhole"]


def test_bootstrap_ports_and_admin_on_loopback():
    boot = json.loads(render_host(build(), "reviews-v2").files["envoy.json"])
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    ports = {l["name"]: l["address"]["socket_address"]["port_value"] for l in boot["static_resources"]["listeners"]}
    assert ports == {"vmesh_readiness": 15021, "vmesh_prometheus": 15090}
    assert boot["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == "/etc/vmesh/envoy/lds.json"


def test_envoys_own_histograms_but_the_canarys_are_not_recorded():
    patterns = json.loads(render_host(build(), "reviews-v2").files["envoy.json"])["stats_config"]["stats_matcher"][
        "exclusion_list"]["patterns"]

    def excluded(name: str) -> bool:
        return any(name.endswith(p["suffix"]) if "suffix" in p else re.search(p["safe_regex"]["regex"], name)
                   for p in patterns)

    assert not excluded("cluster.outbound|9080|v1|ratings.default.svc.cluster.local.upstream_rq_time")  # canaries
    assert not excluded("cluster.inbound|9080||.upstream_rq_total")
    assert not excluded("cluster.outbound|9080|v1|ratings.default.svc.cluster.local.upstream_rq_completed")
    assert not excluded("http.outbound_0.0.0.0_9080.downstream_rq_2xx")
    assert not excluded("istio.d")  # Istio's metrics
    assert all(excluded(name) for name in (
        "http.outbound_0.0.0.0_9080.downstream_rq_time", "http.inbound_0.0.0.0_9080.downstream_cx_length_ms",
        "listener.0.0.0.0_15006.downstream_cx_length_ms", "cluster.inbound|9080||.upstream_rq_completed",
        "cluster.outbound|9080||ratings.default.svc.cluster.local.upstream_cx_connect_ms",
        "cluster.outbound|9080||ratings.default.svc.cluster.local.upstream_cx_length_ms",
        "cluster.outbound|9080|v1|ratings.default.svc.cluster.local.external.upstream_rq_time"))


def _connection_managers(files: dict[str, str]) -> dict[str, dict]:
    """The HTTP connection managers of a host's listeners, by filter chain name."""
    return {chain["name"]: item["typed_config"] for listener in resources(files, "lds.json")
            for chain in listener["filter_chains"] for item in chain["filters"]
            if item["name"] == "envoy.filters.network.http_connection_manager"}


def _routers(files: dict[str, str]) -> dict[str, bool]:
    """Whether each connection manager's router records per-code counts and timings (dynamic stats)."""
    routers = {}
    for name, hcm in _connection_managers(files).items():
        router = hcm["http_filters"][-1]
        assert router["name"] == "envoy.filters.http.router"
        routers[name] = router["typed_config"].get("dynamic_stats", True)
    return routers


REVIEWS_SEE_RATINGS = sidecar("reviews", "ratings")


def test_routers_record_per_code_counters_and_timings_only_where_a_rollout_reads_them():
    routers = _routers(render_host(build(), "reviews-v2").files)
    assert routers["0.0.0.0_9080"] is False and not any(routers.values())
    rollout = {"vmesh_rollouts": {"reviews": {"stable": "v1", "canary": "v3"}}}
    mesh = build(REVIEWS_SEE_RATINGS, hosts={host: {**variables, **rollout}
                                             for host, variables in bookinfo_hosts().items()})
    routers = _routers(render_host(mesh, "productpage-v1").files)
    assert routers["0.0.0.0_9080"] is True  # productpage calls reviews: the rollout is judged on these
    inbound = {name: dynamic for name, dynamic in routers.items() if name.startswith("inbound|")}
    assert inbound and not any(inbound.values())
    # reviews' own port 9080 routes to ratings only (its Sidecar)
    assert _routers(render_host(mesh, "reviews-v2").files)["0.0.0.0_9080"] is False


FAULTY_RATINGS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault: {abort: {httpStatus: 500, percentage: {value: 10}}}
    route: [{destination: {host: ratings, subset: v1}}]
"""
CORS_DETAILS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details}
spec:
  hosts: [details]
  http:
  - corsPolicy: {allowOrigins: [{exact: "https://example.com"}]}
    route: [{destination: {host: details}}]
"""
SIDECAR_PATCH = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: buffer}
spec:
  workloadSelector: {labels: {app: productpage}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        filterChain:
          filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.cors}}
    patch:
      operation: INSERT_AFTER
      value:
        name: envoy.filters.http.buffer
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
          max_request_bytes: 65536
"""


def _outbound_filters(mesh, host: str) -> list[str]:
    return [f["name"] for f in _connection_managers(render_host(mesh, host).files)["0.0.0.0_9080"]["http_filters"]]


def test_fault_and_cors_filters_only_where_routes_configure_them():
    router = ["envoy.filters.http.router"]
    assert _outbound_filters(build(), "productpage-v1") == router
    mesh = build(FAULTY_RATINGS, PRODUCTPAGE_SIDECAR)
    assert _outbound_filters(mesh, "reviews-v2") == ["envoy.filters.http.fault"] + router  # reviews calls ratings
    assert _outbound_filters(mesh, "productpage-v1") == router  # it does not
    assert _outbound_filters(build(FAULTY_RATINGS, CORS_DETAILS, PRODUCTPAGE_SIDECAR), "productpage-v1") == \
        ["envoy.filters.http.cors"] + router
    # a host an EnvoyFilter patches has Istio's filters, for a patch to find them
    assert _outbound_filters(build(SIDECAR_PATCH), "productpage-v1") == [
        "envoy.filters.http.fault", "envoy.filters.http.cors", "envoy.filters.http.buffer"] + router
    # a Gateway's connection manager keeps them all, and its router its dynamic stats
    edge = _connection_managers(render_host(build(HTTP_GATEWAY, hosts=_with_ingress()), "ingress-1").files)
    assert [f["name"] for f in edge["http.8080"]["http_filters"]] == [
        "envoy.filters.http.fault", "envoy.filters.http.cors"] + router
    assert "dynamic_stats" not in edge["http.8080"]["http_filters"][-1]["typed_config"]


def test_tcp_and_grpc_ports():
    hosts = bookinfo_hosts()
    hosts["db-v1"] = {"vmesh_service": "db", "vmesh_ports": [{"port": 5432, "protocol": "tcp"},
                                                              {"port": 9090, "protocol": "grpc"}],
                      "ansible_host": "10.213.0.40"}
    mesh = build(hosts=hosts)
    files = render_host(mesh, "productpage-v1").files
    outbound = resources(files, "lds.json")[0]
    chain = next(c for c in outbound["filter_chains"] if c["name"] == "outbound|5432||db.default.svc.cluster.local")
    assert chain["filters"][0]["name"] == "envoy.filters.network.tcp_proxy"
    grpc = clusters_by_name(mesh, "productpage-v1")["outbound|9090||db.default.svc.cluster.local"]
    assert "http2_protocol_options" in json.dumps(grpc)


# --- determinism and Envoy's own validation -------------------------------------------------------------------

def test_same_input_gives_byte_identical_files():
    first = render_all(build(VS_MATCHES))
    second = render_all(build(VS_MATCHES, hosts=dict(reversed(list(bookinfo_hosts().items())))))
    assert {h: (c.files, c.validation) for h, c in first.items()} == \
           {h: (c.files, c.validation) for h, c in second.items()}


@pytest.mark.parametrize("docs", [(), (VS_ALL_V1,), (VS_90_10,), (VS_MATCHES,)], ids=["none", "all-v1", "90-10", "matches"])
def test_every_rendered_config_passes_envoy_validate(docs, envoy_validate):
    hosts = bookinfo_hosts()
    hosts["client"] = {}
    for config in render_all(build(*docs, hosts=hosts)).values():
        envoy_validate(config.validation)


def test_validation_bundle_is_the_same_config_inlined():
    config = render_host(build(VS_90_10), "productpage-v1")
    bundle = json.loads(config.validation)
    assert "dynamic_resources" not in bundle
    names = {c["name"] for c in bundle["static_resources"]["clusters"]}
    assert names >= {c["name"] for c in resources(config.files, "cds.json")}
    assert "weighted_clusters" in json.dumps(bundle["static_resources"]["listeners"])


TCP_ECHO_HOSTS = {
    "tcp-echo-v1": {"vmesh_service": "tcp-echo", "vmesh_labels": {"version": "v1"},
                    "vmesh_ports": [{"port": 9000, "protocol": "tcp"}], "ansible_host": "10.213.0.50"},
    "tcp-echo-v2": {"vmesh_service": "tcp-echo", "vmesh_labels": {"version": "v2"},
                    "vmesh_ports": [{"port": 9000, "protocol": "tcp"}], "ansible_host": "10.213.0.51"},
}
TCP_ECHO_80_20 = (DATA / "tcp-echo" / "tcp-echo-80-20.yaml").read_text()


def _tcp_proxy(mesh, host):
    outbound = resources(render_host(mesh, host).files, "lds.json")[0]
    chain = next(c for c in outbound["filter_chains"] if c["name"] == "outbound|9000||tcp-echo.default.svc.cluster.local")
    return chain["filters"][0]["typed_config"]


def test_tcp_routes_weighted(envoy_validate):
    hosts = {**bookinfo_hosts(), **TCP_ECHO_HOSTS}
    mesh = build(TCP_ECHO_80_20, hosts=hosts)
    assert _tcp_proxy(mesh, "productpage-v1")["weighted_clusters"] == {"clusters": [
        {"name": "outbound|9000|v1|tcp-echo.default.svc.cluster.local", "weight": 80},
        {"name": "outbound|9000|v2|tcp-echo.default.svc.cluster.local", "weight": 20}]}
    for config in render_all(mesh).values():
        envoy_validate(config.validation)
    # without a VirtualService: every tcp-echo host
    plain = build(hosts=hosts)
    assert _tcp_proxy(plain, "productpage-v1")["cluster"] == "outbound|9000||tcp-echo.default.svc.cluster.local"


def test_tcp_route_match_on_another_port_does_not_apply():
    hosts = {**bookinfo_hosts(), **TCP_ECHO_HOSTS}
    mesh = build(TCP_ECHO_80_20.replace("match: [{port: 9000}]", "match: [{port: 9001}]"), hosts=hosts)
    assert _tcp_proxy(mesh, "productpage-v1")["cluster"] == "outbound|9000||tcp-echo.default.svc.cluster.local"


# --- route table files: one per route configuration, never shared ---------------------------------------------------

TWO_TLS_SERVERS = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    name: {first}
    hosts: [a.example.test]
    tls: {{mode: SIMPLE, credentialName: a-cred}}
  - port: {{number: 443, name: https, protocol: HTTPS}}
    name: {second}
    hosts: [b.example.test]
    tls: {{mode: SIMPLE, credentialName: b-cred}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: [a.example.test, b.example.test]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: productpage}}}}]
"""


def _with_ingress() -> dict:
    hosts = bookinfo_hosts()
    hosts["ingress-1"] = {"vmesh_labels": {"istio": "ingressgateway"}, "ansible_host": "10.213.0.20"}
    return hosts


def test_route_names_that_sanitize_alike_get_files_of_their_own(envoy_validate):
    # "a b" and "a_b" both became rds_https.443.a_b.gw.default.json: the second table replaced the first unseen
    mesh = build(TWO_TLS_SERVERS.format(first="'a b'", second="a_b"), hosts=_with_ingress())
    config = render_host(mesh, "ingress-1")
    tables = {name: resources(config.files, name)[0]["name"] for name in config.files if name.startswith("rds_https")}
    assert tables == {"rds_https.443.a~000020b.gw.default.json": "https.443.a b.gw.default",
                      "rds_https.443.a~00005fb.gw.default.json": "https.443.a_b.gw.default"}
    (listener,) = [item for item in resources(config.files, "lds.json") if item["name"] == "0.0.0.0_443"]
    paths = sorted(chain["filters"][0]["typed_config"]["rds"]["config_source"]["path_config_source"]["path"]
                   for chain in listener["filter_chains"])
    assert [p.rsplit("/", 1)[1] for p in paths] == sorted(tables)
    envoy_validate(config.validation)


def test_route_file_names_are_distinct_and_bounded():
    from vmesh.compile.envoy_types import resource_file

    names = ["outbound|9080||reviews.default.svc.cluster.local", "outbound_9080__reviews.default.svc.cluster.local",
             "a b", "a_b", "a~000020b", "a|b", "x" * 300, "x" * 299 + "y", "é", "e"]
    files = [resource_file("rds", n) for n in names]
    assert len(set(files)) == len(names)
    assert files[0] == "rds_outbound_9080__reviews.default.svc.cluster.local.json"  # Istio's names keep their file
    assert all(len(f) <= 210 and "/" not in f for f in files)


def test_a_server_named_like_another_servers_index_is_refused():
    with pytest.raises(MeshError, match=r"mesh/doc0.yaml: Gateway/gw: spec.servers\[1\].name: server 1 and server 0 "
                                        r"of this Gateway would share the route table 'https.443.1.gw.default'"):
        render_host(build(TWO_TLS_SERVERS.format(first="'1'", second="null"), hosts=_with_ingress()), "ingress-1")


def test_two_servers_of_one_gateway_with_one_name_are_refused():
    with pytest.raises(MeshError, match=r"Gateway/gw: spec.servers\[1\].name: server name 'x' is already the name "
                                        r"of another server of this Gateway"):
        build(TWO_TLS_SERVERS.format(first="x", second="x"), hosts=_with_ingress())


# --- envoy --mode validate leaves nothing behind ----------------------------------------------------------------------

VALIDATE = """
import json, sys
from vmesh import envoy
for _ in range(2):
    results = envoy.validate_many(json.load(open(sys.argv[1])), stub_missing=True)
    assert all(ok for ok, _ in results.values()), results
"""


def test_validation_leaves_no_files_in_tmp(tmp_path):
    # a fresh process (as the CLI and the Ansible preflight run it), its TMPDIR a directory of its own
    private = tmp_path / "tmp"
    private.mkdir()
    mesh = build(TWO_TLS_SERVERS.format(first="a", second="b"), hosts=_with_ingress())
    configs = tmp_path / "configs.json"  # the gateway's certificate files exist only on the VMs: stubbed
    configs.write_text(json.dumps({host: render_host(mesh, host).validation for host in ("ingress-1", "reviews-v1")}))
    proc = subprocess.run([sys.executable, "-c", VALIDATE, str(configs)], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(private)}, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(private)) == []


def test_envoy_takes_the_regexes_vmesh_takes(envoy_validate):
    # RE2 as Envoy reads it: a Unicode class is fine, and the largest program Envoy accepts is accepted
    mesh = build("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: '/\\pL+/[a-z]{80}'}}, {headers: {x-name: {regex: 'é+\\p{Greek}'}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
""")
    envoy_validate(render_host(mesh, "productpage-v1").validation)


def test_a_service_entry_without_addresses_gets_no_route_table_of_its_own():
    # routed by its port's shared table (by Host header): a table of its own would be a file no listener reads
    entry = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 8080, name: http, protocol: HTTP}]
"""
    files = render_host(build(entry), "productpage-v1").files
    assert "rds_8080.json" in files
    assert not [name for name in files if "api.example.test" in name and name.startswith("rds_")]
    tables = {f"{name}\"" for name in files if name.startswith("rds_")}
    assert all(f"/{name}" in files["lds.json"] for name in tables)  # every table is one a listener reads
