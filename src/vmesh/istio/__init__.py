"""Istio documents read against the registry: the validated model the compiler turns into Envoy config."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from vmesh import registry as registry_mod
from vmesh.documents import Document, load_sources
from vmesh.errors import MeshError, MeshErrors
from vmesh.istio import destinationrule, virtualservice
from vmesh.istio.destinationrule import DestinationRule
from vmesh.istio.virtualservice import VirtualService
from vmesh.registry import Registry

SUPPORTED_KINDS = {"VirtualService", "DestinationRule"}


@dataclasses.dataclass
class Mesh:
    registry: Registry
    virtual_services: dict[str, VirtualService]  # by the service FQDN they route
    destination_rules: dict[str, DestinationRule]  # by host FQDN
    warnings: list[str]

    def subset_labels(self, host: str, subset: str | None) -> dict[str, str]:
        if subset is None:
            return {}
        return self.destination_rules[host].subsets[subset].labels


def _check_destinations(vs: VirtualService, rules: dict[str, DestinationRule]) -> None:
    for route in list(vs.http) + list(vs.tcp):
        for dest in list(route.destinations) + list(getattr(route, "mirrors", ())):
            if dest.subset is None:
                continue
            rule = rules.get(dest.host)
            node = dest.node.get("subset")
            if rule is None:
                raise node.error(f"subset {dest.subset!r} of {dest.host} is not defined: "
                                 "no DestinationRule has this host")
            if dest.subset not in rule.subsets:
                known = ", ".join(sorted(rule.subsets)) or "none"
                raise node.error(f"subset {dest.subset!r} is not defined in {rule.doc.ref} ({rule.doc.file}); "
                                 f"its subsets: {known}")


def build(hosts: dict[str, dict[str, Any]], sources: Iterable[tuple[str, str]]) -> Mesh:
    """Inventory host variables + (file, text) sources of Istio YAML -> the validated Mesh.

    Raises MeshError (or MeshErrors with every mistake found) naming file, document and field.
    """
    registry = registry_mod.build(hosts)
    docs = load_sources(sources)
    errors: list[MeshError] = []
    rules: dict[str, DestinationRule] = {}
    services: list[VirtualService] = []
    for doc in docs:
        if doc.kind not in SUPPORTED_KINDS:
            errors.append(doc.error("kind", f"{doc.kind} is not supported by vmesh yet (see README, 'Not supported')"))
            continue
        try:
            if doc.kind == "DestinationRule":
                rule = destinationrule.parse(doc, registry)
                if rule.host in rules:
                    other = rules[rule.host].doc
                    raise doc.error("spec.host", f"{other.ref} in {other.file} already configures host {rule.host}; "
                                                 "use one DestinationRule per host")
                rules[rule.host] = rule
            else:
                services.append(virtualservice.parse(doc, registry))
        except MeshError as exc:
            errors.append(exc)
    by_host: dict[str, VirtualService] = {}
    for vs in services:
        try:
            _check_destinations(vs, rules)
            for host in vs.hosts:
                if host in by_host:
                    other = by_host[host].doc
                    raise vs.doc.error("spec.hosts", f"host {host} is already routed by {other.ref} in {other.file}; "
                                                     "Istio (istioctl analyze IST0109) refuses two VirtualServices "
                                                     "for one host")
                by_host[host] = vs
        except MeshError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else MeshErrors(errors)
    warnings = []
    for rule in rules.values():
        service = registry.services[rule.host]
        for subset in rule.subsets.values():
            if not any(_selects(subset.labels, w.labels) for w in service.workloads):
                warnings.append(f"{rule.doc.file}: {rule.doc.ref}: subset {subset.name!r} selects no host yet; "
                                "traffic sent to it gets 503")
    return Mesh(registry, by_host, rules, warnings)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


selects = _selects
__all__ = ["Mesh", "build", "selects", "Document"]
