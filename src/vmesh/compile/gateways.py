"""Edge proxy: the listeners and routes of the Gateways that select a host (an ingress VM).

One listener per server port, named as Istio names them (``0.0.0.0_8080``). Plain HTTP servers share one route
table per port (``http.8080``); each TLS-terminating server gets its own filter chain (picked by SNI) and route
table, so a host name is only served under the certificate of its own server. TLS PASSTHROUGH servers route by
SNI (VirtualService ``tls``), TCP servers by VirtualService ``tcp`` routes. Certificates come through file-based
SDS: replacing the certificate files on the host (a rename into their directory) rotates them without a restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any

from vmesh.compile import routes
from vmesh.compile.envoy_types import (DOWNSTREAM_TLS, LISTENER, SECRET, TLS_INSPECTOR, secret_source, socket_address,
                                       typed)
from vmesh.errors import MeshError
from vmesh.istio.model import Mesh
from vmesh.istio.gateway import Gateway, Server, host_matches
from vmesh.istio.virtualservice import VirtualService
from vmesh.registry import Port, Workload


@dataclasses.dataclass
class EdgeConfig:
    listeners: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    routes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    secrets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # SDS file name -> Secret
    credentials: list[str] = dataclasses.field(default_factory=list)  # credentialNames the host needs
    ports: list[int] = dataclasses.field(default_factory=list)  # ports the edge proxy listens on
    route_owners: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)  # TLS route -> server


def secret_file(name: str) -> str:
    return "sds_" + re.sub(r"[^A-Za-z0-9.-]", "_", name) + ".json"


def _bound(mesh: Mesh, gateway: Gateway) -> list[VirtualService]:
    return [vs for vs in mesh.gateway_services if gateway.key in vs.gateways]


def _server_port(server: Server) -> Port:
    protocol = "http2" if server.protocol in ("HTTP2", "GRPC") else "http" if server.is_http else "tcp"
    return Port(server.port, protocol, server.port_name, server.port)


def _vhosts(mesh: Mesh, gateway: Gateway, server: Server, workload: Workload) -> list[dict[str, Any]]:
    """One virtual host per VirtualService host this server serves, with the VirtualService's http routes."""
    port = _server_port(server)
    out = []
    for vs in _bound(mesh, gateway):
        for host in vs.hosts:
            if not any(host_matches(pattern, host) for pattern in server.hosts):
                continue
            # a VirtualService host "*" under a server for "*.example.com" serves only the server's names
            domains = [host] if host != "*" or "*" in server.hosts else list(server.hosts)
            vhost = {"name": f"{host}:{server.port}", "domains": domains,
                     "routes": routes.http_routes(mesh, vs, port, workload, gateway.key)}
            if server.tls is not None and server.tls.https_redirect:
                vhost["require_tls"] = "ALL"
            if vhost["routes"]:
                out.append(vhost)
    return out


def _tls_secret(server: Server, workload: Workload, edge: EdgeConfig) -> tuple[str, str | None]:
    """The SDS secret (certificate and key) of a TLS-terminating server, and the one of its client CA (MUTUAL)."""
    tls = server.tls
    if tls.credential is not None:
        folder = f"{workload.credentials_dir}/{tls.credential}"
        cert, key, ca = f"{folder}/tls.crt", f"{folder}/tls.key", tls.ca or f"{folder}/ca.crt"
        name = f"gateway~{tls.credential}"
        if tls.credential not in edge.credentials:
            edge.credentials.append(tls.credential)
    else:
        cert, key, ca = tls.cert, tls.key, tls.ca
        name = "file~" + hashlib.sha256(f"{cert}\0{key}".encode()).hexdigest()[:12]
    edge.secrets[secret_file(name)] = {"@type": SECRET, "name": name, "tls_certificate": {
        "certificate_chain": {"filename": cert}, "private_key": {"filename": key},
        "watched_directory": {"path": os.path.dirname(cert)}}}
    ca_name = None
    if tls.mode == "MUTUAL":
        ca_name = f"{name}~cacert"
        edge.secrets[secret_file(ca_name)] = {"@type": SECRET, "name": ca_name, "validation_context": {
            "trusted_ca": {"filename": ca}, "watched_directory": {"path": os.path.dirname(ca)}}}
    return name, ca_name


def _downstream_tls(server: Server, workload: Workload, edge: EdgeConfig) -> dict[str, Any]:
    name, ca_name = _tls_secret(server, workload, edge)
    tls = server.tls
    common: dict[str, Any] = {"tls_certificate_sds_secret_configs": [
        {"name": name, "sds_config": secret_source(workload.config_dir, secret_file(name))}]}
    if server.is_http:
        common["alpn_protocols"] = ["h2", "http/1.1"] if server.protocol != "HTTP" else ["http/1.1"]
    params = {k: v for k, v in (("tls_minimum_protocol_version", tls.min_version),
                                ("tls_maximum_protocol_version", tls.max_version)) if v}
    if tls.cipher_suites:
        params["cipher_suites"] = list(tls.cipher_suites)
    if params:
        common["tls_params"] = params
    context: dict[str, Any] = {"@type": DOWNSTREAM_TLS, "common_tls_context": common}
    if ca_name is not None:
        default: dict[str, Any] = {}
        if tls.subject_alt_names:
            default["match_typed_subject_alt_names"] = [{"san_type": "DNS", "matcher": {"exact": n}}
                                                        for n in tls.subject_alt_names]
        common["combined_validation_context"] = {
            "default_validation_context": default,
            "validation_context_sds_secret_config": {
                "name": ca_name, "sds_config": secret_source(workload.config_dir, secret_file(ca_name))}}
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _server_names(server: Server) -> dict[str, Any]:
    return {} if "*" in server.hosts else {"server_names": list(server.hosts)}


