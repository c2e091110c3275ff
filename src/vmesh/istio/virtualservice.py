"""VirtualService: HTTP routing rules for the services of the mesh."""

from __future__ import annotations

import dataclasses

from vmesh.documents import Document, dns_label_problem, show
from vmesh.istio.destinationrule import unknown_host
from vmesh.istio.fields import MS, Node, check_host, check_regex, duration_ns, root, string_match
from vmesh.registry import DNS_LABEL, Registry

StringMatch = tuple[str, str]  # (exact|prefix|regex, value)

HTTP_ROUTE_SUPPORTED = ("name", "match", "route", "timeout", "retries", "redirect", "directResponse", "rewrite",
                        "fault", "mirror", "mirrors", "mirrorPercentage", "corsPolicy", "headers")
HTTP_ROUTE_UNSUPPORTED = ("delegate", "mirrorPercent", "mirror_percent")
MATCH_SUPPORTED = ("name", "uri", "headers", "withoutHeaders", "queryParams", "method", "authority", "scheme",
                   "port", "sourceLabels", "sourceNamespace", "ignoreUriCase")
MATCH_UNSUPPORTED = ("statPrefix",)
MESH_GATEWAY = "mesh"  # the gateways keyword for every sidecar


@dataclasses.dataclass(frozen=True)
class HttpMatch:
    uri: StringMatch | None
    headers: tuple[tuple[str, StringMatch | None], ...]  # None: the header must be present
    without_headers: tuple[tuple[str, StringMatch | None], ...] = ()
    query_params: tuple[tuple[str, StringMatch | None], ...] = ()
    ignore_uri_case: bool = False
    port: int | None = None  # applies only to this service port
    source_labels: tuple[tuple[str, str], ...] = ()  # applies only to calls from hosts with these labels
    source_namespace: str | None = None
    gateways: tuple[str, ...] = ()  # applies only on these gateways ("mesh": the sidecars)


