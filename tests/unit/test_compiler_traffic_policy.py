"""DestinationRule traffic policies compiled onto clusters (and hash policies onto routes)."""

from __future__ import annotations

import json

import pytest

from harness.mesh import bookinfo_hosts, build, outbound_routes, resources, routes_to
from vmesh import envoy
from vmesh.compile import render_all, render_host
from vmesh.errors import MeshError

DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews-policy}}
spec:
  host: reviews
{body}"""


def clusters(body: str) -> dict[str, dict]:
    """productpage's reviews clusters: all hosts', and each subset's (it sends to all of them)."""
    subsets = ("v1", "v2") if "subsets:" in body else ()
    mesh = build(DR.format(body=body), routes_to("reviews", *subsets), with_rules=False)
    return {c["name"]: c for c in resources(render_host(mesh, "productpage-v1").files, "cds.json")}


ALL = "outbound|9080||reviews.default.svc.cluster.local"
V1 = "outbound|9080|v1|reviews.default.svc.cluster.local"
V2 = "outbound|9080|v2|reviews.default.svc.cluster.local"

SUBSETS = """  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
"""

CASES = {
    "simple load balancer, subset overrides": (
        "  trafficPolicy:\n    loadBalancer: {simple: LEAST_REQUEST}\n" + SUBSETS,
        lambda c: (c[ALL]["lb_policy"], c[V1]["lb_policy"], c[V2]["lb_policy"]) == ("LEAST_REQUEST", "LEAST_REQUEST", "RANDOM")),
    "connection pool": (
        """  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 1, http2MaxRequests: 10, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 15s}
""",
        lambda c: c[ALL]["circuit_breakers"]["thresholds"][0] == {
            "max_connections": 1, "max_pending_requests": 1, "max_requests": 10, "max_retries": 3, "track_remaining": True}
        and c[ALL]["connect_timeout"] == "0.03s"
        and c[ALL]["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
            "common_http_protocol_options"] == {"idle_timeout": "15s", "max_requests_per_connection": 1}),
    "outlier detection (the seed's circuit breaker)": (
        """  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100}
""",
        lambda c: c[ALL]["outlier_detection"] == {
            "consecutive_5xx": 3, "interval": "10s", "base_ejection_time": "30s", "max_ejection_percent": 100,
            "enforcing_success_rate": 0}),
    "gateway errors": (
        "  trafficPolicy:\n    outlierDetection: {consecutiveGatewayErrors: 2, consecutive5xxErrors: 0}\n",
        lambda c: c[ALL]["outlier_detection"]["consecutive_gateway_failure"] == 2
        and c[ALL]["outlier_detection"]["enforcing_consecutive_5xx"] == 0),
    "consistent hash on a header": (
        "  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n",
        lambda c: c[ALL]["lb_policy"] == "RING_HASH"),
    "tls simple": (
        "  trafficPolicy:\n    tls: {mode: SIMPLE, sni: reviews.example.com}\n",
        lambda c: c[ALL]["transport_socket"]["typed_config"]["sni"] == "reviews.example.com"
        and c[ALL]["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"] == {
            "filename": "/etc/ssl/certs/ca-certificates.crt"}),
    "tls disable": ("  trafficPolicy:\n    tls: {mode: DISABLE}\n", lambda c: "transport_socket" not in c[ALL]),
    "port level settings": (
        """  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: LEAST_REQUEST}
""",
        lambda c: c[ALL]["lb_policy"] == "LEAST_REQUEST"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_traffic_policy(name, envoy_validate):
    body, check = CASES[name]
    assert check(clusters(body)), json.dumps(clusters(body)[ALL], indent=1)
    for config in render_all(build(DR.format(body=body), with_rules=False)).values():
        envoy_validate(config.validation)


@pytest.mark.parametrize("kind,expected", [
    ("httpHeaderName: x-user", {"header": {"header_name": "x-user"}}),
    ("httpCookie: {name: user, ttl: 0s}", {"cookie": {"name": "user", "ttl": "0s"}}),
    ("useSourceIp: true", {"connection_properties": {"source_ip": True}}),
    ("httpQueryParameterName: session", {"query_parameter": {"name": "session"}}),
])
def test_consistent_hash_sets_the_route_hash_policy(kind, expected):
    mesh = build(DR.format(body=f"  trafficPolicy:\n    loadBalancer: {{consistentHash: {{{kind}}}}}\n"), with_rules=False)
    (route,) = outbound_routes(mesh, "productpage-v1", "reviews")
    assert route["route"]["hash_policy"] == [expected]


@pytest.mark.parametrize("body,expected", [
    ("  trafficPolicy:\n    loadBalancer: {simple: FASTEST}\n", "spec.trafficPolicy.loadBalancer.simple: expected one of"),
    ("  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL, caCertificates: /etc/ca.pem}\n",
     "spec.trafficPolicy.tls.caCertificates: caCertificates does not go with ISTIO_MUTUAL"),
    ("  trafficPolicy:\n    outlierDetection: {interval: 10}\n", "spec.trafficPolicy.outlierDetection.interval: expected a duration"),
    ("  trafficPolicy:\n    connectionPool: {tcp: {maxConnection: 1}}\n",
     "spec.trafficPolicy.connectionPool.tcp.maxConnection: unknown field; did you mean 'maxConnections'?"),
    ("  trafficPolicy:\n    loadBalancer: {consistentHash: {}}\n",
     "spec.trafficPolicy.loadBalancer.consistentHash: set exactly one of"),
    ("  trafficPolicy:\n    tls: {mode: MUTUAL}\n", "spec.trafficPolicy.tls: MUTUAL needs clientCertificate and privateKey"),
])
def test_traffic_policy_errors(body, expected):
    with pytest.raises(MeshError) as info:
        build(DR.format(body=body), with_rules=False)
    assert expected in str(info.value)


# --- vmesh_probe and drained hosts (issue J) ---------------------------------------------------------------------


def test_a_probe_becomes_a_local_health_check_and_a_check_by_every_client():
    hosts = bookinfo_hosts()
    for host in ("reviews-v1", "reviews-v2", "reviews-v3"):
        hosts[host]["vmesh_probe"] = {"httpGet": {"path": "/health"}, "periodSeconds": 5, "failureThreshold": 2}
    mesh = build(hosts=hosts)
    server = render_host(mesh, "reviews-v2")
    local = next(c for c in resources(server.files, "cds.json") if c["name"] == "vmesh_probe")
    assert local["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == \
        {"address": "127.0.0.1", "port_value": 9080}
    assert local["health_checks"] == [{"interval": "5s", "timeout": "1s", "unhealthy_threshold": 2,
                                       "healthy_threshold": 1, "no_traffic_interval": "5s",
                                       "http_health_check": {"path": "/health"}}]
    readiness = json.loads(server.files["envoy.json"])["static_resources"]["listeners"][0]
    filters = readiness["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert filters[0]["name"] == "envoy.filters.http.health_check"
    assert filters[0]["typed_config"]["cluster_min_healthy_percentages"] == {"vmesh_probe": {"value": 100}}
    client = render_host(mesh, "productpage-v1")
    cluster = next(c for c in resources(client.files, "cds.json")
                   if c["name"] == "outbound|9080||reviews.default.svc.cluster.local")
    assert cluster["health_checks"][0]["http_health_check"] == {"path": "/healthz/probe",
                                                               "host": "reviews.default.svc.cluster.local"}
    assert cluster["transport_socket_matches"][0]["transport_socket"]["name"] == "envoy.transport_sockets.raw_buffer"
    assert cluster["transport_socket"]["name"] == "envoy.transport_sockets.tls"  # the traffic stays mTLS
    eds = resources(client.files, "eds_outbound_9080__reviews.default.svc.cluster.local.json")[0]
    assert {e["endpoint"]["health_check_config"]["port_value"] for e in eds["endpoints"][0]["lb_endpoints"]} == {15021}
    # unprobed services and hosts are as before
    details = render_host(mesh, "details-v1")
    assert "vmesh_probe" not in details.files["cds.json"] and "health_check" not in details.files["envoy.json"]
    assert envoy.validate_many({h: render_host(mesh, h).validation for h in ("reviews-v2", "productpage-v1")},
                               stub_missing=True) == {h: (True, "configuration '<config>' OK")
                                                      for h in ("reviews-v2", "productpage-v1")}


def test_a_drained_host_leaves_every_clients_endpoints_and_nothing_else():
    before = render_all(build())
    after = render_all(build(drained={"reviews-v2"}))
    changed = {host: sorted(name for name in after[host].files if after[host].files[name] != before[host].files[name])
               for host in after}
    eds = "eds_outbound_9080__reviews.default.svc.cluster.local.json"
    assert {host: names for host, names in changed.items() if names} == \
        {host: [eds] for host in after if eds in after[host].files} and changed["productpage-v1"]
    addresses = [e["endpoint"]["address"]["socket_address"]["address"]
                 for e in resources(after["productpage-v1"].files, eds)[0]["endpoints"][0]["lb_endpoints"]]
    mesh = build()
    assert mesh.registry.workloads["reviews-v2"].address not in addresses and len(addresses) == 2
