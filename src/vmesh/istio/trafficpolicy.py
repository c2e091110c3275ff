"""DestinationRule traffic policies: load balancing, connection pool, outlier detection, TLS origination.

Istio's merge: a subset's policy overrides the rule's, and portLevelSettings override for their port; each of
loadBalancer, connectionPool, outlierDetection and tls is replaced whole.
"""

from __future__ import annotations

import dataclasses

from vmesh.documents import show
from vmesh.istio.fields import Node, duration_ns

SIMPLE_LB = {"UNSPECIFIED": None, "ROUND_ROBIN": "ROUND_ROBIN", "LEAST_REQUEST": "LEAST_REQUEST",
             "LEAST_CONN": "LEAST_REQUEST", "RANDOM": "RANDOM"}
TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")


@dataclasses.dataclass(frozen=True)
class ConsistentHash:
    header: str | None = None
    cookie: tuple[str, str | None, int | None] | None = None  # (name, path, ttl ns)
    source_ip: bool = False
    query_parameter: str | None = None
    minimum_ring_size: int | None = None
    maglev_table_size: int | None = None


@dataclasses.dataclass(frozen=True)
class LoadBalancer:
    simple: str | None = None  # Envoy lb_policy
    consistent_hash: ConsistentHash | None = None


@dataclasses.dataclass(frozen=True)
class ConnectionPool:
    max_connections: int | None = None
    connect_timeout_ns: int | None = None
    keepalive: tuple[int | None, int | None, int | None] | None = None  # probes, time ns, interval ns
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout_ns: int | None = None
    upgrade_http2: bool = False


@dataclasses.dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx: int
    consecutive_gateway: int | None
    interval_ns: int
    base_ejection_ns: int
    max_ejection_percent: int
    min_health_percent: int


@dataclasses.dataclass(frozen=True)
class Tls:
    mode: str
    sni: str | None = None
    ca_certificates: str | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    insecure_skip_verify: bool = False


@dataclasses.dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: Tls | None = None
    ports: tuple[tuple[int, "TrafficPolicy"], ...] = ()

    def for_port(self, port: int) -> TrafficPolicy:
        override = dict(self.ports).get(port)
        return self.merged(override) if override else self

    def merged(self, other: TrafficPolicy | None) -> TrafficPolicy:
        if other is None:
            return self
        fields = {}
        for field in ("load_balancer", "connection_pool", "outlier_detection", "tls"):
            fields[field] = getattr(other, field) or getattr(self, field)
        return TrafficPolicy(**fields, ports=self.ports)


def effective(rule_policy: TrafficPolicy | None, subset_policy: TrafficPolicy | None, port: int) -> TrafficPolicy:
    base = (rule_policy or TrafficPolicy()).for_port(port)
    return base.merged(subset_policy.for_port(port) if subset_policy else None)


def _consistent_hash(node: Node) -> ConsistentHash:
    node.mapping(("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName", "minimumRingSize",
                  "ringHash", "maglev"))
    cookie = None
    if node.get("httpCookie").present:
        c = node.get("httpCookie").mapping(("name", "path", "ttl", "attributes"))
        cookie = (c.get("name").string(required=True), c.get("path").string(), duration_ns(c.get("ttl")))
    kinds = [k for k in ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
             if node.get(k).present]
    if len(kinds) != 1:
        raise node.error("set exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName")
    ring = node.get("minimumRingSize").integer(minimum=1)
    if node.get("ringHash").present:
        ring = node.get("ringHash").mapping(("minimumRingSize",)).get("minimumRingSize").integer(minimum=1)
    maglev = None
    if node.get("maglev").present:
        maglev = node.get("maglev").mapping(("tableSize",)).get("tableSize").integer(minimum=1)
        if maglev is None:
            maglev = 65537
    return ConsistentHash(node.get("httpHeaderName").string(), cookie, node.get("useSourceIp").boolean(),
                          node.get("httpQueryParameterName").string(), ring, maglev)


def _load_balancer(node: Node) -> LoadBalancer | None:
    if not node.present:
        return None
    node.mapping(("simple", "consistentHash"), ("localityLbSetting", "warmupDurationSecs", "warmup"))
    if node.get("simple").present and node.get("consistentHash").present:
        raise node.error("set simple or consistentHash, not both")
    if node.get("consistentHash").present:
        return LoadBalancer(consistent_hash=_consistent_hash(node.get("consistentHash")))
    simple = node.get("simple").string(required=True)
    if simple == "PASSTHROUGH":
        raise node.get("simple").error("PASSTHROUGH is not supported by vmesh yet")
    if simple not in SIMPLE_LB:
        raise node.get("simple").error(f"expected one of {', '.join(SIMPLE_LB)}, got {show(simple)}")
    return LoadBalancer(simple=SIMPLE_LB[simple])


