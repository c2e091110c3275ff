"""Clusters: one per service port and per DestinationRule subset, plus the inbound and catch-all ones. (The
renderer keeps, per host, those its routes send to.)"""

from __future__ import annotations

import dataclasses
from typing import Any

from vmesh.compile import mtls, probes
from vmesh.compile.envoy_types import (BLACKHOLE, CLUSTER, CLUSTER_LOAD_ASSIGNMENT, HTTP_PROTOCOL_OPTIONS,
                                       INBOUND_PASSTHROUGH, PASSTHROUGH, RAW_BUFFER, UNLIMITED, UPSTREAM_TLS,
                                       file_source, resource_file, socket_address)
from vmesh.istio.model import Mesh, selects
from vmesh.istio.fields import envoy_duration
from vmesh.istio.trafficpolicy import Tls, TrafficPolicy
from vmesh.names import inbound_name, outbound_name
from vmesh.registry import Port, Service, Workload

SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"  # Debian's bundle: SIMPLE TLS with no caCertificates

CONNECT_TIMEOUT = "10s"  # Istio's default connectTimeout


def _circuit_breakers(policy: TrafficPolicy | None = None) -> dict[str, Any]:
    """Istio's limits: those the connection pool sets, else none (Envoy's own defaults are 1024). The remaining_*
    gauges, which Envoy updates on every request, are kept only where a limit can trip (bench/datapath.py)."""
    pool = policy.connection_pool if policy else None
    limits = {"max_connections": pool and pool.max_connections,
              "max_pending_requests": pool and pool.http1_max_pending_requests,
              "max_requests": pool and pool.http2_max_requests, "max_retries": pool and pool.max_retries}
    thresholds: dict[str, Any] = {k: UNLIMITED if v is None else v for k, v in limits.items()}
    if any(v is not None for v in limits.values()):
        thresholds["track_remaining"] = True
    return {"thresholds": [thresholds]}


