"""Route configurations: VirtualService http rules for one service port, and the inbound catch-all."""

from __future__ import annotations

from typing import Any

from vmesh.compile.clusters import inbound_name, outbound_name
from vmesh.compile.envoy_types import PREVIOUS_HOSTS
from vmesh.istio import Mesh
from vmesh.istio.fields import envoy_duration
from vmesh.istio.virtualservice import Destination, HttpMatch, HttpRoute, Retries
from vmesh.registry import Port, Service

# Istio's default retry policy for every HTTP route without `retries`.
DEFAULT_RETRY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retriable_status_codes": [503],
    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                              "typed_config": {"@type": PREVIOUS_HOSTS}}],
    "host_selection_retry_max_attempts": "5",
}


def _string_match(kind: str, value: str) -> dict[str, Any]:
    return {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}


def _route_match(match: HttpMatch | None) -> dict[str, Any]:
    out: dict[str, Any] = {"prefix": "/"}
    if match is None:
        return out
    if match.uri is not None:
        kind, value = match.uri
        out = {"path": value} if kind == "exact" else _string_match(kind, value)
    headers = []
    for name, value in match.headers:
        if value is None:
            headers.append({"name": name, "present_match": True})
        else:
            headers.append({"name": name, "string_match": _string_match(*value)})
    if headers:
        out["headers"] = headers
    return out


def _dest_port(mesh: Mesh, dest: Destination, port: Port) -> int:
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


def _action(mesh: Mesh, route: HttpRoute, port: Port) -> dict[str, Any]:
    weighted = [(outbound_name(_dest_port(mesh, d, port), d.subset, d.host), d.weight)
                for d in route.destinations if d.weight > 0]
    action: dict[str, Any] = {"timeout": envoy_duration(route.timeout_ns or 0)}
    policy = _retry_policy(route.retries)
    if policy is not None:
        action["retry_policy"] = policy
    if len(weighted) == 1:
        action["cluster"] = weighted[0][0]
    else:
        action["weighted_clusters"] = {"clusters": [{"name": name, "weight": weight} for name, weight in weighted]}
    return action


def outbound_name_for(service: Service, port: Port) -> str:
    return outbound_name(port.number, None, service.fqdn)


def outbound(mesh: Mesh, service: Service, port: Port) -> dict[str, Any]:
    """The routes for calls to ``service`` on ``port``: its VirtualService in order, else all its hosts."""
    vs = mesh.virtual_services.get(service.fqdn)
    routes = []
    if vs is None:
        routes.append({"name": "default", "match": {"prefix": "/"},
                       "route": {"cluster": outbound_name(port.number, None, service.fqdn), "timeout": "0s",
                                 "retry_policy": DEFAULT_RETRY}})
    else:
        for index, route in enumerate(vs.http):
            action = _action(mesh, route, port)
            name = route.name or f"{vs.doc.name}.{index}"
            for match in route.matches or [None]:
                routes.append({"name": name, "match": _route_match(match), "route": action})
    name = outbound_name_for(service, port)
    return {"name": name, "virtual_hosts": [{"name": f"{service.fqdn}:{port.number}", "domains": ["*"],
                                             "routes": routes}]}


def inbound(port: Port) -> dict[str, Any]:
    name = inbound_name(port.number)
    return {"name": name, "virtual_hosts": [{"name": f"inbound|http|{port.number}", "domains": ["*"], "routes": [
        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": name, "timeout": "0s"}}]}]}
