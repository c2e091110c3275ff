"""DestinationRule: subsets of a service's hosts by label."""

from __future__ import annotations

import dataclasses

from vmesh.documents import Document, show
from vmesh.istio import trafficpolicy
from vmesh.istio.fields import Node, check_host, root
from vmesh.istio.trafficpolicy import TrafficPolicy
from vmesh.registry import DNS_LABEL, Registry

@dataclasses.dataclass(frozen=True)
class Subset:
    name: str
    labels: dict[str, str]
    traffic_policy: TrafficPolicy | None = None


@dataclasses.dataclass
class DestinationRule:
    doc: Document
    host: str  # FQDN
    subsets: dict[str, Subset]
    traffic_policy: TrafficPolicy | None = None

    def policy(self, subset: str | None, port: int) -> TrafficPolicy:
        subset_policy = self.subsets[subset].traffic_policy if subset else None
        return trafficpolicy.effective(self.traffic_policy, subset_policy, port)


def parse(doc: Document, registry: Registry) -> DestinationRule:
    spec = root(doc).mapping(("host", "subsets", "exportTo", "trafficPolicy"), ("workloadSelector",))
    host_node = spec.get("host")
    host = registry.fqdn(check_host(host_node, host_node.string(required=True)), doc.namespace)
    if host not in registry.services:
        raise host_node.error(_unknown_host(host_node.value, host, registry))
    subsets: dict[str, Subset] = {}
    for item in spec.get("subsets").items():
        item.mapping(("name", "labels", "trafficPolicy"))
        name_node = item.get("name")
        name = name_node.string(required=True)
        if not DNS_LABEL.fullmatch(name) or len(name) > 63:
            raise name_node.error(f"invalid subset name {show(name)}: use a DNS label (lower-case letters, digits and "
                                  "'-', at most 63)")
        if name in subsets:
            raise name_node.error(f"subset {show(name)} is defined twice")
        subsets[name] = Subset(name, item.get("labels").string_map(), trafficpolicy.parse(item.get("trafficPolicy")))
    spec.get("exportTo").strings()
    return DestinationRule(doc, host, subsets, trafficpolicy.parse(spec.get("trafficPolicy")))


def _unknown_host(written: str, fqdn: str, registry: Registry) -> str:
    known = ", ".join(sorted(s.name if s.namespace == "default" else f"{s.name}.{s.namespace}"
                             for s in registry.services.values())) or "none"
    return f"host {show(written)} ({fqdn}) is not a service in the inventory (services: {known})"


def unknown_host(node: Node, registry: Registry) -> str:
    return _unknown_host(node.value, registry.fqdn(node.value, node.doc.namespace), registry)