def _apply_policy(cluster: dict[str, Any], policy: TrafficPolicy, port: Port | None,
                  service: Service | None = None) -> None:
    """Istio's DestinationRule traffic policy on one outbound cluster."""
    cluster["circuit_breakers"] = _circuit_breakers(policy)
    lb = policy.load_balancer if cluster.get("type") != "ORIGINAL_DST" else None  # it picks no endpoint itself
    if lb is not None and lb.simple:
        cluster["lb_policy"] = lb.simple
    elif lb is not None and lb.consistent_hash:
        ch = lb.consistent_hash
        if ch.maglev_table_size:
            cluster["lb_policy"] = "MAGLEV"
            cluster["maglev_lb_config"] = {"table_size": ch.maglev_table_size}
        else:
            cluster["lb_policy"] = "RING_HASH"
            cluster["ring_hash_lb_config"] = {"minimum_ring_size": ch.minimum_ring_size or 1024}
    pool = policy.connection_pool
    options: dict[str, Any] = {}
    if pool is not None:
        if pool.connect_timeout_ns is not None:
            cluster["connect_timeout"] = envoy_duration(pool.connect_timeout_ns)
        if pool.keepalive is not None:
            probes, time_ns, interval_ns = pool.keepalive
            keepalive: dict[str, Any] = {}
            if probes is not None:
                keepalive["keepalive_probes"] = probes
            if time_ns is not None:
                keepalive["keepalive_time"] = max(1, time_ns // 10**9)
            if interval_ns is not None:
                keepalive["keepalive_interval"] = max(1, interval_ns // 10**9)
            cluster["upstream_connection_options"] = {"tcp_keepalive": keepalive}
        if pool.idle_timeout_ns is not None:
            options["idle_timeout"] = envoy_duration(pool.idle_timeout_ns)
        if pool.max_requests_per_connection:
            options["max_requests_per_connection"] = pool.max_requests_per_connection
    if options or (pool and pool.upgrade_http2):
        protocol = cluster.setdefault("typed_extension_protocol_options", {}).setdefault(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            {"@type": HTTP_PROTOCOL_OPTIONS, "explicit_http_config": {"http_protocol_options": {}}})
        if options:
            protocol["common_http_protocol_options"] = options
        if pool and pool.upgrade_http2:
            protocol["explicit_http_config"] = {"http2_protocol_options": {}}
    od = policy.outlier_detection
    if od is not None:
        # Envoy's defaults are left out: enforcing_consecutive_5xx 100, max_ejection_percent 10,
        # enforcing_consecutive_gateway_failure 0 (success-rate ejection, on by default, Istio turns off)
        outlier: dict[str, Any] = {
            "consecutive_5xx": od.consecutive_5xx,
            "interval": envoy_duration(od.interval_ns),
            "base_ejection_time": envoy_duration(od.base_ejection_ns),
            "enforcing_success_rate": 0,
        }
        if not od.consecutive_5xx:
            outlier["enforcing_consecutive_5xx"] = 0
        if od.max_ejection_percent != 10:
            outlier["max_ejection_percent"] = od.max_ejection_percent
        if od.consecutive_gateway:
            outlier["consecutive_gateway_failure"] = od.consecutive_gateway
            outlier["enforcing_consecutive_gateway_failure"] = 100
        cluster["outlier_detection"] = outlier
        cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": od.min_health_percent}}
    tls = policy.tls
    if tls is not None and tls.mode in ("SIMPLE", "MUTUAL"):
        common: dict[str, Any] = {}
        if not tls.insecure_skip_verify:
            validation: dict[str, Any] = {"trusted_ca": {"filename": tls.ca_certificates or SYSTEM_CA}}
            if tls.subject_alt_names:
                validation["match_typed_subject_alt_names"] = [
                    {"san_type": "DNS", "matcher": {"exact": name}} for name in tls.subject_alt_names]
            common["validation_context"] = validation
        if tls.mode == "MUTUAL":
            common["tls_certificates"] = [{"certificate_chain": {"filename": tls.client_certificate},
                                           "private_key": {"filename": tls.private_key}}]
        context: dict[str, Any] = {"@type": UPSTREAM_TLS, "common_tls_context": common}
        if tls.sni:
            context["sni"] = tls.sni
        elif service is not None and service.entry is not None and "*" not in service.fqdn:
            context["sni"] = service.fqdn  # an external host expects its own name (Istio does the same)
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _static(name: str, endpoints: list[tuple[str, int]], port: Port | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,  # lb_policy: Envoy's default, ROUND_ROBIN
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


def _external(service: Service, port: Port, labels: dict[str, str], name: str) -> dict[str, Any]:
    """A ServiceEntry host's cluster: its endpoints (STATIC), names Envoy resolves (DNS), or where the app
    was going (NONE)."""
    entry = service.entry
    if entry.resolution == "NONE":
        return {"@type": CLUSTER, "name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                "connect_timeout": CONNECT_TIMEOUT, "circuit_breakers": _circuit_breakers()}
    endpoints = [(e.address, e.port_for(port), e.weight) for e in entry.endpoints if selects(labels, dict(e.labels))]
    if not entry.endpoints:  # DNS with no endpoints: the host itself
        endpoints = [(service.fqdn, port.target_port, None)]
    cluster = _static(name, [(a, p) for a, p, _ in endpoints], port)
    for lb_endpoint, (_, _, weight) in zip(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"], endpoints):
        if weight is not None:
            lb_endpoint["load_balancing_weight"] = weight
    if entry.resolution != "STATIC":
        cluster["type"] = "STRICT_DNS" if entry.resolution == "DNS" else "LOGICAL_DNS"
        cluster["dns_lookup_family"] = "V4_ONLY"
        cluster["respect_dns_ttl"] = True
    return cluster


def _mesh_tls(cluster: dict[str, Any], mesh: Mesh, client: Workload, port: Port, subset: str | None,
              service: Service, servers: list[Workload], tls: Tls | None) -> None:
    """Mesh mTLS to a service's hosts. DestinationRule ISTIO_MUTUAL asks for it, DISABLE refuses it; without
    either, Istio's auto mTLS: mTLS to each host whose PeerAuthentication accepts it (all but DISABLE)."""
    if tls is not None and tls.mode in ("SIMPLE", "MUTUAL", "DISABLE"):
        return
    sni = mtls.sni(port.number, subset, service.fqdn)
    if service.entry is not None:  # only when asked: an external host has no mesh certificate
        if tls is not None:
            cluster["transport_socket"] = mtls.upstream(client, list(tls.subject_alt_names), sni)
        return
    if tls is not None:
        secured = servers
    else:
        secured = [w for w in servers if mesh.mtls_mode(w, port.target_port) != "DISABLE"]
    if not secured:
        return
    identities = list(tls.subject_alt_names) if tls is not None and tls.subject_alt_names else \
        [mesh.registry.identity(w) for w in secured]
    socket = mtls.upstream(client, identities, sni)
    if len(secured) == len(servers):
        cluster["transport_socket"] = socket
        return
    # some hosts take mTLS and some do not: Envoy picks the socket by each endpoint's metadata
    cluster["transport_socket_matches"] = [
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": socket},
        {"name": "tlsMode-disabled", "match": {},
         "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": RAW_BUFFER}}}]
    addresses = {w.address for w in secured}
    for lb_endpoint in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
        if lb_endpoint["endpoint"]["address"]["socket_address"]["address"] in addresses:
            lb_endpoint["metadata"] = {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}


@dataclasses.dataclass(frozen=True)
class Outbound:
    """One outbound cluster of a service port (and subset), with its endpoints file when it reads one (EDS)."""
    port: int
    subset: str | None
    cluster: dict[str, Any]
    endpoints: tuple[str, dict[str, Any]] | None  # (file name, ClusterLoadAssignment)


def outbound(mesh: Mesh, service: Service, client: Workload) -> list[Outbound]:
    """The clusters ``client`` may use for ``service``: one per port, and one per port and DestinationRule subset.
    Those of mesh services read their endpoints from a file of their own (EDS): a VM that comes or goes changes
    that file only, so the cluster and its connection pools stay."""
    rule = mesh.destination_rules.get(service.fqdn)
    subsets = [None] + (sorted(rule.subsets) if rule else [])
    out = []
    for port in service.ports:
        for subset in subsets:
            labels = mesh.subset_labels(service.fqdn, subset)
            name = outbound_name(port.number, subset, service.fqdn)
            servers = [w for w in service.workloads if selects(labels, w.labels)]
            if service.entry is not None:
                cluster = _external(service, port, labels, name)
            else:  # a drained host is no endpoint (its identity stays: the cluster does not change)
                cluster = _static(name, [(w.address, port.number) for w in servers if not w.drained], port)
            policy = rule.policy(subset, port.number) if rule is not None else None
            if policy is not None:
                _apply_policy(cluster, policy, port, service)
            _mesh_tls(cluster, mesh, client, port, subset, service, servers, policy.tls if policy else None)
            endpoints = None
            if service.entry is None:
                if service.probe is not None:
                    probes.client_checks(cluster, cluster["load_assignment"], service.probe, service.fqdn)
                file = resource_file("eds", name)
                endpoints = (file, {"@type": CLUSTER_LOAD_ASSIGNMENT, **cluster.pop("load_assignment")})
                cluster["type"] = "EDS"
                # service_name: the cluster's own name by default, as the file has it
                cluster["eds_cluster_config"] = {"eds_config": file_source(client.config_dir, file)}
            out.append(Outbound(port.number, subset, cluster, endpoints))
    return out


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
