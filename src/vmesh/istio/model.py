"""The mesh model: Istio documents read against the registry, validated, as the compiler takes them."""

from __future__ import annotations

import dataclasses
from typing import Iterable

from vmesh import registry as registry_mod
from vmesh.documents import Document, show
from vmesh.errors import MeshError, MeshErrors
from vmesh.istio import destinationrule, envoyfilter, gateway as gateway_mod, serviceentry
from vmesh.istio import authorizationpolicy, peerauthentication, sidecar as sidecar_mod, virtualservice
from vmesh.istio import meshconfig, telemetry as telemetry_mod
from vmesh.istio.destinationrule import DestinationRule
from vmesh.istio.fields import Node
from vmesh.istio.gateway import Gateway
from vmesh.istio.virtualservice import VirtualService
from vmesh.registry import Registry

SUPPORTED_KINDS = {"VirtualService", "DestinationRule", "Sidecar", "EnvoyFilter", "Gateway", "ServiceEntry",
                   "PeerAuthentication", "AuthorizationPolicy", "Telemetry"}


class _BySelector:
    """Documents with a label selector (``.selector``: labels or None), found for a workload's namespace and labels
    without a scan of them all: each is filed under its namespace and the first of its selector's labels. A
    lookup returns a superset of those that select the workload, in their original order."""

    def __init__(self, items: Iterable):
        items = list(items)
        self._order = {id(item): n for n, item in enumerate(items)}
        self._index: dict[tuple, list] = {}
        for item in items:
            key = (item.doc.namespace, *(min(item.selector.items()) if item.selector else (None, None)))
            self._index.setdefault(key, []).append(item)

    def candidates(self, namespace: str, labels: dict[str, str]) -> list:
        found = []
        for ns in dict.fromkeys((namespace, sidecar_mod.ROOT_NAMESPACE)):
            found += self._index.get((ns, None, None), [])
            for item in labels.items():
                found += self._index.get((ns, *item), [])
        return sorted(found, key=lambda item: self._order[id(item)])


