"""Clusters: one per service port and per DestinationRule subset, plus the inbound and catch-all ones."""

from __future__ import annotations

from typing import Any

from vmesh.compile.envoy_types import (BLACKHOLE, CLUSTER, HTTP_PROTOCOL_OPTIONS, INBOUND_PASSTHROUGH,
                                       PASSTHROUGH, UNLIMITED, socket_address)
from vmesh.istio import Mesh, selects
from vmesh.registry import Port, Service, Workload

CONNECT_TIMEOUT = "10s"  # Istio's default connectTimeout


def outbound_name(port: int, subset: str | None, fqdn: str) -> str:
    return f"outbound|{port}|{subset or ''}|{fqdn}"


def inbound_name(port: int) -> str:
    return f"inbound|{port}||"


def _circuit_breakers() -> dict[str, Any]:
    return {"thresholds": [{"max_connections": UNLIMITED, "max_pending_requests": UNLIMITED,
                            "max_requests": UNLIMITED, "max_retries": UNLIMITED, "track_remaining": True}]}


def _static(name: str, endpoints: list[tuple[str, int]], port: Port | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": _circuit_breakers(),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(ip, p)}} for ip, p in endpoints]}],
        },
    }
    if port is not None and port.protocol in ("http2", "grpc"):
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_PROTOCOL_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}
    return cluster


def outbound(mesh: Mesh, service: Service) -> list[dict[str, Any]]:
    rule = mesh.destination_rules.get(service.fqdn)
    subsets = [None] + (sorted(rule.subsets) if rule else [])
    clusters = []
    for port in service.ports:
        for subset in subsets:
            labels = mesh.subset_labels(service.fqdn, subset)
            endpoints = [(w.address, port.number) for w in service.workloads if selects(labels, w.labels)]
            clusters.append(_static(outbound_name(port.number, subset, service.fqdn), endpoints, port))
    return clusters


def inbound(workload: Workload) -> list[dict[str, Any]]:
    return [_static(inbound_name(port.number), [("127.0.0.1", port.target_port)], port) for port in workload.ports]


def catch_all() -> list[dict[str, Any]]:
    original_dst = {"@type": CLUSTER, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                    "connect_timeout": CONNECT_TIMEOUT, "circuit_breakers": _circuit_breakers()}
    return [
        {**original_dst, "name": PASSTHROUGH},
        # 127.0.0.6 as source lets the redirect rules tell this traffic apart and not capture it again.
        {**original_dst, "name": INBOUND_PASSTHROUGH,
         "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}}},
        {"@type": CLUSTER, "name": BLACKHOLE, "type": "STATIC", "connect_timeout": CONNECT_TIMEOUT},
    ]
