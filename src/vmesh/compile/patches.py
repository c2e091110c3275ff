"""Apply EnvoyFilter patches to one host's generated listeners and route tables."""

from __future__ import annotations

import copy
from typing import Any

from vmesh.compile.envoy_types import HCM
from vmesh.istio.model import Mesh
from vmesh.istio.envoyfilter import Patch, applies_to, merge
from vmesh.registry import Workload

DIRECTIONS = {"virtualOutbound": "SIDECAR_OUTBOUND", "virtualInbound": "SIDECAR_INBOUND"}
ROUTER = "envoy.filters.http.router"


def _context_ok(patch: Patch, context: str) -> bool:
    return patch.context in ("ANY", context)


def _http_filters(patch: Patch, filters: list[dict[str, Any]]) -> None:
    names = [f.get("name") for f in filters]
    if patch.operation == "REMOVE":
        filters[:] = [f for f in filters if f.get("name") != patch.sub_filter]
        return
    value = copy.deepcopy(patch.value)
    if patch.operation == "INSERT_FIRST":
        filters.insert(0, value)
    elif patch.operation == "ADD":  # before the router, which must stay last
        filters.insert(names.index(ROUTER) if ROUTER in names else len(filters), value)
    elif patch.sub_filter in names:
        index = names.index(patch.sub_filter)
        filters.insert(index if patch.operation == "INSERT_BEFORE" else index + 1, value)


def _listener_context(name: str) -> str:
    return "GATEWAY" if name.startswith("0.0.0.0_") else DIRECTIONS.get(name, "")


def _listeners(patch: Patch, lds: list[dict[str, Any]]) -> None:
    for listener in lds:
        if not _context_ok(patch, _listener_context(listener["name"])):
            continue
        for chain in listener["filter_chains"]:
            port = chain.get("filter_chain_match", {}).get("destination_port",
                                                           listener["address"]["socket_address"]["port_value"])
            if patch.port is not None and port != patch.port:
                continue
            for flt in chain["filters"]:
                if flt["typed_config"].get("@type") == HCM:
                    _http_filters(patch, flt["typed_config"]["http_filters"])


def _route_action(route: dict[str, Any]) -> str:
    return "REDIRECT" if "redirect" in route else "DIRECT_RESPONSE" if "direct_response" in route else "ROUTE"


def _routes(patch: Patch, rds: dict[str, dict[str, Any]]) -> None:
    for name, config in rds.items():
        if name.startswith(("http.", "https.")):  # a Gateway's route tables: http.8080, https.443.<server>
            context, port = "GATEWAY", name.split(".")[1]
        else:
            context = "SIDECAR_INBOUND" if name.startswith("inbound|") else "SIDECAR_OUTBOUND"
            port = name.split("|")[1] if "|" in name else name
        if not _context_ok(patch, context):
            continue
        if patch.port is not None and port != str(patch.port):
            continue
        for vhost in config["virtual_hosts"]:
            if patch.vhost is not None and vhost["name"] != patch.vhost:
                continue
            if patch.apply_to == "VIRTUAL_HOST":
                if patch.operation == "MERGE":
                    merge(vhost, patch.value)
                else:
                    vhost["routes"] = []
                continue
            kept = []
            for route in vhost["routes"]:
                selected = (patch.route_name in (None, route.get("name"))
                            and patch.route_action in ("ANY", _route_action(route)))
                if selected and patch.operation == "REMOVE":
                    continue
                if selected:
                    merge(route, patch.value)
                kept.append(route)
            vhost["routes"] = kept
        config["virtual_hosts"] = [v for v in config["virtual_hosts"] if v.get("routes")]


def apply(mesh: Mesh, workload: Workload, lds: list[dict[str, Any]], rds: dict[str, dict[str, Any]]) -> None:
    """The EnvoyFilters that select this host, root namespace first, each in document order."""
    filters = [f for f in mesh.envoy_filters if applies_to(f, workload.namespace, workload.labels)]
    filters.sort(key=lambda f: f.doc.namespace != "istio-system")
    for flt in filters:
        for patch in flt.patches:
            if patch.apply_to == "HTTP_FILTER":
                _listeners(patch, lds)
            else:
                _routes(patch, rds)