@dataclasses.dataclass
class Mesh:
    registry: Registry
    virtual_services: dict[str, VirtualService]  # by the service FQDN they route
    destination_rules: dict[str, DestinationRule]  # by host FQDN
    warnings: list[str]
    sidecars: list[sidecar_mod.Sidecar] = dataclasses.field(default_factory=list)
    outbound_policy: str = "ALLOW_ANY"  # mesh-wide, vmesh_outbound_traffic_policy
    envoy_filters: list[envoyfilter.EnvoyFilter] = dataclasses.field(default_factory=list)
    gateways: dict[str, Gateway] = dataclasses.field(default_factory=dict)  # by namespace/name
    gateway_services: list[VirtualService] = dataclasses.field(default_factory=list)  # bound to a Gateway
    service_entries: list[serviceentry.ServiceEntry] = dataclasses.field(default_factory=list)
    peer_authentications: list[peerauthentication.PeerAuthentication] = dataclasses.field(default_factory=list)
    authorization_policies: list[authorizationpolicy.AuthorizationPolicy] = dataclasses.field(default_factory=list)
    telemetries: list[telemetry_mod.Telemetry] = dataclasses.field(default_factory=list)
    mesh_config: meshconfig.MeshConfig = dataclasses.field(
        default_factory=lambda: meshconfig.MeshConfig(dict(meshconfig.BUILT_IN)))
    # The services under a declared canary rollout (FQDNs): their clients' routers record the per-code counts and
    # request times of their clusters, which the rollout is judged on (listeners.HttpNeeds)
    measured: frozenset[str] = frozenset()
    # Answers that depend only on a workload's namespace and labels (or a Sidecar), kept once asked: thousands of
    # hosts share a few hundred label sets. The model is not changed after it is built.
    _memo: dict[tuple, object] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def _by_selection(self, kind: str, workload: registry_mod.Workload, extra: object, compute):
        key = (kind, workload.namespace, tuple(sorted(workload.labels.items())), extra)
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def _index(self, kind: str, items: Iterable) -> _BySelector:
        if ("index", kind) not in self._memo:
            self._memo[("index", kind)] = _BySelector(items)
        return self._memo[("index", kind)]

    def authorization_for(self, workload: registry_mod.Workload) -> list[authorizationpolicy.AuthorizationPolicy]:
        index = self._index("authz", self.authorization_policies)
        return self._by_selection("authz", workload, None, lambda: authorizationpolicy.for_workload(
            index.candidates(workload.namespace, workload.labels), workload.namespace, workload.labels))

    def mtls_mode(self, workload: registry_mod.Workload, port: int | None) -> str:
        """DISABLE, PERMISSIVE or STRICT for one workload port (the port its app listens on); ``None``: the
        workload-wide mode, which also holds for ports it does not declare."""
        return self._by_selection("mtls", workload, port, lambda: peerauthentication.mode_for(
            self.peer_authentications, workload.namespace, workload.labels, port))

    @property
    def traced(self) -> bool:
        """Whether some proxy may trace (a default tracing provider, or a Telemetry that names tracing): then
        VirtualService routes carry Istio's span names."""
        if ("traced",) not in self._memo:
            self._memo[("traced",)] = bool(self.mesh_config.default_tracing and self.mesh_config.tracing_enabled) \
                or any(t.tracing for t in self.telemetries)
        return bool(self._memo[("traced",)])

    def telemetry(self, workload: registry_mod.Workload, side: str) -> telemetry_mod.Side:
        """What the client (outbound, gateways) or server (inbound) side of a workload's proxy records: access
        logs, tracing, metrics."""
        return self._by_selection("telemetry", workload, (side, workload.access_log), lambda: telemetry_mod.resolve(
            telemetry_mod.chain(self.telemetries, workload.namespace, workload.labels), self.mesh_config, side,
            access_log=workload.access_log))

    def gateways_of(self, host: str) -> list[Gateway]:
        """The Gateways whose selector picks this host: it runs them as an edge proxy."""
        labels = self.registry.workloads[host].labels
        return [g for _, g in sorted(self.gateways.items()) if selects(g.selector, labels)]

    def sidecar(self, host: str) -> sidecar_mod.Sidecar | None:
        workload = self.registry.workloads[host]
        index = self._index("sidecar", self.sidecars)
        return self._by_selection("sidecar", workload, None, lambda: sidecar_mod.for_host(
            index.candidates(workload.namespace, workload.labels), workload.namespace, workload.labels))

    def visible_services(self, host: str) -> list[str]:
        """FQDNs this host's proxy is configured for: its Sidecar's egress hosts, plus what their routes use."""
        sidecar = self.sidecar(host)
        if sidecar is None:
            return sorted(self.registry.services)
        keys = tuple(sorted(g.key for g in self.gateways_of(host)))
        memo = ("visible", id(sidecar), keys)
        if memo not in self._memo:
            visible = sidecar.visible(self.registry.services)
            needed = set(visible)
            bound = [self.virtual_services.get(fqdn) for fqdn in visible]
            # an edge proxy also needs what its Gateways route to
            bound += [vs for vs in self.gateway_services if set(keys) & set(vs.gateways)]
            for vs in bound:
                for route in vs.routes() if vs else []:
                    needed |= {d.host for d in route.destinations} | {m.host for m in getattr(route, "mirrors", ())}
            self._memo[memo] = sorted(needed)
        return list(self._memo[memo])

    def outbound_policy_for(self, host: str) -> str:
        sidecar = self.sidecar(host)
        return (sidecar.outbound_policy if sidecar and sidecar.outbound_policy else None) or self.outbound_policy

    def subset_labels(self, host: str, subset: str | None) -> dict[str, str]:
        if subset is None:
            return {}
        return self.destination_rules[host].subsets[subset].labels


