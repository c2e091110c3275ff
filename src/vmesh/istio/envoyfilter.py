"""EnvoyFilter: Istio's escape hatch, supported for the patches rate limiting needs.

Supported: ``applyTo`` HTTP_FILTER (INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST, ADD, REMOVE relative to a named
sub-filter), HTTP_ROUTE / VIRTUAL_HOST (MERGE, REMOVE) and CLUSTER (ADD, MERGE, REMOVE) in the SIDECAR_INBOUND,
SIDECAR_OUTBOUND, GATEWAY or ANY context, matched by listener port, virtual host name, route name/action and
cluster name/service/subset/port. Anything else is refused by name.
Patch values are Envoy configuration; they are merged the way Istio merges protobufs (maps recursively, lists
appended, scalars replaced) and checked by ``envoy --mode validate`` like everything vmesh renders.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from vmesh.documents import Document
from vmesh.istio.fields import Node, root

APPLY_TO = {"HTTP_FILTER": ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "ADD", "REMOVE"),
            "HTTP_ROUTE": ("MERGE", "REMOVE"), "VIRTUAL_HOST": ("MERGE", "REMOVE"), "CLUSTER": ("ADD", "MERGE", "REMOVE")}
CONTEXTS = ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "ANY")
ROUTE_ACTIONS = ("ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE")
# what each kind of match selects among: a listener's filters, route tables, clusters
MATCH_FOR = {"listener": ("HTTP_FILTER",), "routeConfiguration": ("HTTP_ROUTE", "VIRTUAL_HOST"), "cluster": ("CLUSTER",)}
HCM_NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")


@dataclasses.dataclass(frozen=True)
class ClusterMatch:
    """``match.cluster``: every field set must hold (Istio's clusterMatch); unset fields match anything."""
    name: str | None = None
    service: str | None = None
    subset: str | None = None
    port: int | None = None

    def matches(self, cluster_name: str) -> bool:
        if self.name is not None:
            return cluster_name == self.name
        parts = cluster_name.split("|")
        if len(parts) != 4:  # not direction|port|subset|host: only a name can select it
            return self == ClusterMatch()
        _, port, subset, host = parts
        return ((self.service is None or host == self.service) and (self.subset is None or subset == self.subset)
                and (self.port is None or port == str(self.port)))


@dataclasses.dataclass(frozen=True)
class Patch:
    apply_to: str
    context: str
    port: int | None
    sub_filter: str | None  # HTTP_FILTER: the filter to insert before/after or remove
    vhost: str | None
    route_name: str | None
    route_action: str
    operation: str
    value: Any
    cluster: ClusterMatch | None = None  # CLUSTER: which clusters MERGE and REMOVE change
    where: str = ""  # the patch's place in its document, for errors: spec.configPatches[i]


@dataclasses.dataclass
class EnvoyFilter:
    doc: Document
    selector: dict[str, str] | None
    patches: list[Patch]


def _snake(data: Any) -> Any:
    """Envoy's JSON takes camelCase and snake_case; merging needs one spelling. Map keys with dots (filter names)
    and "@type" are kept."""
    if isinstance(data, dict):
        return {(re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), k)
                 if isinstance(k, str) and "." not in k and not k.startswith("@") else k): _snake(v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [_snake(v) for v in data]
    return data


def _patch(node: Node) -> Patch:
    node.mapping(("applyTo", "match", "patch"))
    apply_to = node.get("applyTo").string(required=True)
    if apply_to not in APPLY_TO:
        raise node.get("applyTo").error(f"applyTo {apply_to} is not supported by vmesh yet "
                                        f"(supported: {', '.join(APPLY_TO)})")
    match = node.get("match").mapping(("context", "listener", "routeConfiguration", "proxy", "cluster"))
    for field, wanted in MATCH_FOR.items():
        if match.get(field).present and apply_to not in wanted:
            raise match.get(field).error(f"match.{field} does not select where applyTo {apply_to} applies "
                                         f"(it goes with {' or '.join(wanted)})")
    context = match.get("context").string(default="ANY")
    if context not in CONTEXTS:
        raise match.get("context").error(f"context {context} is not supported by vmesh yet "
                                         f"(supported: {', '.join(CONTEXTS)})")
    if match.get("proxy").present:
        match.get("proxy").mapping(("proxyVersion", "metadata"))
    port, sub_filter, vhost, route_name, action = None, None, None, None, "ANY"
    if match.get("listener").present:
        listener = match.get("listener").mapping(("portNumber", "filterChain", "name"))
        port = listener.get("portNumber").integer(minimum=1, maximum=65535)
        chain = listener.get("filterChain").mapping(("filter", "name", "sni", "transportProtocol",
                                                      "applicationProtocols", "destinationPort"))
        flt = chain.get("filter").mapping(("name", "subFilter"))
        name = flt.get("name").string()
        if name is not None and name not in HCM_NAMES:
            raise flt.get("name").error("vmesh patches only the HTTP connection manager's filters")
        sub_filter = flt.get("subFilter").mapping(("name",)).get("name").string()
        if chain.get("destinationPort").present:
            port = chain.get("destinationPort").integer(minimum=1, maximum=65535)
    if match.get("routeConfiguration").present:
        rc = match.get("routeConfiguration").mapping(("portNumber", "portName", "gateway", "name", "vhost"))
        port = rc.get("portNumber").integer(minimum=1, maximum=65535) or port
        vh = rc.get("vhost").mapping(("name", "route", "domainName"))
        vhost = vh.get("name").string() or None  # "" (the proto's default, as Istio's samples write it): any
        route = vh.get("route").mapping(("name", "action"))
        route_name = route.get("name").string()
        action = route.get("action").string(default="ANY")
        if action not in ROUTE_ACTIONS:
            raise route.get("action").error(f"expected one of {', '.join(ROUTE_ACTIONS)}")
    cluster = None
    if match.get("cluster").present:
        cm = match.get("cluster").mapping(("portNumber", "service", "subset", "name"))
        cluster = ClusterMatch(cm.get("name").string() or None, cm.get("service").string() or None,
                               cm.get("subset").string() or None,
                               cm.get("portNumber").integer(minimum=0, maximum=65535) or None)
    patch = node.get("patch").mapping(("operation", "value", "filterClass"), required=True)
    operation = patch.get("operation").string(required=True)
    if operation not in APPLY_TO[apply_to]:
        raise patch.get("operation").error(f"{operation} on {apply_to} is not supported by vmesh yet "
                                           f"(supported: {', '.join(APPLY_TO[apply_to])})")
    value = patch.get("value").value
    if operation != "REMOVE" and not isinstance(value, dict):
        raise patch.get("value").error("expected a mapping of Envoy configuration")
    if apply_to in ("HTTP_FILTER", "CLUSTER") and operation in ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "ADD") \
            and not (value or {}).get("name"):
        what = "an HTTP filter" if apply_to == "HTTP_FILTER" else "an added cluster"
        raise patch.get("value").get("name").error(f"{what} needs a name")
    if operation in ("INSERT_BEFORE", "INSERT_AFTER") and sub_filter is None:
        operation = "INSERT_FIRST" if operation == "INSERT_BEFORE" else "ADD"
    return Patch(apply_to, context, port, sub_filter, vhost, route_name, action, operation,
                 _snake(copy.deepcopy(value)) if value is not None else None, cluster, node.path)


def parse(doc: Document) -> EnvoyFilter:
    spec = root(doc).mapping(("workloadSelector", "configPatches", "priority"), ("targetRefs",))
    selector = None
    if spec.get("workloadSelector").present:
        selector = spec.get("workloadSelector").mapping(("labels",)).get("labels").string_map()
    spec.get("priority").integer()
    return EnvoyFilter(doc, selector, [_patch(p) for p in spec.get("configPatches").items(required=True, non_empty=True)])


def applies_to(flt: EnvoyFilter, namespace: str, labels: dict[str, str], root_namespace: str = "istio-system") -> bool:
    """Istio: a filter in the root namespace applies mesh-wide, else to its own namespace; then the selector."""
    if flt.doc.namespace not in (namespace, root_namespace):
        return False
    return flt.selector is None or all(labels.get(k) == v for k, v in flt.selector.items())


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        elif isinstance(value, list) and isinstance(target.get(key), list):
            target[key] = target[key] + copy.deepcopy(value)
        else:
            target[key] = copy.deepcopy(value)
