"""A PNG of a rollout: success rate and p99 latency per stage, canary against stable, with the thresholds.

matplotlib is imported here only, so the compiler never needs it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from vmesh.errors import MeshError


def _series(history: list[Mapping[str, Any]], side: str, key: str) -> list[float]:
    """One version's numbers per stage; a stage with none (no request, or beyond the histogram) is not drawn."""
    out: list[float] = []
    for entry in history:
        value = (entry.get(side) or {}).get(key)
        out.append(math.nan if value is None or value == "inf" else float(value))
    return out


def rollout_png(state: Mapping[str, Any], path: str) -> None:
    """Write the plot of ``state`` (a rollout's saved state) to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as exc:
        raise MeshError(f"matplotlib is needed for the plot ({exc}); pip install matplotlib") from None
    history = list(state.get("history") or [])
    labels = [f"{i + 1}. {entry['stage']}" for i, entry in enumerate(history)]
    x = list(range(len(history)))
    analysis = state["analysis"]
    figure, (rate_axes, p99_axes) = pyplot.subplots(2, 1, figsize=(8, 6), sharex=True)
    for side, version, style in (("canary", state["canary"], "o-"), ("stable", state["baseline"], "s--")):
        rate_axes.plot(x, _series(history, side, "success_rate"), style, label=f"{side} {version}")
        p99_axes.plot(x, _series(history, side, "p99_ms"), style, label=f"{side} {version}")
    rate_axes.axhline(analysis["success_rate"], color="red", linestyle=":", label=f"at least {analysis['success_rate']:g} %")
    p99_axes.axhline(analysis["p99_ms"], color="red", linestyle=":", label=f"at most {analysis['p99_ms']:g} ms")
    rate_axes.set_ylabel("success rate (%)")
    p99_axes.set_ylabel("p99 latency (ms)")
    p99_axes.set_xticks(x, labels, rotation=20)
    for axes in (rate_axes, p99_axes):
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize="small")
    for i, entry in enumerate(history):
        if not str(entry.get("verdict", "")).startswith("passed"):
            rate_axes.axvspan(i - 0.4, i + 0.4, color="red", alpha=0.1)
            p99_axes.axvspan(i - 0.4, i + 0.4, color="red", alpha=0.1)
    rate_axes.set_title(f"{state['service']}: {state['canary']} against {state['baseline']}, {state['status']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