@dataclasses.dataclass(frozen=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Headers:
    request: HeaderOps = HeaderOps()
    response: HeaderOps = HeaderOps()


@dataclasses.dataclass(frozen=True)
class Redirect:
    uri: str | None
    authority: str | None
    scheme: str | None
    port: int | None
    code: int


@dataclasses.dataclass(frozen=True)
class Rewrite:
    uri: str | None
    authority: str | None
    regex: tuple[str, str] | None  # (match, substitution)


@dataclasses.dataclass(frozen=True)
class Fault:
    delay_ns: int | None
    delay_percent: float
    abort_http: int | None
    abort_grpc: int | None
    abort_percent: float


@dataclasses.dataclass(frozen=True)
class Mirror:
    host: str
    subset: str | None
    port: int | None
    percent: float
    node: Node = dataclasses.field(compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Cors:
    allow_origins: tuple[StringMatch, ...]
    allow_methods: tuple[str, ...]
    allow_headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    max_age_ns: int | None
    allow_credentials: bool | None
    forward_unmatched_preflights: bool | None


@dataclasses.dataclass(frozen=True)
class Destination:
    host: str  # FQDN
    subset: str | None
    port: int | None
    weight: int
    node: Node = dataclasses.field(compare=False, repr=False)
    headers: Headers = Headers()


@dataclasses.dataclass(frozen=True)
class Retries:
    attempts: int
    per_try_timeout_ns: int | None
    retry_on: tuple[str, ...]  # Envoy retry conditions
    status_codes: tuple[int, ...]


@dataclasses.dataclass
class HttpRoute:
    name: str | None
    matches: list[HttpMatch]
    destinations: list[Destination]
    timeout_ns: int | None = None  # None: no timeout (Istio's default)
    retries: Retries | None = None  # None: Istio's default retry policy
    redirect: Redirect | None = None
    direct_response: tuple[int, str | None] | None = None  # (status, body)
    rewrite: Rewrite | None = None
    fault: Fault | None = None
    mirrors: tuple[Mirror, ...] = ()
    cors: Cors | None = None
    headers: Headers = Headers()


# Conditions Envoy's router accepts in retry_on (HTTP and gRPC), as Istio passes them through.
RETRY_ON = {"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
            "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
            "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
            "unavailable"}
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")
MIN_TIMEOUT_NS = 10**6  # Istio refuses durations under 1ms


def _retries(node: Node) -> Retries | None:
    if not node.present:
        return None
    node.mapping(("attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities", "retryIgnorePreviousHosts"))
    attempts = node.get("attempts").integer(required=True, minimum=0)
    per_try = duration_ns(node.get("perTryTimeout"), minimum_ns=MIN_TIMEOUT_NS)
    text = node.get("retryOn").string()
    node.get("retryRemoteLocalities").boolean()
    node.get("retryIgnorePreviousHosts").boolean()
    if text is None:
        return Retries(attempts, per_try, DEFAULT_RETRY_ON, (503,))
    conditions, codes = [], []
    for part in (p.strip() for p in text.split(",")):
        if part.isdigit() and 100 <= int(part) <= 599:
            codes.append(int(part))
        elif part in RETRY_ON:
            conditions.append(part)
        else:
            raise node.get("retryOn").error(f"unknown retry condition {show(part)}; use HTTP status codes or "
                                            f"{', '.join(sorted(RETRY_ON))}")
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    return Retries(attempts, per_try, tuple(conditions), tuple(codes))


@dataclasses.dataclass(frozen=True)
class TcpMatch:
    port: int | None = None
    source_labels: tuple[tuple[str, str], ...] = ()
    source_namespace: str | None = None
    gateways: tuple[str, ...] = ()
    sni_hosts: tuple[str, ...] = ()  # tls routes only


@dataclasses.dataclass
class TcpRoute:
    matches: list[TcpMatch]
    destinations: list[Destination]


@dataclasses.dataclass
class VirtualService:
    doc: Document
    hosts: list[str]  # as Istio reads them: services' FQDNs, other names as written
    http: list[HttpRoute]
    tcp: list[TcpRoute] = dataclasses.field(default_factory=list)
    tls: list[TcpRoute] = dataclasses.field(default_factory=list)  # by SNI
    gateways: tuple[str, ...] = (MESH_GATEWAY,)  # "mesh" and/or "namespace/name" of Gateways

    @property
    def on_mesh(self) -> bool:
        return MESH_GATEWAY in self.gateways

    def routes(self) -> list:
        return list(self.http) + list(self.tcp) + list(self.tls)


def _header_matches(node: Node) -> tuple[tuple[str, StringMatch | None], ...]:
    out = []
    for name, value in sorted(node.entries()):
        if name != name.lower():
            raise value.error(f"header name {show(name)} must be lower case (Istio compares them lower-cased)")
        out.append((name, string_match(value)))
    return tuple(out)


def _gateway_refs(node: Node, namespace: str) -> tuple[str, ...]:
    """Gateway names as keys: "mesh", or "namespace/name" (a bare name is in the document's namespace)."""
    out = []
    for item in node.items():
        text = item.string(required=True)
        if text == MESH_GATEWAY:
            out.append(text)
            continue
        ns, _, name = text.rpartition("/")
        if not name or "." in name:
            raise item.error(f"expected 'mesh', a Gateway name or namespace/name, got {show(text)}")
        for part, problem in (("namespace", dns_label_problem(ns) if "/" in text else None),
                              ("Gateway name", dns_label_problem(name))):
            if problem:
                raise item.error(f"invalid {part} in {show(text)}: {problem}")
        out.append(f"{ns or namespace}/{name}")
    return tuple(out)


def _match(node: Node) -> HttpMatch:
    node.mapping(MATCH_SUPPORTED, MATCH_UNSUPPORTED)
    uri = string_match(node.get("uri")) if node.get("uri").present else None
    headers = list(_header_matches(node.get("headers")))
    # method, authority and scheme are pseudo-headers to Envoy
    for field, pseudo in (("method", ":method"), ("authority", ":authority"), ("scheme", ":scheme")):
        if node.get(field).present:
            value = string_match(node.get(field))
            if value is None:
                raise node.get(field).error("set one of exact, prefix, regex")
            headers.append((pseudo, value))
    query = []
    for name, value in sorted(node.get("queryParams").entries()):
        query.append((name, string_match(value)))
    labels = node.get("sourceLabels").string_map()
    return HttpMatch(uri, tuple(headers), _header_matches(node.get("withoutHeaders")), tuple(query),
                     node.get("ignoreUriCase").boolean(), node.get("port").integer(minimum=1, maximum=65535),
                     tuple(sorted(labels.items())), node.get("sourceNamespace").string(),
                     _gateway_refs(node.get("gateways"), node.doc.namespace))


def _header_ops(node: Node) -> HeaderOps:
    node.mapping(("set", "add", "remove"))
    for field in ("set", "add"):
        for name, _ in node.get(field).entries():
            if not name or ":" in name[1:]:
                raise node.get(field).get(name).error(f"invalid header name {show(name)}")
    return HeaderOps(tuple(sorted(node.get("set").string_map().items())),
                     tuple(sorted(node.get("add").string_map().items())), tuple(node.get("remove").strings()))


def _headers(node: Node) -> Headers:
    if not node.present:
        return Headers()
    node.mapping(("request", "response"))
    return Headers(_header_ops(node.get("request")), _header_ops(node.get("response")))


REDIRECT_CODES = (301, 302, 303, 307, 308)


def _redirect(node: Node) -> Redirect | None:
    if not node.present:
        return None
    node.mapping(("uri", "authority", "redirectCode", "scheme", "port"), ("derivePort", "uriRegexRedirect"))
    code = node.get("redirectCode").integer(default=301)
    if code not in REDIRECT_CODES:
        raise node.get("redirectCode").error(f"expected one of {', '.join(map(str, REDIRECT_CODES))}, got {code}")
    redirect = Redirect(node.get("uri").string(), node.get("authority").string(), node.get("scheme").string(),
                        node.get("port").integer(minimum=1, maximum=65535), code)
    if not any((redirect.uri, redirect.authority, redirect.scheme, redirect.port)):
        raise node.error("set at least one of uri, authority, scheme, port")
    return redirect


def _direct_response(node: Node) -> tuple[int, str | None] | None:
    if not node.present:
        return None
    node.mapping(("status", "body"))
    status = node.get("status").integer(required=True, minimum=200, maximum=599)
    body = None
    if node.get("body").present:
        body_node = node.get("body").mapping(("string", "bytes"))
        if body_node.get("bytes").present:
            import base64
            import binascii

            try:
                body = base64.b64decode(body_node.get("bytes").string(required=True), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise body_node.get("bytes").error("expected base64 of UTF-8 text") from None
        else:
            body = body_node.get("string").string(required=True)
    return status, body


def _rewrite(node: Node) -> Rewrite | None:
    if not node.present:
        return None
    node.mapping(("uri", "authority", "uriRegexRewrite"))
    regex = None
    if node.get("uriRegexRewrite").present:
        rr = node.get("uriRegexRewrite").mapping(("match", "rewrite"))
        regex = (check_regex(rr.get("match")), rr.get("rewrite").string(required=True))
        if node.get("uri").present:
            raise node.error("set uri or uriRegexRewrite, not both")
    return Rewrite(node.get("uri").string(), node.get("authority").string(), regex)


def _percent(node: Node) -> float:
    """Istio's Percent ({value: 0-100}); absent means 100."""
    if not node.present:
        return 100.0
    node.mapping(("value",))
    value = node.get("value").value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise node.get("value").error(f"expected a percentage from 0 to 100, got {show(value)}")
    return float(value)


GRPC_CODES = {"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
              "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
              "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13,
              "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16}


def _fault(node: Node) -> Fault | None:
    if not node.present:
        return None
    node.mapping(("delay", "abort"))
    delay_ns, delay_pct, http, grpc, abort_pct = None, 0.0, None, None, 0.0
    if node.get("delay").present:
        delay = node.get("delay").mapping(("fixedDelay", "percentage"), ("exponentialDelay", "percent"))
        delay_ns = duration_ns(delay.get("fixedDelay"), minimum_ns=MIN_TIMEOUT_NS)
        if delay_ns is None:
            raise delay.get("fixedDelay").error("required")
        delay_pct = _percent(delay.get("percentage"))
    if node.get("abort").present:
        abort = node.get("abort").mapping(("httpStatus", "grpcStatus", "percentage"), ("http2Error",))
        http = abort.get("httpStatus").integer(minimum=200, maximum=599)
        grpc_name = abort.get("grpcStatus").string()
        if (http is None) == (grpc_name is None):
            raise abort.error("set one of httpStatus, grpcStatus")
        if grpc_name is not None:
            if grpc_name not in GRPC_CODES:
                raise abort.get("grpcStatus").error(f"unknown gRPC status {show(grpc_name)}; use e.g. UNAVAILABLE")
            grpc = GRPC_CODES[grpc_name]
        abort_pct = _percent(abort.get("percentage"))
    if delay_ns is None and http is None and grpc is None:
        raise node.error("set delay or abort")
    return Fault(delay_ns, delay_pct, http, grpc, abort_pct)


def _destination_ref(dest: Node, registry: Registry, namespace: str) -> tuple[str, str | None, int | None]:
    dest.mapping(("host", "subset", "port"), required=True)
    host_node = dest.get("host")
    host = registry.fqdn(check_host(host_node, host_node.string(required=True)), namespace)
    if host not in registry.services:
        raise host_node.error(unknown_host(host_node, registry))
    port = None
    port_node = dest.get("port")
    if port_node.present:
        port = port_node.mapping(("number",)).get("number").integer(required=True, minimum=1, maximum=65535)
        if registry.services[host].port(port) is None:
            ports = ", ".join(str(p.number) for p in registry.services[host].ports)
            raise port_node.get("number").error(f"service {host} has no port {port} (ports: {ports})")
    subset = dest.get("subset").string()
    if subset is not None and (len(subset) > 63 or not DNS_LABEL.fullmatch(subset)):
        raise dest.get("subset").error(f"invalid subset name {show(subset)}: use a DNS label (lower-case letters, "
                                       "digits and '-', at most 63)")
    return host, subset, port


def _mirrors(node: Node, registry: Registry, namespace: str) -> tuple[Mirror, ...]:
    out = []
    if node.get("mirror").present:
        if node.get("mirrors").present:
            raise node.get("mirrors").error("set mirror or mirrors, not both")
        host, subset, port = _destination_ref(node.get("mirror"), registry, namespace)
        out.append(Mirror(host, subset, port, _percent(node.get("mirrorPercentage")), node.get("mirror")))
    elif node.get("mirrorPercentage").present:
        raise node.get("mirrorPercentage").error("mirrorPercentage needs mirror")
    for item in node.get("mirrors").items():
        item.mapping(("destination", "percentage"))
        host, subset, port = _destination_ref(item.get("destination"), registry, namespace)
        out.append(Mirror(host, subset, port, _percent(item.get("percentage")), item.get("destination")))
    return tuple(out)


def _cors(node: Node) -> Cors | None:
    if not node.present:
        return None
    node.mapping(("allowOrigins", "allowMethods", "allowHeaders", "exposeHeaders", "maxAge", "allowCredentials",
                  "unmatchedPreflights"), ("allowOrigin",))
    origins = []
    for item in node.get("allowOrigins").items():
        match = string_match(item)
        if match is None:
            raise item.error("set one of exact, prefix, regex")
        origins.append(match)
    preflights = node.get("unmatchedPreflights").string()
    if preflights not in (None, "FORWARD", "IGNORE", "UNSPECIFIED"):
        raise node.get("unmatchedPreflights").error("expected FORWARD or IGNORE")
    credentials = node.get("allowCredentials").boolean(default=None) if node.get("allowCredentials").present else None
    return Cors(tuple(origins), tuple(node.get("allowMethods").strings()), tuple(node.get("allowHeaders").strings()),
                tuple(node.get("exposeHeaders").strings()), duration_ns(node.get("maxAge"), minimum_ns=MS), credentials,
                None if preflights in (None, "UNSPECIFIED") else preflights == "FORWARD")


def _destinations(node: Node, registry: Registry, namespace: str) -> list[Destination]:
    items = node.items(required=True, non_empty=True)
    out = []
    for item in items:
        item.mapping(("destination", "weight", "headers"))
        host, subset, port = _destination_ref(item.get("destination"), registry, namespace)
        weight = item.get("weight").integer(default=None, minimum=0, maximum=100)
        out.append(Destination(host, subset, port, 100 if weight is None and len(items) == 1 else (weight or 0),
                               item.get("destination"), _headers(item.get("headers"))))
    if len(out) > 1:
        total = sum(d.weight for d in out)
        if total != 100:
            raise node.error(f"weights sum to {total}, expected 100")
    return out


def _http_route(node: Node, registry: Registry, namespace: str) -> HttpRoute:
    node.mapping(HTTP_ROUTE_SUPPORTED, HTTP_ROUTE_UNSUPPORTED)
    matches = [_match(m) for m in node.get("match").items()]
    redirect = _redirect(node.get("redirect"))
    direct = _direct_response(node.get("directResponse"))
    actions = [name for name, given in (("route", node.get("route").present), ("redirect", redirect),
                                        ("directResponse", direct)) if given]
    if len(actions) != 1:
        raise node.error("set exactly one of route, redirect, directResponse" +
                         (f" (got {', '.join(actions)})" if actions else ""))
    destinations = _destinations(node.get("route"), registry, namespace) if node.get("route").present else []
    rewrite = _rewrite(node.get("rewrite"))
    if rewrite and not destinations:
        raise node.get("rewrite").error("rewrite needs route (it cannot go with redirect or directResponse)")
    return HttpRoute(node.get("name").string(), matches, destinations,
                     duration_ns(node.get("timeout"), minimum_ns=MIN_TIMEOUT_NS), _retries(node.get("retries")),
                     redirect, direct, rewrite, _fault(node.get("fault")), _mirrors(node, registry, namespace),
                     _cors(node.get("corsPolicy")), _headers(node.get("headers")))


def _sni_hosts(node: Node) -> tuple[str, ...]:
    hosts = []
    for item in node.items(required=True, non_empty=True):
        name = check_host(item, item.string(required=True).lower(), what="server name")
        if "*" in name and not (name == "*" or (name.startswith("*.") and "*" not in name[1:])):
            raise item.error(f"expected a server name or a leading wildcard such as '*.example.com', got {show(name)}")
        hosts.append(name)
    return tuple(hosts)


def _tcp_route(node: Node, registry: Registry, namespace: str, *, tls: bool = False) -> TcpRoute:
    node.mapping(("match", "route"))
    matches = []
    known = ("port", "sourceLabels", "sourceNamespace", "gateways") + (("sniHosts",) if tls else ())
    items = node.get("match").items(required=tls, non_empty=tls)
    for item in items:
        item.mapping(known, ("destinationSubnets", "sourceSubnet"))
        matches.append(TcpMatch(item.get("port").integer(minimum=1, maximum=65535),
                                tuple(sorted(item.get("sourceLabels").string_map().items())),
                                item.get("sourceNamespace").string(),
                                _gateway_refs(item.get("gateways"), namespace),
                                _sni_hosts(item.get("sniHosts")) if tls else ()))
    destinations = _destinations(node.get("route"), registry, namespace)
    for dest in destinations:
        if dest.headers != Headers():
            raise dest.node.error("headers do not apply to tcp routes")
    return TcpRoute(matches, destinations)


def parse(doc: Document, registry: Registry) -> VirtualService:
    spec = root(doc).mapping(("hosts", "gateways", "http", "tcp", "tls", "exportTo"))
    gateways = _gateway_refs(spec.get("gateways"), doc.namespace) or (MESH_GATEWAY,)
    hosts = []
    for node in spec.get("hosts").items(required=True, non_empty=True):
        name = check_host(node, node.string(required=True).lower(), ip=True)
        fqdn = registry.fqdn(name, doc.namespace)
        if MESH_GATEWAY in gateways:
            # the sidecars route services they know; a name that is none of them is a mistake
            if "*" in name:
                raise node.error(f"wildcard host {show(name)} applies only to Gateways: set gateways to the Gateway "
                                 "(and leave out 'mesh')")
            if fqdn not in registry.services:
                raise node.error(unknown_host(node, registry))
        elif "*" in name and not (name == "*" or (name.startswith("*.") and "*" not in name[1:])):
            raise node.error(f"expected a host name or a leading wildcard such as '*.example.com', got {show(name)}")
        host = fqdn if fqdn in registry.services else name
        if host in hosts:
            raise node.error(f"host {show(name)} is listed twice")
        hosts.append(host)
    spec.get("exportTo").strings()
    http = [_http_route(node, registry, doc.namespace) for node in spec.get("http").items()]
    tcp = [_tcp_route(node, registry, doc.namespace) for node in spec.get("tcp").items()]
    tls = [_tcp_route(node, registry, doc.namespace, tls=True) for node in spec.get("tls").items()]
    if not http and not tcp and not tls:
        raise spec.error("set http, tcp or tls routes")
    return VirtualService(doc, hosts, http, tcp, tls, gateways)