def _check_destinations(vs: VirtualService, rules: dict[str, DestinationRule]) -> None:
    for route in vs.routes():
        for dest in list(route.destinations) + list(getattr(route, "mirrors", ())):
            if dest.subset is None:
                continue
            rule = rules.get(dest.host)
            node = dest.node.get("subset")
            if rule is None:
                raise node.error(f"subset {show(dest.subset)} of {dest.host} is not defined: "
                                 "no DestinationRule has this host")
            if dest.subset not in rule.subsets:
                known = ", ".join(sorted(rule.subsets)) or "none"
                raise node.error(f"subset {show(dest.subset)} is not defined in {rule.doc.ref} ({rule.doc.file}); "
                                 f"its subsets: {known}")


def build(registry: Registry, docs: Iterable[Document], measured: Iterable[str] = ()) -> Mesh:
    """The registry (inventory) + the loaded documents -> the validated Mesh. ServiceEntries add their hosts to
    the registry; ``measured``: the services under a declared canary rollout (Mesh.measured). Raises MeshError
    (or MeshErrors with every mistake found) naming file, document and field."""
    docs = list(docs)
    errors: list[MeshError] = []
    entries = []
    gateways: dict[str, Gateway] = {}
    # ServiceEntries first: every other kind may name their hosts.
    for doc in docs:
        try:
            if doc.kind == "ServiceEntry":
                entry = serviceentry.parse(doc, registry)
                serviceentry.register(entry, registry)
                entries.append(entry)
            elif doc.kind == "Gateway":
                gateways[f"{doc.namespace}/{doc.name}"] = gateway_mod.parse(doc)
        except MeshError as exc:
            errors.append(exc)
    rules: dict[str, DestinationRule] = {}
    services: list[VirtualService] = []
    sidecars: list[sidecar_mod.Sidecar] = []
    envoy_filters: list[envoyfilter.EnvoyFilter] = []
    peer_auths: list[peerauthentication.PeerAuthentication] = []
    authz: list[authorizationpolicy.AuthorizationPolicy] = []
    telemetries: list[telemetry_mod.Telemetry] = []
    try:
        mesh_config = meshconfig.parse(registry.mesh_config_settings, registry)
    except MeshError as exc:
        errors.append(exc)
        mesh_config = meshconfig.MeshConfig(dict(meshconfig.BUILT_IN))
    for doc in docs:
        if doc.kind not in SUPPORTED_KINDS:
            errors.append(doc.error("kind", f"{doc.kind} is not supported by vmesh yet (see docs/reference/istio.md, 'Not supported yet')"))
            continue
        if doc.kind in ("ServiceEntry", "Gateway"):
            continue
        try:
            if doc.kind == "DestinationRule":
                rule = destinationrule.parse(doc, registry)
                if rule.host in rules:
                    other = rules[rule.host].doc
                    raise doc.error("spec.host", f"{other.ref} in {other.file} already configures host {rule.host}; "
                                                 "use one DestinationRule per host")
                rules[rule.host] = rule
            elif doc.kind == "EnvoyFilter":
                envoy_filters.append(envoyfilter.parse(doc))
            elif doc.kind == "Sidecar":
                sidecars.append(sidecar_mod.parse(doc, registry))
            elif doc.kind == "PeerAuthentication":
                peer_auths.append(peerauthentication.parse(doc))
            elif doc.kind == "AuthorizationPolicy":
                authz.append(authorizationpolicy.parse(doc))
            elif doc.kind == "Telemetry":
                telemetries.append(telemetry_mod.parse(doc))
            else:
                services.append(virtualservice.parse(doc, registry))
        except MeshError as exc:
            errors.append(exc)
    by_host: dict[str, VirtualService] = {}
    on_gateways: list[VirtualService] = []
    for vs in services:
        try:
            _check_destinations(vs, rules)
            _check_gateways(vs, gateways, on_gateways)
            if not vs.on_mesh:
                continue
            for host in vs.hosts:
                if host in by_host:
                    other = by_host[host].doc
                    raise vs.doc.error("spec.hosts", f"host {host} is already routed by {other.ref} in {other.file}; "
                                                     "Istio (istioctl analyze IST0109) refuses two VirtualServices "
                                                     "for one host")
                by_host[host] = vs
        except MeshError as exc:
            errors.append(exc)
    try:
        peerauthentication.check(peer_auths, registry.workloads.values())
    except MeshError as exc:
        errors.append(exc)
    try:
        telemetry_mod.check(telemetries, mesh_config)
        for workload in registry.workloads.values():
            telemetry_mod.chain(telemetries, workload.namespace, workload.labels)
    except MeshError as exc:
        errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else MeshErrors(errors)
    warnings = []
    for rule in rules.values():
        service = registry.services[rule.host]
        labels = [w.labels for w in service.workloads] + \
            [dict(e.labels) for e in (service.entry.endpoints if service.entry else [])]
        for subset in rule.subsets.values():
            if service.entry is not None and service.entry.resolution == "NONE":
                continue
            if not any(selects(subset.labels, have) for have in labels):
                warnings.append(f"{rule.doc.file}: {rule.doc.ref}: subset {subset.name!r} selects no host yet; "
                                "traffic sent to it gets 503")
    for ns in {s.doc.namespace for s in sidecars}:
        defaults = [s for s in sidecars if s.doc.namespace == ns and s.selector is None]
        if len(defaults) > 1:
            raise defaults[1].doc.error("spec.workloadSelector", f"{defaults[0].doc.ref} is already the Sidecar of "
                                                                 f"namespace {ns}; give one a workloadSelector")
    for gw in gateways.values():
        if not any(selects(gw.selector, w.labels) for w in registry.workloads.values()):
            selector = ", ".join(f"{k}: {v}" for k, v in gw.selector.items())
            warnings.append(f"{gw.doc.file}: {gw.doc.ref}: no mesh host has the labels {{{selector}}} yet; "
                            "give the ingress VM these vmesh_labels")
    return Mesh(registry, by_host, rules, warnings, sidecars, registry.outbound_policy, envoy_filters, gateways,
                on_gateways, entries, peer_auths, authz, telemetries, mesh_config, frozenset(measured))


