"""A rollout's step table, as the CLI and the canary playbook print it."""

from __future__ import annotations

import math
from typing import Any, Mapping

from vmesh.rollout.settings import RUNNING
from vmesh.rollout.state import stage_in_force


def report(history: list[Mapping[str, Any]]) -> str:
    """The steps as a table: one row per stage, with each version's numbers and the verdict."""
    header = ("stage", "canary rq", "canary ok %", "canary p99 ms", "stable rq", "stable ok %", "stable p99 ms",
              "verdict")
    rows = [header]
    for entry in history:
        cells = [entry["stage"]]
        for side in ("canary", "stable"):
            numbers = entry.get(side, {})
            cells += [str(numbers.get("requests", "")), _cell(numbers.get("success_rate")),
                      _cell(numbers.get("p99_ms"))]
        cells.append(entry.get("verdict", ""))
        rows.append(tuple(cells))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if value == math.inf else f"{value:.1f}"


def summary(state: Mapping[str, Any]) -> str:
    """The report of a rollout: what it is, the table of its stages and how it stands."""
    head = f"{state['service']}: {state['canary']} against {state['baseline']}, {state['status']}"
    lines = [head, report(state["history"]) if state["history"] else "(no stage judged yet)"]
    if state.get("reason"):
        lines.append(f"{state['service']}: {state['reason']}")
    elif state["status"] == RUNNING:
        lines.append(f"{state['service']}: at stage {stage_in_force(state).name}")
    return "\n".join(lines)
