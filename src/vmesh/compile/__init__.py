"""Compile the validated Mesh into each host's Envoy files.

``Renderer(mesh).host(name)`` returns the files for one host's config directory, byte-identical for the same
input: ``envoy.json`` (bootstrap), ``lds.json``, ``cds.json``, one ``rds_*.json`` per route configuration and
one ``eds_*.json`` per cluster of a mesh service (its endpoints), as compact JSON. A host gets only the outbound
clusters its listeners and routes send to (with all subsets of a service port where one is used). What hosts
share is computed once per Renderer: a service's clusters (the same for every client with the same config
directory) and its virtual hosts in the route table of each of its HTTP ports (the same for every client in a
namespace, unless a VirtualService matches on the caller's labels). The static equivalent for ``envoy --mode
validate`` (which does not read file-based xDS) is built only when asked for (``HostConfig.validation``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Callable

from vmesh import envoy
from vmesh.compile import bootstrap, clusters, gateways, listeners, mtls, patches, probes, routes, telemetry
from vmesh.compile.envoy_types import ROUTE_CONFIGURATION, resource_file
from vmesh.errors import MeshError
from vmesh.istio.model import Mesh
from vmesh.registry import Port, Service, Workload

BOOTSTRAP_FILE = "envoy.json"
# An outbound cluster's name (names.py) in a JSON text. Taken as a reference wherever it stands (routes, tcp_proxy,
# mirrors, an EnvoyFilter's own fields) but as the name of a route table (RDS) or of a filter chain.
_OUTBOUND = re.compile(r'"outbound\|(\d+)\|([^|"]*)\|([^|"]+)"')
_NOT_A_REFERENCE = ('"route_config_name":', ',"name":')


@dataclasses.dataclass
class HostConfig:
    host: str
    files: dict[str, str]  # file name in the config dir -> content
    hosts_entries: list[str]  # lines for /etc/hosts: "VIP name name ..."
    edge_ports: list[int] = dataclasses.field(default_factory=list)  # a gateway's listening ports (not captured)
    credentials: list[str] = dataclasses.field(default_factory=list)  # credentialNames the gateway reads
    identity: str = ""  # the workload's SPIFFE id, the URI its mesh certificate carries

    @property
    def validation(self) -> str:
        """The static bootstrap equivalent to ``files``, for envoy --mode validate (built on each call)."""
        return envoy.static_bundle(self.files)


@dataclasses.dataclass(frozen=True)
class _Cluster:
    port: int
    subset: str | None
    json: str
    endpoints: tuple[str, str] | None  # (file name, its text)


def _references(text: str) -> set[tuple[int, str, str]]:
    return {(int(m[1]), m[2], m[3]) for m in _OUTBOUND.finditer(text)
            if not text.endswith(_NOT_A_REFERENCE, 0, m.start())}


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def version(resources_text: str) -> str:
    """A file's version_info: the first 12 hex digits of the SHA-256 of its resources. Envoy reports it per
    subscription in /config_dump, so ``vmesh status`` sees which files' content a running proxy has in force."""
    return hashlib.sha256(resources_text.encode()).hexdigest()[:12]


def _resources(items: list[str]) -> str:
    """A file of xDS resources from resources already in JSON, with its version: the same text as
    dumps({"resources": items, "version_info": ...})."""
    text = "[" + ",".join(items) + "]"
    return '{"resources":' + text + ',"version_info":"' + version(text) + '"}'


def _route_file(config: dict[str, Any]) -> str:
    return _resources([dumps({"@type": ROUTE_CONFIGURATION, **config})])


