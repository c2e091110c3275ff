"""Listeners: outbound capture (15001), inbound capture (15006), and the proxy's own readiness/stats ports."""

from __future__ import annotations

import re
from typing import Any

from vmesh.compile import clusters, routes
from vmesh.compile.envoy_types import (BLACKHOLE, CORS, HCM, HTTP_FAULT, INBOUND_PASSTHROUGH, LISTENER, ORIGINAL_DST, PASSTHROUGH,
                                       ROUTER, access_logs, file_source, socket_address, tcp_proxy, typed)
from vmesh.istio import Mesh
from vmesh.registry import Service, Workload

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
ADMIN_PORT = 15000
READINESS_PORT = 15021
STATS_PORT = 15090
ADMIN_CLUSTER = "vmesh_admin"


def route_file(route_name: str) -> str:
    """The file that holds one RouteConfiguration (Envoy's filesystem RDS reads one resource per file)."""
    return "rds_" + re.sub(r"[^A-Za-z0-9.-]", "_", route_name) + ".json"


def _hcm(stat_prefix: str, route_name: str | None, workload: Workload, *, inbound: bool,
         route_config: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "stat_prefix": stat_prefix,
        # fault and CORS take their settings per route, so adding a fault changes only the routes (no drain)
        "http_filters": ([] if inbound else [typed("envoy.filters.http.fault", HTTP_FAULT),
                                              typed("envoy.filters.http.cors", CORS)])
                        + [typed("envoy.filters.http.router", ROUTER)],
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "use_remote_address": False,
    }
    if route_config is not None:
        config["route_config"] = route_config
    else:
        config["rds"] = {"route_config_name": route_name,
                         "config_source": file_source(workload.config_dir, route_file(route_name))}
    if inbound:
        config["server_header_transformation"] = "PASS_THROUGH"
    logs = access_logs(workload.access_log)
    if logs:
        config["access_log"] = logs
    return typed("envoy.filters.network.http_connection_manager", HCM, **config)


def _listener(name: str, port: int, direction: str, chains: list[dict[str, Any]], default: str) -> dict[str, Any]:
    blackhole = {"name": f"{name}-blackhole", "filter_chain_match": {"destination_port": port},
                 "filters": [tcp_proxy(BLACKHOLE, BLACKHOLE)]}
    return {
        "@type": LISTENER,
        "name": name,
        "address": socket_address("0.0.0.0", port),
        "traffic_direction": direction,
        "listener_filters": [typed("envoy.filters.listener.original_dst", ORIGINAL_DST)],
        "filter_chains": chains + [blackhole],
        "default_filter_chain": {"name": f"{name}-passthrough", "filters": [tcp_proxy(default, default)]},
    }


def outbound(mesh: Mesh, services: list[Service], workload: Workload, policy: str = "ALLOW_ANY") -> dict[str, Any]:
    """One filter chain per service VIP and port, found by the original destination of the redirected call.

    Anything else passes through to where it was going (ALLOW_ANY) or is refused (REGISTRY_ONLY).
    """
    chains = []
    for service in services:
        for port in service.ports:
            name = clusters.outbound_name(port.number, None, service.fqdn)
            stat_prefix = f"outbound_{service.vip}_{port.number}"
            if port.is_http:
                filters = [_hcm(stat_prefix, routes.outbound_name_for(service, port), workload, inbound=False)]
            else:
                filters = [routes.tcp_proxy_for(mesh, service, port, workload, stat_prefix)]
            chains.append({"name": name, "filters": filters, "filter_chain_match": {
                "prefix_ranges": [{"address_prefix": service.vip, "prefix_len": 32}],
                "destination_port": port.number}})
    default = PASSTHROUGH if policy == "ALLOW_ANY" else BLACKHOLE
    return _listener("virtualOutbound", OUTBOUND_PORT, "OUTBOUND", chains, default)


def inbound(workload: Workload) -> dict[str, Any]:
    """One filter chain per port this host serves; anything else passes through to where it was going."""
    chains = []
    for port in workload.ports:
        name = clusters.inbound_name(port.number)
        stat_prefix = f"inbound_0.0.0.0_{port.number}"
        if port.is_http:
            filters = [_hcm(stat_prefix, name, workload, inbound=True)]
        else:
            filters = [tcp_proxy(stat_prefix, name)]
        chains.append({"name": name, "filters": filters, "filter_chain_match": {"destination_port": port.number}})
    return _listener("virtualInbound", INBOUND_PORT, "INBOUND", chains, INBOUND_PASSTHROUGH)


def _admin_proxy(name: str, port: int, path: str, target: str, workload: Workload) -> dict[str, Any]:
    route_config = {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
        {"match": {"path": path}, "route": {"cluster": ADMIN_CLUSTER, "prefix_rewrite": target, "timeout": "5s"}}]}]}
    return {"name": name, "address": socket_address("0.0.0.0", port), "filter_chains": [
        {"filters": [_hcm(name, None, workload, inbound=True, route_config=route_config)]}]}


def static(workload: Workload) -> list[dict[str, Any]]:
    """Readiness on 15021 (/healthz/ready, Envoy's /ready) and Prometheus stats on 15090; admin stays local."""
    quiet = Workload(**{**workload.__dict__, "access_log": False})
    return [
        _admin_proxy("vmesh_readiness", READINESS_PORT, "/healthz/ready", "/ready", quiet),
        _admin_proxy("vmesh_prometheus", STATS_PORT, "/stats/prometheus", "/stats/prometheus", quiet),
    ]