def _chains(mesh: Mesh, gateway: Gateway, index: int, server: Server, workload: Workload,
            edge: EdgeConfig) -> list[dict[str, Any]]:
    from vmesh.compile import listeners  # the listener module builds the HTTP connection manager

    port = _server_port(server)
    stat_prefix = f"outbound_0.0.0.0_{server.port}"
    if server.is_http:
        if server.terminates_tls:
            route_name = f"https.{server.port}.{server.name or index}.{gateway.doc.name}.{gateway.doc.namespace}"
            owner = edge.route_owners.setdefault(route_name, (gateway.key, index))
            if owner != (gateway.key, index):  # a server named "1" and the unnamed server 1 of one Gateway
                raise MeshError(f"server {index} and server {owner[1]} of this Gateway would share the route table "
                                f"{route_name!r}: give server {index} another name", file=gateway.doc.file,
                                doc=gateway.doc.ref, field=f"spec.servers[{index}].name")
        else:
            route_name = f"http.{server.port}"
        config = edge.routes.setdefault(route_name, {"name": route_name, "virtual_hosts": []})
        known = {d for v in config["virtual_hosts"] for d in v["domains"]}
        for vhost in _vhosts(mesh, gateway, server, workload):
            if any(v["name"] == vhost["name"] for v in config["virtual_hosts"]):
                continue  # the same VirtualService host, reached through two servers of one port
            clash = [d for d in vhost["domains"] if d in known]
            if clash:
                raise MeshError(f"host {clash[0]} on port {server.port} is routed by two Gateways' VirtualServices",
                                file=gateway.doc.file, doc=gateway.doc.ref, field="spec.servers")
            known |= set(vhost["domains"])
            config["virtual_hosts"].append(vhost)
        authorization = listeners.authorization_filters(mesh, workload, port)
        chain = {"name": route_name,
                 "filters": [listeners.edge_hcm(mesh, stat_prefix, route_name, workload, authorization)]}
        if server.terminates_tls:
            chain["filter_chain_match"] = _server_names(server)
            chain["transport_socket"] = _downstream_tls(server, workload, edge)
        return [chain]
    chains = []
    for vs in _bound(mesh, gateway):
        if not any(host_matches(pattern, host) for pattern in server.hosts for host in vs.hosts):
            continue
        if server.protocol == "TLS" and not server.terminates_tls:  # PASSTHROUGH: by SNI
            for sni, target in routes.sni_routes(mesh, vs, port, workload, gateway.key):
                chains.append({"name": f"{stat_prefix}~{sni[0]}", "filter_chain_match": {"server_names": sni},
                               "filters": listeners.authorization_filters(mesh, workload, port)
                               + [routes.tcp_filter(stat_prefix, target)]})
            continue
        target = routes.tcp_target(mesh, vs, port, workload, gateway.key)
        if target is not None:
            chain = {"name": stat_prefix, "filters": listeners.authorization_filters(mesh, workload, port)
                     + [routes.tcp_filter(stat_prefix, target)]}
            if server.terminates_tls:
                chain["filter_chain_match"] = _server_names(server)
                chain["transport_socket"] = _downstream_tls(server, workload, edge)
            chains.append(chain)
            break
    return chains


def compile_edge(mesh: Mesh, workload: Workload) -> EdgeConfig:
    edge = EdgeConfig()
    by_port: dict[int, list[tuple[Gateway, int, Server]]] = {}
    for gateway in mesh.gateways_of(workload.host):
        for index, server in enumerate(gateway.servers):
            by_port.setdefault(server.port, []).append((gateway, index, server))
    for port, servers in sorted(by_port.items()):
        first = servers[0][2]
        for gateway, _, server in servers[1:]:
            if (server.is_http, server.terminates_tls) != (first.is_http, first.terminates_tls):
                raise MeshError(f"port {port} of host {workload.host} is served as {first.protocol} by "
                                f"{servers[0][0].doc.ref} and as {server.protocol} here; one port serves one protocol",
                                file=gateway.doc.file, doc=gateway.doc.ref, field="spec.servers")
        chains: list[dict[str, Any]] = []
        for gateway, index, server in servers:
            for chain in _chains(mesh, gateway, index, server, workload, edge):
                if chain["name"] not in {c["name"] for c in chains}:
                    chains.append(chain)
        listener: dict[str, Any] = {"@type": LISTENER, "name": f"0.0.0.0_{port}",
                                    "address": socket_address("0.0.0.0", port), "traffic_direction": "OUTBOUND",
                                    "filter_chains": chains}
        if any("server_names" in c.get("filter_chain_match", {}) for c in chains):
            listener["listener_filters"] = [typed("envoy.filters.listener.tls_inspector", TLS_INSPECTOR)]
        if not chains:  # nothing routes here yet: Envoy needs a chain; it refuses every connection
            listener["filter_chains"] = [{"name": "no-route", "filters": [
                routes.tcp_filter(f"outbound_0.0.0.0_{port}", {"cluster": "BlackHoleCluster"})]}]
        edge.listeners.append(listener)
        edge.ports.append(port)
    return edge