def _connection_pool(node: Node) -> ConnectionPool | None:
    if not node.present:
        return None
    node.mapping(("tcp", "http"))
    tcp = node.get("tcp").mapping(("maxConnections", "connectTimeout", "tcpKeepalive"),
                                  ("maxConnectionDuration", "idleTimeout"))
    http = node.get("http").mapping(("http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection",
                                     "maxRetries", "idleTimeout", "h2UpgradePolicy"),
                                    ("useClientProtocol", "maxConcurrentStreams"))
    keepalive = None
    if tcp.get("tcpKeepalive").present:
        k = tcp.get("tcpKeepalive").mapping(("probes", "time", "interval"))
        keepalive = (k.get("probes").integer(minimum=1), duration_ns(k.get("time")), duration_ns(k.get("interval")))
    upgrade = http.get("h2UpgradePolicy").string(default="DEFAULT")
    if upgrade not in ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"):
        raise http.get("h2UpgradePolicy").error("expected DEFAULT, DO_NOT_UPGRADE or UPGRADE")
    return ConnectionPool(
        tcp.get("maxConnections").integer(minimum=1), duration_ns(tcp.get("connectTimeout"), minimum_ns=10**6),
        keepalive, http.get("http1MaxPendingRequests").integer(minimum=1),
        http.get("http2MaxRequests").integer(minimum=1), http.get("maxRequestsPerConnection").integer(minimum=0),
        http.get("maxRetries").integer(minimum=0), duration_ns(http.get("idleTimeout"), minimum_ns=10**6),
        upgrade == "UPGRADE")


def _outlier_detection(node: Node) -> OutlierDetection | None:
    if not node.present:
        return None
    node.mapping(("consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime",
                  "maxEjectionPercent", "minHealthPercent", "consecutiveErrors", "splitExternalLocalOriginErrors",
                  "consecutiveLocalOriginFailures"))
    if node.get("consecutiveErrors").present:
        raise node.get("consecutiveErrors").error("consecutiveErrors is deprecated in Istio; use consecutive5xxErrors")
    for unsupported in ("splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures"):
        if node.get(unsupported).present:
            raise node.get(unsupported).error(f"{unsupported} is not supported by vmesh yet")
    return OutlierDetection(
        node.get("consecutive5xxErrors").integer(default=5, minimum=0),
        node.get("consecutiveGatewayErrors").integer(minimum=0),
        duration_ns(node.get("interval"), minimum_ns=10**6) or 10 * 10**9,
        duration_ns(node.get("baseEjectionTime"), minimum_ns=10**6) or 30 * 10**9,
        node.get("maxEjectionPercent").integer(default=10, minimum=0, maximum=100),
        node.get("minHealthPercent").integer(default=0, minimum=0, maximum=100))


def _tls(node: Node) -> Tls | None:
    if not node.present:
        return None
    node.mapping(("mode", "sni", "caCertificates", "clientCertificate", "privateKey", "subjectAltNames",
                  "insecureSkipVerify", "credentialName", "caCrl"))
    mode = node.get("mode").string(default="DISABLE")
    if mode not in TLS_MODES:
        raise node.get("mode").error(f"expected one of {', '.join(TLS_MODES)}, got {show(mode)}")
    if mode == "ISTIO_MUTUAL":
        for field in ("caCertificates", "clientCertificate", "privateKey"):
            if node.get(field).present:
                raise node.get(field).error(f"{field} does not go with ISTIO_MUTUAL: the workload's own mesh "
                                            "certificate is used (use MUTUAL for certificates of your own)")
    for unsupported in ("credentialName", "caCrl"):
        if node.get(unsupported).present:
            raise node.get(unsupported).error(f"{unsupported} is not supported by vmesh yet; give file paths")
    tls = Tls(mode, node.get("sni").string(), node.get("caCertificates").string(),
              node.get("clientCertificate").string(), node.get("privateKey").string(),
              tuple(node.get("subjectAltNames").strings()), node.get("insecureSkipVerify").boolean())
    if mode == "MUTUAL" and not (tls.client_certificate and tls.private_key):
        raise node.error("MUTUAL needs clientCertificate and privateKey")
    for field, path in (("caCertificates", tls.ca_certificates), ("clientCertificate", tls.client_certificate),
                        ("privateKey", tls.private_key)):
        if path is not None and not path.startswith("/"):
            raise node.get(field).error(f"expected an absolute path on the hosts, got {show(path)}")
    return tls


def parse(node: Node, *, port_level: bool = True) -> TrafficPolicy | None:
    if not node.present:
        return None
    known = ["loadBalancer", "connectionPool", "outlierDetection", "tls"] + (["portLevelSettings"] if port_level else [])
    node.mapping(known + (["port"] if not port_level else []), ("tunnel", "proxyProtocol", "retryBudget"))
    ports = []
    for item in node.get("portLevelSettings").items():
        number = item.get("port").mapping(("number",), required=True).get("number").integer(
            required=True, minimum=1, maximum=65535)
        if number in dict(ports):
            raise item.get("port").error(f"port {number} has settings twice")
        ports.append((number, parse(item, port_level=False)))
    return TrafficPolicy(_load_balancer(node.get("loadBalancer")), _connection_pool(node.get("connectionPool")),
                         _outlier_detection(node.get("outlierDetection")), _tls(node.get("tls")), tuple(ports))
