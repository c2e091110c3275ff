"""The mesh from its inputs: the inventory's host variables and the Istio documents, with the canary rollouts'
routing applied to the documents before the model is built (a rollout owns its service's routing while it runs).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from vmesh import registry as registry_mod
from vmesh import rollout
from vmesh.documents import load_sources
from vmesh.istio import model
from vmesh.istio.model import Mesh


def mesh(hosts: dict[str, dict[str, Any]], sources: Iterable[tuple[str, str]], *, later_replaces: bool = False,
         rollout_states: Mapping[str, Mapping[str, Any]] | None = None,
         rollouts: Mapping[str, tuple[Any, Any]] | None = None, drained: Iterable[str] = ()) -> Mesh:
    """Inventory host variables + (file, text) sources of Istio YAML -> the validated Mesh.

    The canary rollouts declared in ``vmesh_rollouts`` own their services' routing: each puts in force the
    stage its saved state (``rollout_states``, {service: state}) is at, or all traffic to the stable version
    (see :func:`vmesh.rollout.in_force`). ``rollouts`` ({service: (Rollout, Stage)}) names the stages directly.
    The hosts in ``drained`` (playbooks/drain.yml) are in no client's endpoints. The services of these rollouts
    are the Mesh's ``measured`` ones: their clients record what the rollouts are judged on.
    Raises MeshError (or MeshErrors with every mistake found) naming file, document and field.
    """
    registry = registry_mod.build(hosts, drained)
    docs = load_sources(sources, later_replaces=later_replaces)
    if rollouts is None:
        states = rollout_states or {}
        rollouts = rollout.in_force(rollout.parse(registry.rollout_settings, registry, states), states)
    if rollouts:
        docs = rollout.override(docs, rollouts, registry)
    return model.build(registry, docs, measured=[r.fqdn for r, _ in rollouts.values()])
