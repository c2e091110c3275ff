"""PeerAuthentication: whether a workload's inbound ports take mTLS, plaintext, or both.

Scope and precedence, as Istio: a policy with a ``selector`` that picks the workload (its own namespace, or the
root namespace ``istio-system``), else its namespace's policy without selector, else the mesh-wide one (root
namespace, no selector); none at all means PERMISSIVE. ``UNSET`` inherits from the next scope up.
``portLevelMtls`` (only with a selector) overrides one workload port, the port the application listens on.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from vmesh.documents import Document, show
from vmesh.errors import MeshError
from vmesh.istio.fields import Node, root
from vmesh.istio.sidecar import ROOT_NAMESPACE
from vmesh.registry import Workload

MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
DEFAULT_MODE = "PERMISSIVE"


@dataclasses.dataclass
class PeerAuthentication:
    doc: Document
    selector: dict[str, str] | None
    mode: str
    ports: dict[int, str]  # workload port -> mode

    @property
    def mesh_wide(self) -> bool:
        return self.doc.namespace == ROOT_NAMESPACE and self.selector is None

    def selects(self, namespace: str, labels: dict[str, str]) -> bool:
        if self.selector is None:
            return False
        if self.doc.namespace not in (namespace, ROOT_NAMESPACE):
            return False
        return all(labels.get(k) == v for k, v in self.selector.items())


def _mode(node: Node) -> str:
    if not node.present:
        return "UNSET"
    mode = node.mapping(("mode",)).get("mode").string(default="UNSET")
    if mode not in MODES:
        raise node.get("mode").error(f"expected one of {', '.join(MODES)}, got {show(mode)}")
    return mode


def parse(doc: Document) -> PeerAuthentication:
    spec = root(doc).mapping(("selector", "mtls", "portLevelMtls"), ("targetRef", "targetRefs"))
    selector = None
    if spec.get("selector").present:
        selector = spec.get("selector").mapping(("matchLabels",)).get("matchLabels").string_map()
    ports: dict[int, str] = {}
    for key, node in spec.get("portLevelMtls").entries():
        try:
            number = int(key)
            if not 1 <= number <= 65535:
                raise ValueError
        except ValueError:
            raise node.error(f"expected a port number 1-65535 as key, got {show(key)}") from None
        ports[number] = _mode(node)
    if ports and not selector:
        raise spec.get("portLevelMtls").error("portLevelMtls applies only with a selector (Istio ignores it "
                                              "otherwise); add spec.selector.matchLabels")
    return PeerAuthentication(doc, selector, _mode(spec.get("mtls")), ports)


def check(policies: list[PeerAuthentication], workloads: Iterable[Workload]) -> None:
    """At most one mesh-wide policy, one namespace-wide policy per namespace, and one policy selecting each
    workload (Istio would pick the oldest; vmesh has no creation times, so it refuses the ambiguity)."""
    for workload in workloads:
        _selecting(policies, workload.namespace, workload.labels)
    seen: dict[str, PeerAuthentication] = {}
    for policy in policies:
        if policy.selector is not None:
            continue
        other = seen.setdefault(policy.doc.namespace, policy)
        if other is not policy:
            scope = "mesh" if policy.mesh_wide else f"namespace {policy.doc.namespace}"
            raise MeshError(f"{other.doc.ref} in {other.doc.file} is already the {scope}-wide PeerAuthentication; "
                            "keep one", file=policy.doc.file, doc=policy.doc.ref, field="spec.selector")


def _selecting(policies: list[PeerAuthentication], namespace: str, labels: dict[str, str]) -> list[PeerAuthentication]:
    """The policy whose selector picks the workload (none or one: two are refused)."""
    own = [p for p in policies if p.selects(namespace, labels)]
    if len(own) > 1:
        first, second = own[:2]
        raise MeshError(f"{first.doc.ref} in {first.doc.file} already selects this workload (labels {labels}); "
                        "Istio would pick the oldest, vmesh needs one", file=second.doc.file, doc=second.doc.ref,
                        field="spec.selector")
    return own


def mode_for(policies: list[PeerAuthentication], namespace: str, labels: dict[str, str], port: int | None) -> str:
    """The effective mTLS mode of one workload port (None: the workload-wide mode, which also holds for ports it
    does not declare): DISABLE, PERMISSIVE or STRICT."""
    own = _selecting(policies, namespace, labels)
    chain = own[:1]
    chain += [p for p in policies if p.selector is None and p.doc.namespace == namespace and not p.mesh_wide]
    chain += [p for p in policies if p.mesh_wide]
    if own and port is not None and own[0].ports.get(port, "UNSET") != "UNSET":
        return own[0].ports[port]
    for policy in chain:
        if policy.mode != "UNSET":
            return policy.mode
    return DEFAULT_MODE
