"""DestinationRule traffic policies compiled onto clusters (and hash policies onto routes)."""

from __future__ import annotations

import json

import pytest

from harness.mesh import build, outbound_routes, resources, routes_to
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