class Renderer:
    """Renders the hosts of one mesh, sharing what they have in common (see the module's docstring)."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self._clusters: dict[tuple[str, str], list[_Cluster]] = {}
        self._vhosts: dict[tuple[Any, ...], tuple[str, frozenset[str]]] = {}
        self._fallbacks: dict[str, str] = {}
        self._refs: dict[str, set[tuple[int, str, str]]] = {}
        self._per_route: dict[str, frozenset[str]] = {}
        self._callers: dict[str, list[Workload]] | None = None
        self._by_caller: dict[str, bool] = {}

    def _service_clusters(self, service: Service, client: Workload) -> list[_Cluster]:
        """A service's outbound clusters in JSON, with their endpoint files; they differ between clients only by
        the config directory the files are read from."""
        key = (service.fqdn, client.config_dir)
        if key not in self._clusters:
            self._clusters[key] = [
                _Cluster(c.port, c.subset, dumps(c.cluster),
                         (c.endpoints[0], _resources([dumps(c.endpoints[1])])) if c.endpoints else None)
                for c in clusters.outbound(self.mesh, service, client)]
        return self._clusters[key]

    def _mesh_cluster(self, workload: Workload, endpoint_files: dict[str, str]) -> Callable[[str, int], Any]:
        """For a cluster an EnvoyFilter adds: the mesh's own cluster for a service name and port as this host
        names them, with its endpoints file among this host's files; None when no mesh service has them."""
        names = {name: service for service in self.mesh.registry.services.values()
                 for name in service.names_for(workload.namespace)}

        def find(name: str, port: int) -> dict[str, Any] | None:
            service = names.get(name)
            for c in self._service_clusters(service, workload) if service else []:
                if c.port == port and c.subset is None:
                    if c.endpoints:
                        endpoint_files[c.endpoints[0]] = c.endpoints[1]
                    return json.loads(c.json)
            return None
        return find

    def _shared_references(self, text: str) -> set[tuple[int, str, str]]:
        """The outbound clusters a shared route text sends to, (port, subset or "", FQDN), kept with it."""
        if text not in self._refs:
            self._refs[text] = _references(text)
        return self._refs[text]

    def _needs(self, texts: list[str]) -> listeners.HttpNeeds:
        """What the connection manager of an outbound port needs besides routing, from the virtual hosts of its
        route table: the filters their routes configure; the clusters' dynamic stats where they send to a service
        under a declared rollout."""
        filters: frozenset[str] = frozenset()
        for text in texts:
            if text not in self._per_route:
                self._per_route[text] = routes.per_route_filters(text)
            filters |= self._per_route[text]
        measured = any(fqdn in self.mesh.measured for text in texts for _, _, fqdn in self._shared_references(text))
        return listeners.HttpNeeds(filters, measured)

    def callers(self, workload: Workload) -> list[Workload]:
        """The hosts whose proxies send to ``workload``'s service (computed for all services at the first call)."""
        if self._callers is None:
            self._callers = {}
            for host, client in sorted(self.mesh.registry.workloads.items()):
                for fqdn in self.mesh.visible_services(host):
                    self._callers.setdefault(fqdn, []).append(client)
        service = self.mesh.registry.fqdn(workload.service, workload.namespace) if workload.service else None
        return self._callers.get(service, []) if service else []

    def _routes_by_caller(self, service: Service) -> bool:
        """Whether the service's VirtualService matches on the caller (sourceLabels, sourceNamespace)."""
        if service.fqdn not in self._by_caller:
            vs = self.mesh.virtual_services.get(service.fqdn)
            self._by_caller[service.fqdn] = vs is not None and any(
                m.source_labels or m.source_namespace is not None for route in vs.http for m in route.matches)
        return self._by_caller[service.fqdn]

    def _vhost(self, service: Service, port: Port, client: Workload) -> tuple[str, frozenset[str]]:
        """(JSON text, domains) of the virtual host ``client`` uses for ``service`` on ``port``."""
        caller = (tuple(sorted(client.labels.items())),) if self._routes_by_caller(service) else ()
        key = (service.fqdn, port.number, client.namespace, caller)
        if key not in self._vhosts:
            vhost = routes.outbound_vhost(self.mesh, service, port, client)
            self._vhosts[key] = (dumps(vhost), frozenset(vhost["domains"]))
        return self._vhosts[key]

    def _port_table(self, number: int, entries: list[tuple[Service, Port]], client: Workload,
                    policy: str) -> tuple[str, list[str]]:
        """(file content, its virtual hosts' texts) of the route table of the outbound HTTP port ``number``: the
        same as _route_file(routes.port_table(...)), made of the virtual hosts hosts share."""
        texts: list[str] = []
        taken: set[str] = set()
        for service, port in entries:
            text, names = self._vhost(service, port, client)
            if names & taken:  # rare: a name two services answer to (routes.without_taken)
                vhost = routes.without_taken(json.loads(text), taken)
                if vhost is not None:
                    texts.append(dumps(vhost))
                continue
            taken |= names
            texts.append(text)
        if policy not in self._fallbacks:
            self._fallbacks[policy] = dumps(routes.fallback_vhost(policy))
        table = ('{"@type":' + json.dumps(ROUTE_CONFIGURATION) + ',"name":' + json.dumps(str(number))
                 + ',"virtual_hosts":[' + ",".join(texts + [self._fallbacks[policy]]) + "]}")
        return _resources([table]), texts

    def host(self, host: str) -> HostConfig:
        mesh = self.mesh
        registry = mesh.registry
        workload = registry.workloads.get(host)
        if workload is None:
            raise MeshError(f"host {host!r} is not in the mesh (group vmesh)", file="inventory")
        services = [registry.services[fqdn] for fqdn in mesh.visible_services(host)]
        # EnvoyFilters edit this host's route tables: it gets tables of its own, not the shared ones
        filters = patches.selected(mesh, workload)
        rds: dict[str, dict[str, Any]] = {}
        route_texts: dict[str, str] = {}
        shared: list[str] = []  # the virtual hosts hosts share, in this host's tables
        policy = mesh.outbound_policy_for(host)
        by_port: dict[int, list[tuple[Service, Port]]] = {}
        needs: dict[int, listeners.HttpNeeds] = {}  # by outbound HTTP port
        for service in services:
            for port in service.ports:
                if port.is_http:
                    by_port.setdefault(port.number, []).append((service, port))
        for number, entries in sorted(by_port.items()):
            if filters:  # EnvoyFilters edit this host's route tables: it gets tables of its own
                rds[str(number)] = routes.port_table(
                    number, [routes.outbound_vhost(mesh, s, p, workload) for s, p in entries], policy)
                needs[number] = listeners.ALL_NEEDS
            else:
                route_texts[str(number)], texts = self._port_table(number, entries, workload, policy)
                shared += texts
                needs[number] = self._needs(texts)
        for port in workload.ports:
            if port.is_http:
                config = routes.inbound(port)
                rds[config["name"]] = config
        edge = gateways.compile_edge(mesh, workload)
        clash = sorted(set(edge.ports) & {p.target_port for p in workload.ports})
        if clash:
            raise MeshError(f"host {host} serves port {clash[0]} itself and a Gateway selecting it listens there "
                            "too", file="inventory", doc=f"host {host}", field="vmesh_ports")
        rds.update(edge.routes)
        lds = [listeners.outbound(mesh, services, workload, policy, needs),
               listeners.inbound(mesh, workload)] + edge.listeners
        patches.apply(filters, lds, rds)
        # the route tables hosts share are scanned once (kept with them), this host's own ones here
        lds_text = _resources([dumps(item) for item in lds])
        used = _references(lds_text).union(*map(self._shared_references, shared))
        route_texts.update((name, _route_file(config)) for name, config in rds.items())
        used = used.union(*(_references(route_texts[name]) for name in rds))
        by_subset = {(port, fqdn) for port, subset, fqdn in used if subset}
        cds = [dumps(c) for c in clusters.catch_all()]
        endpoint_files: dict[str, str] = {}
        # the trace collectors this host sends spans to, when their service is not among those it sees
        collectors = {fqdn for side in ("client", "server") for fqdn, _ in
                      telemetry.tracer_clusters(mesh.telemetry(workload, side))}
        collectors -= {s.fqdn for s in services}
        for service in services + [registry.services[fqdn] for fqdn in sorted(collectors)]:
            for c in self._service_clusters(service, workload):
                # Only the clusters something sends to. Where some subset of a service port is used, all of its
                # subsets are there, so shifting weight between subsets (a canary) changes routes only.
                if (c.port, c.subset or "", service.fqdn) in used or (c.subset and (c.port, service.fqdn) in by_subset):
                    cds.append(c.json)
                    if c.endpoints:
                        endpoint_files[c.endpoints[0]] = c.endpoints[1]
        cds += [dumps(c) for c in clusters.inbound(workload) + probes.local_cluster(workload.probe)]
        if any(p.apply_to == "CLUSTER" for f in filters for p in f.patches):
            cds = [dumps(c) for c in patches.clusters(filters, [json.loads(c) for c in cds],
                                                      gateway=bool(edge.listeners),
                                                      mesh_cluster=self._mesh_cluster(workload, endpoint_files))]
        files = {BOOTSTRAP_FILE: dumps(bootstrap.bootstrap(workload, registry)),
                 bootstrap.LDS_FILE: lds_text, bootstrap.CDS_FILE: _resources(cds)}
        route_files: dict[str, str] = {}
        for name, text in sorted(route_texts.items()):
            file = resource_file("rds", name)
            other = route_files.setdefault(file, name)
            if other != name:  # resource_file keeps names apart; never let one route table replace another unseen
                raise MeshError(f"route tables {other!r} and {name!r} would both be written to {file}",
                                file="inventory", doc=f"host {host}")
            files[file] = text
        files.update(endpoint_files)
        files[telemetry.PEERS_FILE] = dumps(telemetry.peers(mesh, workload, [s.fqdn for s in services],
                                                            self.callers(workload)))
        secrets = {**mtls.secrets(workload), **edge.secrets}
        for name, secret in secrets.items():
            files[name] = _resources([dumps(secret)])
        hosts_entries = [f"{s.vip} {' '.join(s.names_for(workload.namespace))}" for s in services if s.vip]
        return HostConfig(host, dict(sorted(files.items())), hosts_entries, edge.ports, sorted(edge.credentials),
                          registry.identity(workload))


def render_host(mesh: Mesh, host: str) -> HostConfig:
    """One host's files (a Renderer of its own: nothing shared with other calls)."""
    return Renderer(mesh).host(host)


def render_all(mesh: Mesh) -> dict[str, HostConfig]:
    renderer = Renderer(mesh)
    return {host: renderer.host(host) for host in sorted(mesh.registry.workloads)}
