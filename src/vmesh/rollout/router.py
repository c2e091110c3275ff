"""The routing of a stage (Flagger's router): the service's mesh routes replaced by the stage's, its
DestinationRule given subsets named after the versions."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vmesh.documents import Document
from vmesh.registry import Registry
from vmesh.rollout.settings import Rollout, Stage

ROLLOUT_FILE = "vmesh_rollouts"  # how messages name the documents a rollout writes


def _host_fqdns(doc: Document, registry: Registry) -> set[str]:
    hosts = doc.spec.get("hosts") if isinstance(doc.spec, dict) else None
    return {registry.fqdn(str(h), doc.namespace) for h in hosts} if isinstance(hosts, list) else set()


def override(docs: list[Document], active: Mapping[str, tuple[Rollout, Stage]],
             registry: Registry) -> list[Document]:
    """The mesh documents with the routing of each service under rollout replaced by its stage's: the rollout
    owns that service's mesh routes while it runs (its VirtualService goes aside; Gateway routes stay), and its
    DestinationRule gains the subsets of the stable and canary versions (named after them) when it lacks them."""
    if not active:
        return docs
    by_fqdn = {r.fqdn: (r, stage) for r, stage in active.values()}
    out: list[Document] = []
    rules_seen: set[str] = set()
    for doc in docs:
        if doc.kind == "VirtualService" and doc.spec.get("gateways") in (None, [], ["mesh"]):
            hosts = _host_fqdns(doc, registry)
            routed = hosts & set(by_fqdn)
            if routed and len(hosts) > 1:
                host = sorted(routed)[0]
                raise doc.error("spec.hosts", f"routes {host} and other hosts; give {host} a VirtualService of its "
                                              "own to roll it out")
            if routed:
                continue
        if doc.kind == "DestinationRule":
            host = registry.fqdn(str(doc.spec.get("host", "")), doc.namespace)
            if host in by_fqdn:
                rules_seen.add(host)
                doc = _with_subsets(doc, by_fqdn[host][0])
        out.append(doc)
    for fqdn, (r, stage) in sorted(by_fqdn.items()):
        namespace = fqdn.split(".")[1]
        if fqdn not in rules_seen:
            out.append(_with_subsets(Document("DestinationRule", f"vmesh-rollout-{r.service}", namespace,
                                              {"host": fqdn}, ROLLOUT_FILE, 0), r))
        out.append(Document("VirtualService", f"vmesh-rollout-{r.service}", namespace,
                            {"hosts": [fqdn], "http": routes(r, stage)}, ROLLOUT_FILE, 0))
    return out


def _with_subsets(doc: Document, r: Rollout) -> Document:
    subsets = [dict(s) for s in doc.spec.get("subsets") or []]
    for version in (r.stable, r.canary):
        have = next((s for s in subsets if s.get("name") == version), None)
        if have is None:
            subsets.append({"name": version, "labels": {r.label: version}})
        elif (have.get("labels") or {}).get(r.label) != version:
            raise doc.error("spec.subsets", f"subset {version!r} does not select {r.label}: {version}; the rollout of "
                                            f"{r.service} sends to subsets named after the versions")
    return dataclasses.replace(doc, spec={**doc.spec, "subsets": subsets})


def routes(r: Rollout, stage: Stage) -> list[dict[str, Any]]:
    """Istio http routes of one stage: matched requests to the canary, the rest by weight, a share mirrored."""
    def to(version: str, weight: int | None = None) -> dict[str, Any]:
        destination: dict[str, Any] = {"destination": {"host": r.fqdn, "subset": version}}
        if weight is not None:
            destination["weight"] = weight
        return destination

    out: list[dict[str, Any]] = []
    if stage.match:
        out.append({"name": "canary-match", "match": [dict(m) for m in stage.match], "route": [to(r.canary)]})
    if stage.weight == 0:
        default: dict[str, Any] = {"route": [to(r.stable)]}
    elif stage.weight == 100:
        default = {"route": [to(r.canary)]}
    else:
        default = {"route": [to(r.stable, 100 - stage.weight), to(r.canary, stage.weight)]}
    if stage.mirror:
        default["mirror"] = {"host": r.fqdn, "subset": r.canary}
        default["mirrorPercentage"] = {"value": float(stage.mirror)}
    out.append({"name": "canary-weights", **default})
    return out
