"""Route configurations: an outbound HTTP port's table (a virtual host per service, VirtualService http rules),
and the inbound catch-all."""

from __future__ import annotations

from typing import Any

from vmesh.names import inbound_name, outbound_name
from vmesh.compile.envoy_types import CORS_POLICY, HTTP_FAULT, PASSTHROUGH, PREVIOUS_HOSTS, TCP_PROXY
from vmesh.istio.model import Mesh, selects
from vmesh.istio.fields import envoy_duration
from vmesh.istio.virtualservice import (MESH_GATEWAY, Cors, Destination, Fault, HeaderOps, Headers, HttpMatch,
                                        HttpRoute, Mirror, Retries, TcpMatch, VirtualService)
from vmesh.registry import Port, Service, Workload

# Istio's default retry policy for every HTTP route without `retries`.
DEFAULT_RETRY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retriable_status_codes": [503],
    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                              "typed_config": {"@type": PREVIOUS_HOSTS}}],
    "host_selection_retry_max_attempts": "5",
}
REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
                  308: "PERMANENT_REDIRECT"}
FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
# The HTTP filters that routes configure (typed_per_filter_config), in their order in a connection manager
PER_ROUTE_FILTERS = (FAULT_FILTER, CORS_FILTER)


def _string_match(kind: str, value: str) -> dict[str, Any]:
    return {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}


def _header_matchers(items, invert: bool = False) -> list[dict[str, Any]]:
    out = []
    for name, value in items:
        matcher: dict[str, Any] = {"name": name}
        if value is None:
            matcher["present_match"] = True
        else:
            matcher["string_match"] = _string_match(*value)
        if invert:
            matcher["invert_match"] = True
        out.append(matcher)
    return out


def _route_match(match: HttpMatch | None) -> dict[str, Any]:
    out: dict[str, Any] = {"prefix": "/"}
    if match is None:
        return out
    if match.uri is not None:
        kind, value = match.uri
        out = {"path": value} if kind == "exact" else _string_match(kind, value)
    headers = _header_matchers(match.headers) + _header_matchers(match.without_headers, invert=True)
    if headers:
        out["headers"] = headers
    if match.query_params:
        out["query_parameters"] = [{"name": name, **({"present_match": True} if value is None else
                                                      {"string_match": _string_match(*value)})}
                                   for name, value in match.query_params]
    if match.ignore_uri_case:
        out["case_sensitive"] = False
    return out


def _applies(match: HttpMatch | TcpMatch, port: Port, client: Workload, gateway: str = MESH_GATEWAY) -> bool:
    """Matches on the port, the gateway or the caller decide per host and port whether the match exists at all."""
    if match.gateways and gateway not in match.gateways:
        return False
    if match.port is not None and match.port != port.number:
        return False
    if match.source_labels and not selects(dict(match.source_labels), client.labels):
        return False
    if match.source_namespace is not None and match.source_namespace != client.namespace:
        return False
    return True


def _dest_port(mesh: Mesh, dest: Destination | Mirror, port: Port) -> int:
    target = mesh.registry.services[dest.host]
    if dest.port is not None:
        return dest.port
    if len(target.ports) == 1:
        return target.ports[0].number
    if target.port(port.number) is not None:
        return port.number
    raise dest.node.error(f"{dest.host} has several ports and none is {port.number}: set destination.port")


def _retry_policy(retries: Retries | None) -> dict[str, Any] | None:
    if retries is None:
        return DEFAULT_RETRY
    if retries.attempts == 0:
        return None
    policy: dict[str, Any] = {**DEFAULT_RETRY, "num_retries": retries.attempts, "retry_on": ",".join(retries.retry_on)}
    if retries.status_codes:
        policy["retriable_status_codes"] = list(retries.status_codes)
    else:
        policy.pop("retriable_status_codes")
    if retries.per_try_timeout_ns is not None:
        policy["per_try_timeout"] = envoy_duration(retries.per_try_timeout_ns)
    return policy


def _header_ops(ops: HeaderOps, direction: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    add = [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} for k, v in ops.set]
    add += [{"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"} for k, v in ops.add]
    if add:
        out[f"{direction}_headers_to_add"] = add
    if ops.remove:
        out[f"{direction}_headers_to_remove"] = list(ops.remove)
    return out


