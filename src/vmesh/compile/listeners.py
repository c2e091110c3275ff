"""Listeners: outbound capture (15001), inbound capture (15006), and the proxy's own readiness/stats ports."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping

from vmesh.compile import mtls, probes, rbac, routes, telemetry
from vmesh.compile.envoy_types import (BLACKHOLE, CORS, HCM, HTTP_FAULT, INBOUND_PASSTHROUGH, LISTENER, ORIGINAL_DST,
                                       PASSTHROUGH, ROUTER, TLS_INSPECTOR, file_source, resource_file,
                                       socket_address, tcp_proxy, typed)
from vmesh.errors import MeshError
from vmesh.istio.model import Mesh
from vmesh.names import inbound_name, outbound_name
from vmesh.istio.telemetry import Side
from vmesh.registry import Port, Registry, Service, Workload

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
ADMIN_PORT = 15000
READINESS_PORT = 15021
STATS_PORT = 15090
# What the Lua filter on 15090 may hold of a scrape: Envoy's whole output, then Istio's metrics written from it,
# whose labels make it grow with every response code, flag and peer a proxy has seen (a Bookinfo VM passes 1 MiB,
# Envoy's default, after a few faults: the scrape then fails with 500 and its metrics are gone). Used only while a
# scrape is in flight.
STATS_BUFFER_BYTES = 64 * 1024 * 1024
ADMIN_CLUSTER = "vmesh_admin"
_PER_ROUTE_TYPES = {routes.FAULT_FILTER: HTTP_FAULT, routes.CORS_FILTER: CORS}


@dataclasses.dataclass(frozen=True)
class HttpNeeds:
    """What an outbound connection manager does besides routing, each only where something needs it (a sidecar
    pays for every filter and stat on every request it sends):

    - ``filters``: the HTTP filters its routes configure (routes.PER_ROUTE_FILTERS: fault, CORS). A route table
      that gains its first fault or CORS policy therefore changes the port's filter chain too: Envoy drains the
      chain's open connections (their requests complete) and new ones get the filter.
    - ``dynamic_stats``: the router records per-code counts and request times of each cluster it sends to
      (Envoy's dynamic stats: several stat lookups per request). A canary rollout is judged on them, so they are
      on where the table routes to a service under a declared rollout (Mesh.measured); elsewhere Istio's
      metrics count the calls, and Istio's default stats matcher drops these.
    """

    filters: frozenset[str] = frozenset()
    dynamic_stats: bool = False


# Istio's shape, every filter and stat: a Gateway's connection managers (their route tables gather several
# Gateways' VirtualServices) and the sidecars EnvoyFilters patch (a patch may name the filters or add a fault)
ALL_NEEDS = HttpNeeds(frozenset(routes.PER_ROUTE_FILTERS), True)


def _hcm(stat_prefix: str, route_name: str | None, workload: Workload, *, inbound: bool,
         route_config: dict[str, Any] | None = None, side: Side | None = None,
         trace: tuple[Registry, str | None] | None = None, needs: HttpNeeds = HttpNeeds()) -> dict[str, Any]:
    """``side``: what this side of the proxy records (None: nothing, the proxy's own ports); ``trace``: the
    registry and the span name (None: the routes' decorators name the spans), where the side has a tracer;
    ``needs``: the filters and stats besides routing (an inbound router, with one local app behind it, needs
    none)."""
    router = typed("envoy.filters.http.router", ROUTER, **({} if needs.dynamic_stats else {"dynamic_stats": False}))
    config: dict[str, Any] = {
        "stat_prefix": stat_prefix,
        "http_filters": [typed(name, _PER_ROUTE_TYPES[name]) for name in routes.PER_ROUTE_FILTERS
                         if name in needs.filters] + [router],
        "upgrade_configs": [{"upgrade_type": "websocket"}],  # use_remote_address: false by default
    }
    if route_config is not None:
        config["route_config"] = route_config
    else:
        config["rds"] = {"route_config_name": route_name,
                         "config_source": file_source(workload.config_dir, resource_file("rds", route_name))}
    if inbound:
        config["server_header_transformation"] = "PASS_THROUGH"
        # the caller's x-request-id goes on to the app: one id in both sides' access logs and spans (Envoy takes
        # no address as internal by default, so it would make a new one)
        if side is not None:
            config["preserve_external_request_id"] = True
    if side is not None:
        logs = [telemetry.access_log(log) for log in side.logs]
        stats = telemetry.http_stats(inbound=inbound, side=side)
        if logs or stats:
            config["access_log"] = logs + ([stats] if stats else [])
        tracing = telemetry.tracing(side, workload, *trace) if trace else None
        if tracing:
            config["tracing"] = tracing
    return typed("envoy.filters.network.http_connection_manager", HCM, **config)


def tracing_service(registry: Registry, workload: Workload) -> str:
    """The host name in this workload's own spans (Istio: its service's FQDN)."""
    return registry.fqdn(workload.service, workload.namespace) if workload.service else workload.host


def _listener(name: str, port: int, direction: str, chains: list[dict[str, Any]], default: str,
              sni_ports: list[int] | None = None) -> dict[str, Any]:
    """``sni_ports``: the destination ports where the TLS inspector reads the client hello (SNI, ALPN)."""
    blackhole = {"name": f"{name}-blackhole", "filter_chain_match": {"destination_port": port},
                 "filters": [tcp_proxy(BLACKHOLE, BLACKHOLE)]}
    listener_filters = [typed("envoy.filters.listener.original_dst", ORIGINAL_DST)]
    if sni_ports:
        # the TLS inspector reads the client hello only on ports routed by SNI: elsewhere it would wait for bytes
        # a server-first protocol never sends
        ranges = [{"destination_port_range": {"start": p, "end": p + 1}} for p in sni_ports]
        on = ranges[0] if len(ranges) == 1 else {"or_match": {"rules": ranges}}
        listener_filters.append({**typed("envoy.filters.listener.tls_inspector", TLS_INSPECTOR),
                                 "filter_disabled": {"not_match": on}})
    return {
        "@type": LISTENER,
        "name": name,
        "address": socket_address("0.0.0.0", port),
        "traffic_direction": direction,
        "listener_filters": listener_filters,
        "filter_chains": chains + [blackhole],
        "default_filter_chain": {"name": f"{name}-passthrough", "filters": [tcp_proxy(default, default)]},
    }


def edge_hcm(mesh: Mesh, stat_prefix: str, route_name: str, workload: Workload,
             authorization: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """A Gateway's HTTP connection manager: the edge of the mesh, so it sets X-Forwarded-For itself; the
    AuthorizationPolicies selecting the gateway host apply here (before routing). It records as a client does
    (Istio's reporter "source")."""
    hcm = _hcm(stat_prefix, route_name, workload, inbound=False, side=mesh.telemetry(workload, "client"),
               trace=(mesh.registry, None), needs=ALL_NEEDS)
    hcm["typed_config"].update(use_remote_address=True, strip_any_host_port=True, normalize_path=True)
    hcm["typed_config"]["http_filters"][0:0] = list(authorization)
    return hcm


def _service_chains(mesh: Mesh, service: Service, port: Port, workload: Workload, match: dict[str, Any],
                    sni_ports: set[int]) -> list[dict[str, Any]]:
    """The filter chains of one TCP or TLS service port: TCP routes, or TLS routes by SNI."""
    name = outbound_name(port.number, None, service.fqdn)
    stat_prefix = f"outbound_{service.vip}_{port.number}" if service.vip else name
    side = mesh.telemetry(workload, "client")
    chains = []
    if port.protocol == "tls":
        vs = mesh.virtual_services.get(service.fqdn)
        for names, target in routes.sni_routes(mesh, vs, port, workload):
            chains.append({"name": f"{name}~{names[0]}", "filter_chain_match": {**match, "server_names": names},
                           "filters": [telemetry.tcp_telemetry(routes.tcp_filter(stat_prefix, target), inbound=False,
                                                           side=side)]})
        if service.vip == "" and not service.entry.addresses:  # no address to tell it by: only its name
            match = {**match, "server_names": [service.fqdn]}
        if chains or "server_names" in match:
            sni_ports.add(port.number)
    chains.append({"name": name, "filter_chain_match": match,
                   "filters": [telemetry.tcp_telemetry(routes.tcp_proxy_for(mesh, service, port, workload, stat_prefix),
                                                   inbound=False, side=side)]})
    return chains


def outbound(mesh: Mesh, services: list[Service], workload: Workload, policy: str,
             needs: Mapping[int, HttpNeeds]) -> dict[str, Any]:
    """The outbound listener: filter chains found by the original destination of the redirected call.

    An HTTP port has one chain for all its services, as in Istio: the addresses of those on it (VIPs, a
    ServiceEntry's addresses) lead to one connection manager and the port's route table, where the Host header
    picks the service (routes.port_table). A ServiceEntry host without addresses on it makes the chain take the
    port whatever the address. A TCP or TLS service port has chains of its own, by address, else by port or TLS
    server name. Anything else passes through to where it was going (ALLOW_ANY) or is refused (REGISTRY_ONLY).
    ``needs``: per HTTP port, what its connection manager needs besides routing.
    """
    chains: list[dict[str, Any]] = []
    sni_ports: set[int] = set()
    http: dict[int, list[dict[str, Any]]] = {}  # HTTP port -> the addresses of its services
    any_address: dict[int, Service] = {}  # HTTP port -> the first ServiceEntry host without addresses on it
    by_port_tcp: dict[int, Service] = {}
    for service in services:
        for port in service.ports:
            if service.vip:
                prefixes = [{"address_prefix": service.vip, "prefix_len": 32}]
            else:
                prefixes = [{"address_prefix": cidr.split("/")[0], "prefix_len": int(cidr.split("/")[1])}
                            for cidr in service.entry.addresses]
            if port.is_http:
                known = http.setdefault(port.number, [])
                known += [p for p in prefixes if p not in known]
                if not prefixes:
                    any_address.setdefault(port.number, service)
                continue
            if prefixes:
                match = {"prefix_ranges": prefixes, "destination_port": port.number}
            else:
                match = {"destination_port": port.number}
                if port.protocol == "tcp":
                    other = by_port_tcp.setdefault(port.number, service)
                    if other is not service:
                        doc = service.entry.doc
                        raise MeshError(f"TCP port {port.number} without addresses is already claimed by "
                                        f"{other.fqdn} ({other.entry.doc.ref}): give one of them addresses",
                                        file=doc.file, doc=doc.ref, field="spec.addresses")
            chains += _service_chains(mesh, service, port, workload, match, sni_ports)
    for number, prefixes in sorted(http.items()):
        if number in any_address and number in by_port_tcp:
            doc = any_address[number].entry.doc
            raise MeshError(f"port {number} is HTTP here and TCP in {by_port_tcp[number].entry.doc.ref}; without "
                            "addresses one port carries one protocol", file=doc.file, doc=doc.ref, field="spec.ports")
        match = {"destination_port": number} if number in any_address else \
            {"prefix_ranges": prefixes, "destination_port": number}
        chains.append({"name": f"0.0.0.0_{number}", "filter_chain_match": match,
                       "filters": [_hcm(f"outbound_0.0.0.0_{number}", str(number), workload, inbound=False,
                                        side=mesh.telemetry(workload, "client"), trace=(mesh.registry, None),
                                        needs=needs[number])]})
    default = PASSTHROUGH if policy == "ALLOW_ANY" else BLACKHOLE
    return _listener("virtualOutbound", OUTBOUND_PORT, "OUTBOUND", chains, default, sorted(sni_ports))


def authorization_filters(mesh: Mesh, workload: Workload, port: Port) -> list[dict[str, Any]]:
    """The RBAC filters of the AuthorizationPolicies that apply to ``workload``, for one of its ports: HTTP
    filters on an HTTP port, network filters otherwise."""
    policies = mesh.authorization_for(workload)
    if not policies:
        return []
    build = rbac.http_filters if port.is_http else rbac.network_filters
    return build(policies, port, mesh.registry.trust_domain)


def _inbound_filters(mesh: Mesh, workload: Workload, port: Port, stat_prefix: str,
                     authorization: list[dict[str, Any]], *, secure: bool) -> list[dict[str, Any]]:
    name = inbound_name(port.number)
    authorization = copy.deepcopy(authorization)  # each chain owns its filters (EnvoyFilter patches edit them)
    if not port.is_http:
        return authorization + [telemetry.tcp_telemetry(tcp_proxy(stat_prefix, name), inbound=True,
                                                    side=mesh.telemetry(workload, "server"))]
    hcm = _hcm(stat_prefix, name, workload, inbound=True, side=mesh.telemetry(workload, "server"),
               trace=(mesh.registry, f"{tracing_service(mesh.registry, workload)}:{port.number}/*"))
    filters = hcm["typed_config"]["http_filters"]
    filters[-1:-1] = authorization  # before the router
    # Istio's default path normalization: /a/../admin is /admin for the policies and the app alike
    hcm["typed_config"]["normalize_path"] = True
    # the app learns its caller's identity from X-Forwarded-Client-Cert; a plaintext caller cannot forge it
    hcm["typed_config"]["forward_client_cert_details"] = "APPEND_FORWARD" if secure else "SANITIZE"
    if secure:
        hcm["typed_config"]["set_current_client_cert_details"] = {"uri": True}
    return [hcm]


def inbound(mesh: Mesh, workload: Workload) -> dict[str, Any]:
    """Filter chains per port this host serves, by its PeerAuthentication mode: mTLS from mesh clients (told by
    their ALPN), plaintext, or both (PERMISSIVE). Undeclared ports pass through to where the call was going,
    unless the workload is STRICT, where only mesh clients get in and they only call declared ports."""
    chains = []
    inspected = []
    for port in workload.ports:
        name = inbound_name(port.number)
        stat_prefix = f"inbound_0.0.0.0_{port.number}"
        mode = mesh.mtls_mode(workload, port.target_port)
        authorization = authorization_filters(mesh, workload, port)
        match: dict[str, Any] = {"destination_port": port.number}
        if mode != "DISABLE":
            inspected.append(port.number)
            chains.append({"name": f"{name}~mtls", "transport_socket": mtls.downstream(workload, mesh.registry,
                                                                                        port.is_http),
                           "filter_chain_match": {**match, "transport_protocol": "tls",
                                                  "application_protocols": mtls.ISTIO_ALPNS},
                           "filters": _inbound_filters(mesh, workload, port, stat_prefix, authorization, secure=True)})
        if mode == "STRICT":
            refused = [tcp_proxy(f"{stat_prefix}_plaintext_refused", BLACKHOLE)]
            chains.append({"name": f"{name}~refused", "filter_chain_match": match, "filters": refused})
            chains.append({"name": f"{name}~refused-tls", "filter_chain_match": {**match, "transport_protocol": "tls"},
                           "filters": refused})
            continue
        plaintext = _inbound_filters(mesh, workload, port, stat_prefix, authorization, secure=False)
        chains.append({"name": name, "filter_chain_match": match, "filters": plaintext})
        if mode == "PERMISSIVE":  # a client's own TLS (not the mesh's) reaches the app as it is
            chains.append({"name": f"{name}~tls", "filter_chain_match": {**match, "transport_protocol": "tls"},
                           "filters": copy.deepcopy(plaintext)})
    strict = mesh.mtls_mode(workload, None) == "STRICT"
    listener = _listener("virtualInbound", INBOUND_PORT, "INBOUND", chains,
                         BLACKHOLE if strict else INBOUND_PASSTHROUGH, inspected)
    if inspected:
        # a server-first protocol under PERMISSIVE sends nothing to inspect: after a second it is plaintext
        listener["listener_filters_timeout"] = "1s"
        listener["continue_on_listener_filters_timeout"] = True
    return listener


def _admin_proxy(name: str, port: int, path: str, target: str, workload: Workload,
                 filters: list[dict[str, Any]] = (), buffer_bytes: int | None = None) -> dict[str, Any]:
    route_config = {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
        {"match": {"path": path}, "route": {"cluster": ADMIN_CLUSTER, "prefix_rewrite": target, "timeout": "5s"}}]}]}
    hcm = _hcm(name, None, workload, inbound=True, route_config=route_config)
    hcm["typed_config"]["http_filters"][0:0] = list(filters)
    listener = {"name": name, "address": socket_address("0.0.0.0", port), "filter_chains": [{"filters": [hcm]}]}
    if buffer_bytes is not None:
        listener["per_connection_buffer_limit_bytes"] = buffer_bytes
    return listener


def static(workload: Workload) -> list[dict[str, Any]]:
    """Readiness on 15021 (/healthz/ready, Envoy's /ready; with vmesh_probe, /healthz/probe: probes.py) and
    Prometheus stats on 15090, with Istio's metrics written from Envoy's (telemetry.py); admin stays local."""
    return [
        _admin_proxy("vmesh_readiness", READINESS_PORT, "/healthz/ready", "/ready", workload,
                     probes.readiness_filter(workload.probe)),
        _admin_proxy("vmesh_prometheus", STATS_PORT, "/stats/prometheus", "/stats/prometheus", workload,
                     [telemetry.lua_filter(workload.config_dir)], buffer_bytes=STATS_BUFFER_BYTES),
    ]