def _check_gateways(vs: VirtualService, gateways: dict[str, Gateway], on_gateways: list[VirtualService]) -> None:
    """Every Gateway a VirtualService names exists, and no two VirtualServices route one host's HTTP on one
    Gateway."""
    node = Node(vs.doc, "spec.gateways", vs.doc.spec.get("gateways"))
    named = [(node.path, g) for g in vs.gateways]
    for kind in ("http", "tcp", "tls"):
        for i, route in enumerate(getattr(vs, kind)):
            for j, match in enumerate(route.matches):
                named += [(f"spec.{kind}[{i}].match[{j}].gateways", g) for g in match.gateways]
    for path, key in named:
        if key != virtualservice.MESH_GATEWAY and key not in gateways:
            known = ", ".join(sorted(gateways)) or "none"
            raise vs.doc.error(path, f"Gateway {key} is not defined (Gateways: {known})")
    for key in (g for g in vs.gateways if g != virtualservice.MESH_GATEWAY):
        for other in on_gateways:
            if key in other.gateways and vs.http and other.http and set(vs.hosts) & set(other.hosts):
                host = sorted(set(vs.hosts) & set(other.hosts))[0]
                raise node.error(f"host {host} on Gateway {key} is already routed by {other.doc.ref} in "
                                 f"{other.doc.file}")
    if any(g != virtualservice.MESH_GATEWAY for g in vs.gateways):
        on_gateways.append(vs)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether ``labels`` carry every label of ``selector`` (an empty selector selects everything)."""
    return all(labels.get(k) == v for k, v in selector.items())


__all__ = ["Mesh", "build", "selects"]