def _headers(headers: Headers) -> dict[str, Any]:
    return {**_header_ops(headers.request, "request"), **_header_ops(headers.response, "response")}


def _percent(value: float) -> dict[str, Any]:
    return {"numerator": round(value * 10000), "denominator": "MILLION"}


def _fault(fault: Fault) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": HTTP_FAULT}
    if fault.delay_ns is not None:
        config["delay"] = {"fixed_delay": envoy_duration(fault.delay_ns), "percentage": _percent(fault.delay_percent)}
    if fault.abort_http is not None or fault.abort_grpc is not None:
        abort: dict[str, Any] = {"percentage": _percent(fault.abort_percent)}
        if fault.abort_http is not None:
            abort["http_status"] = fault.abort_http
        else:
            abort["grpc_status"] = fault.abort_grpc
        config["abort"] = abort
    return config


def _cors(cors: Cors) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": CORS_POLICY,
                              "allow_origin_string_match": [_string_match(*m) for m in cors.allow_origins]}
    for field, values in (("allow_methods", cors.allow_methods), ("allow_headers", cors.allow_headers),
                          ("expose_headers", cors.expose_headers)):
        if values:
            config[field] = ",".join(values)
    if cors.max_age_ns is not None:
        config["max_age"] = str(cors.max_age_ns // 10**9)
    if cors.allow_credentials is not None:
        config["allow_credentials"] = cors.allow_credentials
    if cors.forward_unmatched_preflights is not None:
        config["forward_not_matching_preflights"] = cors.forward_unmatched_preflights
    return config


def per_route_filters(text: str) -> frozenset[str]:
    """The PER_ROUTE_FILTERS that some route of a route table's JSON text (or of a virtual host's) configures:
    those whose name stands as a key, which only typed_per_filter_config makes it."""
    return frozenset(name for name in PER_ROUTE_FILTERS if f'"{name}":' in text)


def hash_policy(mesh: Mesh, host: str, subset: str | None, port: int) -> list[dict[str, Any]]:
    """The route side of a consistentHash load balancer: what to hash on."""
    rule = mesh.destination_rules.get(host)
    lb = rule.policy(subset, port).load_balancer if rule else None
    ch = lb.consistent_hash if lb else None
    if ch is None:
        return []
    if ch.header:
        return [{"header": {"header_name": ch.header}}]
    if ch.cookie:
        name, path, ttl_ns = ch.cookie
        cookie: dict[str, Any] = {"name": name}
        if path:
            cookie["path"] = path
        if ttl_ns is not None:
            cookie["ttl"] = envoy_duration(ttl_ns)
        return [{"cookie": cookie}]
    if ch.source_ip:
        return [{"connection_properties": {"source_ip": True}}]
    return [{"query_parameter": {"name": ch.query_parameter}}]


def _clusters(mesh: Mesh, destinations: list[Destination], port: Port) -> dict[str, Any]:
    """Where a route sends requests (http) or connections (tcp): one cluster, or clusters by weight (zero-weight
    destinations left out), each with its destination's header operations."""
    weighted = [(d, outbound_name(_dest_port(mesh, d, port), d.subset, d.host)) for d in destinations if d.weight > 0]
    if len(weighted) == 1:
        return {"cluster": weighted[0][1]}
    return {"weighted_clusters": {"clusters": [{"name": name, "weight": d.weight, **_headers(d.headers)}
                                               for d, name in weighted]}}


def _forward(mesh: Mesh, route: HttpRoute, port: Port) -> dict[str, Any]:
    action: dict[str, Any] = {"timeout": envoy_duration(route.timeout_ns or 0),
                              **_clusters(mesh, route.destinations, port)}
    policy = _retry_policy(route.retries)
    if policy is not None:
        action["retry_policy"] = policy
    first = next((d for d in route.destinations if d.weight > 0), None)
    hashing = hash_policy(mesh, first.host, first.subset, _dest_port(mesh, first, port)) if first else []
    if hashing:
        action["hash_policy"] = hashing
    if route.rewrite is not None:
        if route.rewrite.uri is not None:
            action["prefix_rewrite"] = route.rewrite.uri
        if route.rewrite.regex is not None:
            action["regex_rewrite"] = {"pattern": {"regex": route.rewrite.regex[0]},
                                       "substitution": route.rewrite.regex[1]}
        if route.rewrite.authority is not None:
            action["host_rewrite_literal"] = route.rewrite.authority
    if route.mirrors:
        action["request_mirror_policies"] = [
            {"cluster": outbound_name(_dest_port(mesh, m, port), m.subset, m.host),
             "runtime_fraction": {"default_value": _percent(m.percent)}} for m in route.mirrors]
    return action


def _entry(mesh: Mesh, route: HttpRoute, port: Port) -> dict[str, Any]:
    """Everything of one Istio http route but its match."""
    entry: dict[str, Any] = {}
    if route.redirect is not None:
        r = route.redirect
        redirect: dict[str, Any] = {"response_code": REDIRECT_CODES[r.code]}
        if r.uri is not None:
            redirect["path_redirect"] = r.uri
        if r.authority is not None:
            redirect["host_redirect"] = r.authority
        if r.scheme is not None:
            redirect["scheme_redirect"] = r.scheme
        if r.port is not None:
            redirect["port_redirect"] = r.port
        entry["redirect"] = redirect
    elif route.direct_response is not None:
        status, body = route.direct_response
        entry["direct_response"] = {"status": status, **({"body": {"inline_string": body}} if body is not None else {})}
    else:
        entry["route"] = _forward(mesh, route, port)
    headers = _headers(route.headers)
    if len(route.destinations) == 1:  # a lone destination's header operations apply to the whole route
        for key, value in _headers(route.destinations[0].headers).items():
            headers[key] = headers.get(key, []) + value
    entry.update(headers)
    per_filter = {}
    if route.fault is not None:
        per_filter[FAULT_FILTER] = _fault(route.fault)
    if route.cors is not None:
        per_filter[CORS_FILTER] = _cors(route.cors)
    if per_filter:
        entry["typed_per_filter_config"] = per_filter
    return entry


def default_route(mesh: Mesh, service: Service, port: Port) -> dict[str, Any]:
    """Every host of the service, with Istio's default retries: the route when no VirtualService applies."""
    action = {"cluster": outbound_name(port.number, None, service.fqdn), "timeout": "0s", "retry_policy": DEFAULT_RETRY}
    hashing = hash_policy(mesh, service.fqdn, None, port.number)
    if hashing:
        action["hash_policy"] = hashing
    route = {"name": "default", "match": {"prefix": "/"}, "route": action}
    if mesh.traced:
        route["decorator"] = {"operation": f"{service.fqdn}:{port.number}/*"}
    return route


def http_routes(mesh: Mesh, vs: VirtualService, port: Port, client: Workload,
                gateway: str = MESH_GATEWAY) -> list[dict[str, Any]]:
    """A VirtualService's http routes, in order, as ``client`` on ``gateway`` (or the sidecars) sees them."""
    out = []
    for index, route in enumerate(vs.http):
        matches = [m for m in route.matches if _applies(m, port, client, gateway)] if route.matches else [None]
        if not matches:
            continue
        entry = _entry(mesh, route, port)
        name = route.name or f"{vs.doc.name}.{index}"
        for match in matches:
            envoy_match = _route_match(match)
            decorated = {"decorator": {"operation": _operation(vs, port, envoy_match, entry)}} if mesh.traced else {}
            out.append({"name": name, "match": envoy_match, **entry, **decorated})
    return out


def _operation(vs: VirtualService, port: Port, match: dict[str, Any], entry: dict[str, Any]) -> str:
    """The span name of a VirtualService route, as Istio gives it: the one destination's host:port, else the
    VirtualService's name and the port, then the path matched (a prefix with *, a regex as written)."""
    if "path" in match:
        path = match["path"]
    elif "safe_regex" in match:
        path = match["safe_regex"]["regex"]
    else:
        path = match.get("prefix", "/") + "*"
    parts = (entry.get("route") or {}).get("cluster", "").split("|")
    if len(parts) == 4 and parts[0] == "outbound":
        return f"{parts[3]}:{parts[1]}{path}"
    return f"{vs.doc.name}:{port.number}{path}"


def domains(service: Service, port: int, namespace: str) -> list[str]:
    """The Host header values that name ``service`` on ``port`` for a caller in ``namespace``, bare and with the
    port, as in Istio's outbound virtual hosts: each of its names (the short one only in its own namespace) and its
    address; for a ServiceEntry host, its name and the single addresses (/32) it gives."""
    if service.vip:
        names = service.names_for(namespace) + [service.vip]
    else:
        names = [service.fqdn] + [a.split("/")[0] for a in service.entry.addresses if a.endswith("/32")]
    return [d for name in names for d in (name, f"{name}:{port}")]


def outbound_vhost(mesh: Mesh, service: Service, port: Port, client: Workload) -> dict[str, Any]:
    """The virtual host ``client`` uses for ``service`` on ``port``: its VirtualService in order, else all its
    hosts."""
    vs = mesh.virtual_services.get(service.fqdn)
    return {"name": f"{service.fqdn}:{port.number}", "domains": domains(service, port.number, client.namespace),
            "routes": http_routes(mesh, vs, port, client) if vs else [default_route(mesh, service, port)]}


def fallback_vhost(policy: str) -> dict[str, Any]:
    """Any other Host on the port: on to where the app was going (ALLOW_ANY) or 502 (REGISTRY_ONLY), as Istio's
    allow_any and block_all virtual hosts."""
    if policy == "ALLOW_ANY":
        return {"name": "allow_any", "domains": ["*"], "routes": [
            {"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": PASSTHROUGH, "timeout": "0s"}}]}
    return {"name": "block_all", "domains": ["*"], "routes": [
        {"name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}]}


def without_taken(vhost: dict[str, Any], taken: set[str]) -> dict[str, Any] | None:
    """``vhost`` without the domains an earlier virtual host of its table has (Envoy refuses a domain twice in one
    table: the first service keeps a name two answer to); None when none is left. Adds its domains to ``taken``."""
    left = [d for d in vhost["domains"] if d not in taken]
    taken.update(left)
    if len(left) == len(vhost["domains"]):
        return vhost
    return {**vhost, "domains": left} if left else None


def port_table(number: int, vhosts: list[dict[str, Any]], policy: str) -> dict[str, Any]:
    """The route table of an outbound HTTP port, shared by every service on it (Istio's route "PORT"): a virtual
    host each, told apart by the Host header, then the fallback."""
    taken: set[str] = set()
    kept = [v for v in (without_taken(vhost, taken) for vhost in vhosts) if v is not None]
    return {"name": str(number), "virtual_hosts": kept + [fallback_vhost(policy)]}


def tcp_filter(stat_prefix: str, target: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": stat_prefix, **target}}


def tcp_target(mesh: Mesh, vs: VirtualService | None, port: Port, client: Workload,
               gateway: str = MESH_GATEWAY) -> dict[str, Any] | None:
    """The first VirtualService tcp route whose match applies to this caller, port and gateway."""
    for route in vs.tcp if vs else []:
        if not route.matches or any(_applies(m, port, client, gateway) for m in route.matches):
            return _clusters(mesh, route.destinations, port)  # tcp destinations carry no header operations
    return None


def sni_routes(mesh: Mesh, vs: VirtualService | None, port: Port, client: Workload,
               gateway: str = MESH_GATEWAY) -> list[tuple[list[str], dict[str, Any]]]:
    """VirtualService tls routes: (server names, where connections with them go), first match first."""
    out: list[tuple[list[str], dict[str, Any]]] = []
    taken: set[str] = set()
    for route in vs.tls if vs else []:
        for match in route.matches:
            names = [n for n in match.sni_hosts if n not in taken]
            if names and _applies(match, port, client, gateway):
                taken |= set(names)
                out.append((names, _clusters(mesh, route.destinations, port)))
    return out


def tcp_proxy_for(mesh: Mesh, service: Service, port: Port, client: Workload, stat_prefix: str) -> dict[str, Any]:
    """A TCP port: the first VirtualService tcp route that applies, else all the service's hosts."""
    target = tcp_target(mesh, mesh.virtual_services.get(service.fqdn), port, client)
    return tcp_filter(stat_prefix, target or {"cluster": outbound_name(port.number, None, service.fqdn)})


def inbound(port: Port) -> dict[str, Any]:
    name = inbound_name(port.number)
    return {"name": name, "virtual_hosts": [{"name": f"inbound|http|{port.number}", "domains": ["*"], "routes": [
        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": name, "timeout": "0s"}}]}]}
