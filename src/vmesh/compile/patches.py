"""Apply EnvoyFilter patches to one host's generated listeners, route tables and clusters."""

from __future__ import annotations

import copy
from typing import Any, Callable

from vmesh.compile.envoy_types import CLUSTER, HCM
from vmesh.istio.envoyfilter import EnvoyFilter, Patch, applies_to, merge
from vmesh.istio.model import Mesh
from vmesh.registry import Workload

# where an added cluster names a mesh service, what it takes from the mesh's own cluster for that service port
DISCOVERY = ("type", "eds_cluster_config", "load_assignment", "dns_lookup_family", "respect_dns_ttl")
TRANSPORT = ("transport_socket", "transport_socket_matches")
HTTP2 = ("typed_extension_protocol_options", "http2_protocol_options")

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


def selected(mesh: Mesh, workload: Workload) -> list[EnvoyFilter]:
    """The EnvoyFilters that select this host, root namespace first, each in document order."""
    filters = [f for f in mesh.envoy_filters if applies_to(f, workload.namespace, workload.labels)]
    filters.sort(key=lambda f: f.doc.namespace != "istio-system")
    return filters


def apply(filters: list[EnvoyFilter], lds: list[dict[str, Any]], rds: dict[str, dict[str, Any]]) -> None:
    """The listener and route patches of ``filters`` (those that select this host, as ``selected`` gives them), in
    order."""
    for flt in filters:
        for patch in flt.patches:
            if patch.apply_to == "HTTP_FILTER":
                _listeners(patch, lds)
            elif patch.apply_to in ("HTTP_ROUTE", "VIRTUAL_HOST"):
                _routes(patch, rds)


def _cluster_contexts(name: str, gateway: bool) -> tuple[str, ...]:
    if name.startswith("inbound|"):
        return ("SIDECAR_INBOUND",)
    # a host that runs a Gateway sends to the same outbound clusters from its gateway and its sidecar
    return ("GATEWAY", "SIDECAR_OUTBOUND") if gateway else ("SIDECAR_OUTBOUND",)


def clusters(filters: list[EnvoyFilter], cds: list[dict[str, Any]], *, gateway: bool,
             mesh_cluster: Callable[[str, int], dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The CLUSTER patches of ``filters`` on this host's clusters, in order: MERGE and REMOVE change the clusters
    they match; ADD appends one. An added cluster whose endpoint is a mesh service's name and port
    (``ratelimit.default.svc.cluster.local:8081``, as Istio's samples write it) reaches that service as the mesh
    does: its endpoints from the registry and mTLS where the mesh has it (``mesh_cluster(name, port)``: the mesh's
    own cluster for that service port, None when the name is no mesh service's)."""
    out = list(cds)
    for flt in filters:
        for patch in flt.patches:
            if patch.apply_to != "CLUSTER":
                continue
            if patch.operation == "ADD":
                if patch.context in ("ANY", "SIDECAR_OUTBOUND") or (patch.context == "GATEWAY" and gateway):
                    added = _added_cluster(flt, patch, mesh_cluster)
                    if any(c["name"] == added["name"] for c in out):
                        raise flt.doc.error(f"{patch.where}.patch.value.name",
                                            f"this host already has a cluster named {added['name']!r}")
                    out.append(added)
                continue
            kept = []
            for cluster in out:
                hit = (patch.context == "ANY" or patch.context in _cluster_contexts(cluster["name"], gateway)) \
                    and (patch.cluster is None or patch.cluster.matches(cluster["name"]))
                if hit and patch.operation == "REMOVE":
                    continue
                if hit:
                    cluster = copy.deepcopy(cluster)
                    merge(cluster, patch.value)
                kept.append(cluster)
            out = kept
    return out


def _added_cluster(flt: EnvoyFilter, patch: Patch,
                   mesh_cluster: Callable[[str, int], dict[str, Any] | None]) -> dict[str, Any]:
    cluster = {"@type": CLUSTER, **copy.deepcopy(patch.value)}
    found = [(host, port, mesh_cluster(host, port)) for host, port in _socket_addresses(cluster)]
    in_mesh = [(host, port, own) for host, port, own in found if own is not None]
    if not in_mesh:
        return cluster
    if len(found) > 1:
        raise flt.doc.error(f"{patch.where}.patch.value.load_assignment",
                            f"{in_mesh[0][0]}:{in_mesh[0][1]} is a mesh service: vmesh takes its endpoints from "
                            "the inventory, so it must be the cluster's only endpoint")
    own = in_mesh[0][2]
    for field in DISCOVERY:  # where the endpoints come from: the mesh's, kept current as hosts come and go
        cluster.pop(field, None)
        if field in own:
            cluster[field] = copy.deepcopy(own[field])
    if "eds_cluster_config" in cluster:  # the mesh's endpoints file names the mesh's cluster
        cluster["eds_cluster_config"].setdefault("service_name", own["name"])
    if not any(field in cluster for field in TRANSPORT):  # the mesh's mTLS, unless the patch chose its own
        cluster.update({field: copy.deepcopy(own[field]) for field in TRANSPORT if field in own})
    if "typed_extension_protocol_options" in own and not any(field in cluster for field in HTTP2):
        cluster["typed_extension_protocol_options"] = copy.deepcopy(own["typed_extension_protocol_options"])
    return cluster


def _socket_addresses(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    """(address, port) of each endpoint of a cluster as a patch wrote it; what is not shaped as Envoy's
    load_assignment gives nothing here (``envoy --mode validate`` names it)."""
    def field(value: Any, name: str, kind: type) -> Any:
        found = value.get(name) if isinstance(value, dict) else None
        return found if isinstance(found, kind) else kind()

    out = []
    for group in field(field(cluster, "load_assignment", dict), "endpoints", list):
        for lb in field(group, "lb_endpoints", list):
            socket = field(field(field(lb, "endpoint", dict), "address", dict), "socket_address", dict)
            host, port = socket.get("address"), socket.get("port_value")
            out.append((host if isinstance(host, str) else "",
                        port if isinstance(port, int) and not isinstance(port, bool) else 0))
    return out
