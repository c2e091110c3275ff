"""VirtualService: HTTP routing rules for the services of the mesh."""

from __future__ import annotations

import dataclasses

from vmesh.documents import Document
from vmesh.istio.destinationrule import unknown_host
from vmesh.istio.fields import Node, duration_ns, root, string_match
from vmesh.registry import Registry

StringMatch = tuple[str, str]  # (exact|prefix|regex, value)

HTTP_ROUTE_SUPPORTED = ("name", "match", "route", "timeout", "retries")
HTTP_ROUTE_UNSUPPORTED = ("redirect", "directResponse", "delegate", "rewrite", "fault",
                          "mirror", "mirrors", "mirrorPercentage", "mirrorPercent", "mirror_percent", "corsPolicy",
                          "headers")
MATCH_SUPPORTED = ("name", "uri", "headers")
MATCH_UNSUPPORTED = ("scheme", "method", "authority", "port", "sourceLabels", "gateways", "queryParams",
                     "ignoreUriCase", "withoutHeaders", "sourceNamespace", "statPrefix")


@dataclasses.dataclass(frozen=True)
class HttpMatch:
    uri: StringMatch | None
    headers: tuple[tuple[str, StringMatch | None], ...]  # None: the header must be present


@dataclasses.dataclass(frozen=True)
class Destination:
    host: str  # FQDN
    subset: str | None
    port: int | None
    weight: int
    node: Node = dataclasses.field(compare=False, repr=False)


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
            raise node.get("retryOn").error(f"unknown retry condition {part!r}; use HTTP status codes or "
                                            f"{', '.join(sorted(RETRY_ON))}")
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    return Retries(attempts, per_try, tuple(conditions), tuple(codes))


@dataclasses.dataclass
class VirtualService:
    doc: Document
    hosts: list[str]  # FQDNs
    http: list[HttpRoute]


def _match(node: Node) -> HttpMatch:
    node.mapping(MATCH_SUPPORTED, MATCH_UNSUPPORTED)
    uri = string_match(node.get("uri")) if node.get("uri").present else None
    headers = []
    for name, value in sorted(node.get("headers").entries()):
        if name != name.lower():
            raise value.error(f"header name {name!r} must be lower case (Istio compares them lower-cased)")
        headers.append((name, string_match(value)))
    return HttpMatch(uri, tuple(headers))


def _destinations(node: Node, registry: Registry, namespace: str) -> list[Destination]:
    items = node.items(required=True, non_empty=True)
    out = []
    for item in items:
        item.mapping(("destination", "weight"), ("headers",))
        dest = item.get("destination").mapping(("host", "subset", "port"), required=True)
        host_node = dest.get("host")
        host = registry.fqdn(host_node.string(required=True), namespace)
        if host not in registry.services:
            raise host_node.error(unknown_host(host_node, registry))
        port = None
        port_node = dest.get("port")
        if port_node.present:
            port = port_node.mapping(("number",)).get("number").integer(required=True, minimum=1, maximum=65535)
            if registry.services[host].port(port) is None:
                ports = ", ".join(str(p.number) for p in registry.services[host].ports)
                raise port_node.get("number").error(f"service {host} has no port {port} (ports: {ports})")
        weight = item.get("weight").integer(default=None, minimum=0, maximum=100)
        out.append(Destination(host, dest.get("subset").string(), port,
                               100 if weight is None and len(items) == 1 else (weight or 0), dest))
    if len(out) > 1:
        total = sum(d.weight for d in out)
        if total != 100:
            raise node.error(f"weights sum to {total}, expected 100")
    return out


def parse(doc: Document, registry: Registry) -> VirtualService:
    spec = root(doc).mapping(("hosts", "gateways", "http", "exportTo"), ("tcp", "tls"))
    hosts = []
    for node in spec.get("hosts").items(required=True, non_empty=True):
        name = node.string(required=True)
        gateways = spec.get("gateways").strings()
        if gateways and gateways != ["mesh"]:
            raise spec.get("gateways").error("Gateway is not supported by vmesh yet (only 'mesh')")
        if "*" in name:
            raise node.error(f"wildcard host {name!r} needs a Gateway, which vmesh does not support yet")
        fqdn = registry.fqdn(name, doc.namespace)
        if fqdn not in registry.services:
            raise node.error(unknown_host(node, registry))
        if fqdn in hosts:
            raise node.error(f"host {name!r} is listed twice")
        hosts.append(fqdn)
    spec.get("exportTo").strings()
    http = []
    for node in spec.get("http").items(required=True, non_empty=True):
        node.mapping(HTTP_ROUTE_SUPPORTED, HTTP_ROUTE_UNSUPPORTED)
        matches = [_match(m) for m in node.get("match").items()]
        http.append(HttpRoute(node.get("name").string(), matches,
                              _destinations(node.get("route"), registry, doc.namespace),
                              duration_ns(node.get("timeout"), minimum_ns=MIN_TIMEOUT_NS),
                              _retries(node.get("retries"))))
    return VirtualService(doc, hosts, http)
