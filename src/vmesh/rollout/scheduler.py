"""What the canary playbook does next (Flagger's scheduler): start, resume or abort each declared rollout, and
judge the stage in force to move on, repeat it, roll back or promote."""

from __future__ import annotations

import math
from typing import Any, Mapping

from vmesh.rollout import prometheus
from vmesh.rollout.metrics import Check, judge, numbers, window
from vmesh.rollout.settings import ABORTED, PROMOTED, ROLLED_BACK, RUNNING, Rollout, setting_error
from vmesh.rollout.state import analysis as analysis_of
from vmesh.rollout.state import stage_in_force, start


def plan(rollouts: Mapping[str, Rollout], states: Mapping[str, Mapping[str, Any]], *, only: str | None = None,
         abort: bool = False, now: float = 0.0) -> list[dict[str, Any]]:
    """What the canary playbook does for each declared rollout: ``start`` (a new state at the first stage),
    ``resume`` (a running state, at its stage), ``abort`` (all traffic back to stable) or ``none``, with a
    message for the person running it."""
    if only is not None and only not in rollouts:
        raise setting_error("vmesh_rollout", f"{only!r} has no rollout in vmesh_rollouts (declared: "
                                             f"{', '.join(sorted(rollouts)) or 'none'})")
    out = []
    for name, r in sorted(rollouts.items()):
        if only is not None and name != only:
            continue
        state = states.get(name)
        running = bool(state) and state.get("status") == RUNNING
        if abort:
            if running:
                ended = {**state, "status": ABORTED, "updated": now,
                         "reason": f"aborted at stage {stage_in_force(state).name} on request; all traffic back to "
                                   f"{state['stable']}"}
                out.append({"service": name, "action": "abort", "state": ended,
                            "message": f"{name}: {ended['reason']}"})
            else:
                out.append({"service": name, "action": "none", "state": state,
                            "message": f"{name}: no rollout under way, nothing to abort"})
        elif running and state["canary"] != r.canary:
            raise setting_error(f"vmesh_rollouts.{name}.canary",
                                f"a rollout of {name} {state['canary']} is under way (stage "
                                f"{stage_in_force(state).name}); finish it, or abort it with "
                                f"-e vmesh_rollout_abort=true, before rolling out {r.canary}")
        elif running:
            out.append({"service": name, "action": "resume", "state": dict(state),
                        "message": f"{name}: resuming the rollout of {state['canary']} at stage "
                                   f"{stage_in_force(state).name}"})
        elif state and state.get("status") == PROMOTED and state.get("stable") == r.canary:
            out.append({"service": name, "action": "none", "state": state,
                        "message": f"{name}: {r.canary} was promoted already; it is the stable version"})
        else:
            new = start(r, state, now)
            stage_names = ", ".join(s["name"] for s in new["stages"])
            again = f" (the last attempt was {state['status']})" if state and state.get("canary") == r.canary else ""
            out.append({"service": name, "action": "start", "state": new,
                        "message": f"{name}: rolling out {r.canary} against {r.stable}{again}: {stage_names}"})
    return out


def _running(state: Mapping[str, Any]) -> None:
    if state.get("status") != RUNNING:
        raise setting_error(f"rollouts/{state.get('service')}", f"the rollout is {state.get('status')}, not running")


def step(state: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any], started: float,
         ended: float) -> dict[str, Any]:
    """Judge the stage in force on what the sidecars measured in it, and move on: the next stage, the same stage
    again (a failed check while fewer than max_failed_checks failed), rollback, or promotion after the last."""
    _running(state)
    canary = window(before, after, state, state["canary"])
    stable = window(before, after, state, state["baseline"])
    return _advance(state, numbers(canary), numbers(stable), judge(canary, analysis_of(state)), started, ended)


def step_from_prometheus(state: Mapping[str, Any], answers: Mapping[str, Any], started: float,
                         ended: float) -> dict[str, Any]:
    """As :func:`step`, on Prometheus's answers to the stage's queries (vmesh.rollout.prometheus.queries)."""
    _running(state)
    canary, stable, checks = prometheus.judge(state, answers)
    return _advance(state, canary, stable, checks, started, ended)


def _advance(state: Mapping[str, Any], canary: Mapping[str, Any], stable: Mapping[str, Any], checks: list[Check],
             started: float, ended: float) -> dict[str, Any]:
    stage = stage_in_force(state)
    analysis = analysis_of(state)
    failed = [c for c in checks if not c.passed]
    new = {**state, "history": list(state["history"]), "updated": ended, "since": None}
    entry = {"stage": stage.name, "weight": stage.weight, "mirror": stage.mirror, "started": started, "ended": ended,
             "canary": dict(canary), "stable": dict(stable),
             "checks": [{"name": c.name, "value": c.value if c.value != math.inf else "inf", "threshold": c.threshold,
                         "passed": c.passed} for c in checks]}
    if not failed:
        entry["verdict"] = "passed"
        if state["stage"] + 1 < len(state["stages"]):
            new["stage"] = state["stage"] + 1
        else:
            new.update(status=PROMOTED, stable=state["canary"], stage=state["stage"],
                       reason=f"{state['canary']} promoted after {len(state['stages'])} stages: it is the stable "
                              f"version of {state['service']} now and takes all traffic")
    else:
        new["failed_checks"] = state["failed_checks"] + 1
        what = "; ".join(c.describe() for c in failed)
        if new["failed_checks"] >= analysis.max_failed_checks:
            entry["verdict"] = f"failed: {what}"
            new.update(status=ROLLED_BACK,
                       reason=f"rolled back to {state['stable']} at stage {stage.name}: the canary {state['canary']} "
                              f"failed {what}")
        else:
            entry["verdict"] = (f"failed ({new['failed_checks']} of {analysis.max_failed_checks} failed checks "
                                f"allowed), stage again: {what}")
    new["history"].append(entry)
    return new
