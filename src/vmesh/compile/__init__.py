"""Compile the validated Mesh into each host's Envoy files.

``render_host`` returns the files for one host's config directory, byte-identical for the same input:
``envoy.json`` (bootstrap), ``lds.json``, ``cds.json`` and one ``rds_*.json`` per route configuration, plus a
self-contained static equivalent used for ``envoy --mode validate`` (which does not read file-based xDS).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from vmesh.compile import bootstrap, clusters, gateways, listeners, mtls, patches, routes
from vmesh.compile.envoy_types import HCM, ROUTE_CONFIGURATION
from vmesh.errors import MeshError
from vmesh.istio.model import Mesh

BOOTSTRAP_FILE = "envoy.json"


@dataclasses.dataclass
class HostConfig:
    host: str
    files: dict[str, str]  # file name in the config dir -> content
    validation: str  # static bootstrap equivalent to ``files``, for envoy --mode validate
    hosts_entries: list[str]  # lines for /etc/hosts: "VIP name name ..."
    edge_ports: list[int] = dataclasses.field(default_factory=list)  # a gateway's listening ports (not captured)
    credentials: list[str] = dataclasses.field(default_factory=list)  # credentialNames the gateway reads
    identity: str = ""  # the workload's SPIFFE id, the URI its mesh certificate carries


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _resources(items: list[dict[str, Any]]) -> str:
    return dumps({"resources": items})


def _static_secrets(node: Any) -> None:
    """SDS references read from files become references to the bundle's static secrets (same names)."""
    if isinstance(node, dict):
        for key in ("tls_certificate_sds_secret_configs", "validation_context_sds_secret_config"):
            for ref in node.get(key, []) if isinstance(node.get(key), list) else [node.get(key)]:
                if isinstance(ref, dict):
                    ref.pop("sds_config", None)
        for value in node.values():
            _static_secrets(value)
    elif isinstance(node, list):
        for value in node:
            _static_secrets(value)


def _validation_bundle(boot: dict[str, Any], lds: list[dict[str, Any]], cds: list[dict[str, Any]],
                       rds: dict[str, dict[str, Any]], secrets: list[dict[str, Any]]) -> dict[str, Any]:
    bundle = copy.deepcopy(boot)
    del bundle["dynamic_resources"]
    listeners_static = copy.deepcopy(lds)
    _static_secrets(listeners_static)
    if secrets:
        static = []
        for secret in copy.deepcopy(secrets):
            secret.pop("@type")
            for part in ("tls_certificate", "validation_context"):
                if part in secret:
                    secret[part].pop("watched_directory", None)
            static.append(secret)
        bundle["static_resources"]["secrets"] = static
    for listener in listeners_static:
        for chain in listener["filter_chains"] + ([listener["default_filter_chain"]] if "default_filter_chain" in listener else []):
            for flt in chain["filters"]:
                config = flt["typed_config"]
                if config["@type"] == HCM and "rds" in config:
                    config["route_config"] = rds[config.pop("rds")["route_config_name"]]
    strip = [{k: v for k, v in item.items() if k != "@type"} for item in listeners_static]
    bundle["static_resources"]["listeners"] += strip
    clusters_static = copy.deepcopy(cds)
    _static_secrets(clusters_static)
    bundle["static_resources"]["clusters"] += [{k: v for k, v in c.items() if k != "@type"} for c in clusters_static]
    return bundle


def render_host(mesh: Mesh, host: str) -> HostConfig:
    registry = mesh.registry
    workload = registry.workloads.get(host)
    if workload is None:
        raise MeshError(f"host {host!r} is not in the mesh (group vmesh)", file="inventory")
    services = [registry.services[fqdn] for fqdn in mesh.visible_services(host)]
    cds = clusters.catch_all()
    rds: dict[str, dict[str, Any]] = {}
    for service in services:
        cds += clusters.outbound(mesh, service, workload)
        for port in service.ports:
            if port.is_http:
                config = routes.outbound(mesh, service, port, workload)
                rds[config["name"]] = config
    policy = mesh.outbound_policy_for(host)
    for number, entries in listeners.port_wide_http(services).items():
        rds[str(number)] = routes.port_wide(mesh, number, entries, workload, policy)
    cds += clusters.inbound(workload)
    for port in workload.ports:
        if port.is_http:
            config = routes.inbound(port)
            rds[config["name"]] = config
    edge = gateways.compile_edge(mesh, workload)
    clash = sorted(set(edge.ports) & {p.target_port for p in workload.ports})
    if clash:
        raise MeshError(f"host {host} serves port {clash[0]} itself and a Gateway selecting it listens there too",
                        file="inventory", doc=f"host {host}", field="vmesh_ports")
    rds.update(edge.routes)
    lds = [listeners.outbound(mesh, services, workload, policy), listeners.inbound(mesh, workload)] + edge.listeners
    patches.apply(mesh, workload, lds, rds)
    boot = bootstrap.bootstrap(workload, registry)
    files = {BOOTSTRAP_FILE: dumps(boot), bootstrap.LDS_FILE: _resources(lds), bootstrap.CDS_FILE: _resources(cds)}
    route_files: dict[str, str] = {}
    for name, config in sorted(rds.items()):
        file = listeners.route_file(name)
        other = route_files.setdefault(file, name)
        if other != name:  # route_file keeps names apart; never let one route table replace another unseen
            raise MeshError(f"route tables {other!r} and {name!r} would both be written to {file}",
                            file="inventory", doc=f"host {host}")
        files[file] = _resources([{"@type": ROUTE_CONFIGURATION, **config}])
    secrets = {**mtls.secrets(workload), **edge.secrets}
    for name, secret in secrets.items():
        files[name] = _resources([secret])
    hosts_entries = [f"{s.vip} {' '.join(s.names_for(workload.namespace))}" for s in services if s.vip]
    return HostConfig(host, dict(sorted(files.items())), dumps(_validation_bundle(boot, lds, cds, rds, list(secrets.values()))),
                      hosts_entries, edge.ports, sorted(edge.credentials), registry.identity(workload))


def render_all(mesh: Mesh) -> dict[str, HostConfig]:
    return {host: render_host(mesh, host) for host in sorted(mesh.registry.workloads)}
