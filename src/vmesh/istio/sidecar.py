"""Sidecar: which services a host's proxy knows (egress hosts) and what happens to unknown destinations.

Scope, as Istio: a Sidecar with a workloadSelector in the host's namespace, else the namespace's Sidecar without
selector, else the mesh-wide one in the root namespace (istio-system); none means every service is visible.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Any, Mapping

from vmesh.documents import Document, show
from vmesh.istio.fields import Node, gateway_host_problem, namespace_problem, root
from vmesh.registry import Registry

ROOT_NAMESPACE = "istio-system"
POLICIES = ("ALLOW_ANY", "REGISTRY_ONLY")
_WILDCARD = re.compile(r"[*?\[]")


@dataclasses.dataclass(frozen=True)
class EgressHost:
    namespace: str  # a namespace, "*" any, "." the Sidecar's own, "~" none
    name: str  # an FQDN or wildcard ("*", "*.example.com")


@dataclasses.dataclass
class Sidecar:
    doc: Document
    selector: dict[str, str] | None
    egress: list[EgressHost]
    outbound_policy: str | None

    def allows(self, fqdn: str, namespace: str) -> bool:
        for entry in self.egress:
            ns = self.doc.namespace if entry.namespace == "." else entry.namespace
            if ns == "~" or (ns != "*" and ns != namespace):
                continue
            if entry.name == "*" or fnmatch.fnmatchcase(fqdn, entry.name) or fqdn == entry.name:
                return True
        return False

    def visible(self, services: Mapping[str, Any]) -> set[str]:
        """The FQDNs of ``services`` (FQDN -> anything with a ``namespace``) that ``allows``: exact egress names
        are looked up, only wildcards are matched against every service."""
        exact = [e for e in self.egress if not _WILDCARD.search(e.name)]
        if len(exact) < len(self.egress):
            return {fqdn for fqdn, s in services.items() if self.allows(fqdn, s.namespace)}
        return {e.name for e in exact if e.name in services and self.allows(e.name, services[e.name].namespace)}


def _egress_host(node: Node) -> EgressHost:
    text = node.string(required=True)
    if "/" not in text:
        raise node.error(f"expected namespace/host such as './*' or 'istio-system/*', got {show(text)}")
    namespace, name = text.split("/", 1)
    if not namespace or not name:
        raise node.error(f"expected namespace/host such as './*', got {show(text)}")
    problem = namespace_problem(namespace.removeprefix("~") or "~", ("*", ".", "~"))
    if problem:
        raise node.error(f"invalid namespace {show(namespace)} in {show(text)}: {problem}")
    problem = gateway_host_problem(name, ip=False)
    if problem:
        raise node.error(f"invalid host {show(name)} in {show(text)}: {problem}")
    return EgressHost(namespace, name)


def parse(doc: Document, registry: Registry) -> Sidecar:
    spec = root(doc).mapping(("workloadSelector", "egress", "outboundTrafficPolicy"),
                             ("ingress", "inboundConnectionPool"))
    selector = None
    if spec.get("workloadSelector").present:
        if doc.namespace == ROOT_NAMESPACE:
            raise spec.get("workloadSelector").error("a Sidecar in the root namespace applies mesh-wide and takes no "
                                                     "workloadSelector")
        selector = spec.get("workloadSelector").mapping(("labels",)).get("labels").string_map()
    egress = []
    for item in spec.get("egress").items():
        item.mapping(("hosts", "port", "bind", "captureMode"))
        for unsupported in ("port", "bind", "captureMode"):
            if item.get(unsupported).present:
                raise item.get(unsupported).error(f"{unsupported} is not supported by vmesh yet")
        egress += [_egress_host(h) for h in item.get("hosts").items(required=True, non_empty=True)]
    policy = None
    if spec.get("outboundTrafficPolicy").present:
        node = spec.get("outboundTrafficPolicy").mapping(("mode",), ("egressProxy",))
        policy = node.get("mode").string(required=True)
        if policy not in POLICIES:
            raise node.get("mode").error(f"expected ALLOW_ANY or REGISTRY_ONLY, got {show(policy)}")
    if not egress:
        egress = [EgressHost("*", "*")]
    return Sidecar(doc, selector, egress, policy)


def for_host(sidecars: list[Sidecar], namespace: str, labels: dict[str, str]) -> Sidecar | None:
    own = [s for s in sidecars if s.doc.namespace == namespace]
    for sidecar in own:
        if sidecar.selector is not None and all(labels.get(k) == v for k, v in sidecar.selector.items()):
            return sidecar
    for sidecar in own:
        if sidecar.selector is None:
            return sidecar
    return next((s for s in sidecars if s.doc.namespace == ROOT_NAMESPACE and s.selector is None), None)
