"""The state of a rollout, kept on the controller."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vmesh.rollout.settings import RUNNING, Analysis, Rollout, Stage, stages

# One JSON document per service (the canary playbook keeps it in <inventory>/rollouts/<service>.json). It holds
# what the rollout was started with (versions, stages, analysis), so a resumed rollout runs the stages it began
# with, and what happened (the stage in force and since when its routing is on every host, the failed checks, the
# history of the stages with their numbers).

STABLE_ONLY = Stage("stable", 0, 0, ())


def start(r: Rollout, previous: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The state of a new rollout of ``r`` at its first stage; earlier attempts are kept in ``previous``."""
    earlier = list((previous or {}).get("previous", []))
    if previous:
        earlier.append({key: previous.get(key) for key in ("canary", "status", "started", "updated", "reason")})
    return {
        "service": r.service, "fqdn": r.fqdn, "ports": list(r.ports), "label": r.label,
        "stable": r.stable, "canary": r.canary, "baseline": r.stable, "step_seconds": r.step_seconds,
        "analysis": dataclasses.asdict(r.analysis), "hosts": {version: list(hosts) for version, hosts in r.hosts},
        "stages": [{"name": s.name, "weight": s.weight, "mirror": s.mirror, "match": [dict(m) for m in s.match]}
                   for s in stages(r)],
        "status": RUNNING, "stage": 0, "since": None, "failed_checks": 0, "history": [], "reason": "",
        "started": now, "updated": now, "previous": earlier[-10:],
    }


def _rollout_of(state: Mapping[str, Any]) -> Rollout:
    return Rollout(state["service"], state["fqdn"], state["label"], state["stable"], state["canary"], (100,),
                   int(state["step_seconds"]), None, (), analysis(state), tuple(state["ports"]))


def analysis(state: Mapping[str, Any]) -> Analysis:
    """The analysis a state was started with (a state saved before an analysis setting existed has its default)."""
    saved = dict(state["analysis"])
    saved["metrics"] = tuple(saved.get("metrics") or ())
    return Analysis(**saved)


def stage_in_force(state: Mapping[str, Any]) -> Stage:
    if state.get("status") != RUNNING:
        return STABLE_ONLY
    s = state["stages"][state["stage"]]
    return Stage(s["name"], int(s["weight"]), int(s["mirror"]), tuple(s["match"]))


def in_force(rollouts: Mapping[str, Rollout], states: Mapping[str, Mapping[str, Any]]
             ) -> dict[str, tuple[Rollout, Stage]]:
    """The routing each declared rollout puts in force: the stage a running rollout is at (from its state),
    otherwise all traffic to the stable version. A declared rollout that has not started yet keeps the canary
    hosts out of traffic, so they can be provisioned with the mesh before the rollout begins."""
    out = {}
    for name, r in rollouts.items():
        state = states.get(name)
        if state and state.get("status") == RUNNING:
            out[name] = (_rollout_of(state), stage_in_force(state))
        else:
            out[name] = (r, STABLE_ONLY)
    return out
