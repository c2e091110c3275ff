"""What the client sidecars measured of each version, and the checks a stage is judged on (Flagger's metrics
observers): counts and the request-time histogram of the subset clusters, between two snapshots."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

from vmesh.names import outbound_name
from vmesh.rollout.settings import Analysis

@dataclasses.dataclass(frozen=True)
class Measure:
    """Requests one version got, from all client sidecars together: counts and the request-time histogram
    (cumulative counts per upper bound in ms)."""

    requests: int = 0
    errors: int = 0  # 5xx answers
    buckets: tuple[tuple[float, int], ...] = ()

    def __sub__(self, earlier: Measure) -> Measure:
        before = dict(earlier.buckets)
        return Measure(self.requests - earlier.requests, self.errors - earlier.errors,
                       tuple((bound, count - before.get(bound, 0)) for bound, count in self.buckets))

    def __add__(self, other: Measure) -> Measure:
        merged: dict[float, int] = dict(self.buckets)
        for bound, count in other.buckets:
            merged[bound] = merged.get(bound, 0) + count
        return Measure(self.requests + other.requests, self.errors + other.errors, tuple(sorted(merged.items())))

    @property
    def success_rate(self) -> float | None:
        return None if self.requests <= 0 else 100.0 * (self.requests - self.errors) / self.requests

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the request time in ms, interpolated inside its bucket (as Prometheus does)."""
        total = self.buckets[-1][1] if self.buckets else 0
        if total <= 0:
            return None
        rank = q * total
        lower_bound, lower_count = 0.0, 0
        for bound, count in self.buckets:
            if count >= rank:
                if count == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
            lower_bound, lower_count = bound, count
        return math.inf  # beyond Envoy's largest bound


def measure(stats: Iterable[Mapping[str, Any]], cluster: str) -> Measure:
    """One version's Measure from the ``/stats?format=json&histogram_buckets=cumulative`` answers of several
    sidecars (counters Envoy has not created yet count as 0)."""
    total = Measure()
    prefix = f"cluster.{cluster}."
    for answer in stats:
        counters: dict[str, int] = {}
        buckets: tuple[tuple[float, int], ...] = ()
        for item in answer.get("stats", []):
            if "name" in item and str(item["name"]).startswith(prefix):
                counters[item["name"][len(prefix):]] = int(item.get("value", 0))
            for histogram in (item.get("histograms") or []) if isinstance(item.get("histograms"), list) else []:
                if histogram.get("name") == prefix + "upstream_rq_time":
                    buckets = tuple((float(b["upper_bound"]), int(b["cumulative"])) for b in histogram["buckets"])
        total = total + Measure(counters.get("upstream_rq_completed", 0), counters.get("upstream_rq_5xx", 0), buckets)
    return total


@dataclasses.dataclass(frozen=True)
class Check:
    name: str  # "requests", "success rate", "p99 latency", or a custom metric's name
    value: float | None
    threshold: float
    passed: bool
    relation: str = ""  # ">=" or "<=": a custom metric's; the built-in checks know theirs

    def describe(self) -> str:
        if self.value is None:
            shown = "none"
        else:
            shown = f"{self.value:.1f}" if isinstance(self.value, float) else str(self.value)
        relation = self.relation or {"requests": ">=", "success rate": ">=", "p99 latency": "<="}[self.name]
        unit = {"success rate": " %", "p99 latency": " ms"}.get(self.name, "") if not self.relation else ""
        return f"{self.name} {shown}{unit} (needs {relation} {self.threshold:g}{unit})"


def judge_numbers(requests: int, success_rate: float | None, p99: float | None, analysis: Analysis) -> list[Check]:
    """The built-in checks of one stage on the canary's numbers (None: no value, which fails its check)."""
    return [
        Check("requests", requests, analysis.min_requests, requests >= analysis.min_requests),
        Check("success rate", success_rate, analysis.success_rate,
              success_rate is not None and success_rate >= analysis.success_rate),
        Check("p99 latency", p99, analysis.p99_ms, p99 is not None and p99 <= analysis.p99_ms),
    ]


def judge(canary: Measure, analysis: Analysis) -> list[Check]:
    """The checks of one stage, on what the canary got in it."""
    return judge_numbers(canary.requests, canary.success_rate, canary.quantile(0.99), analysis)


def stats_filter(state: Mapping[str, Any]) -> str:
    """The admin /stats filter (a regular expression) that keeps only the stable and canary clusters' numbers."""
    ports = "|".join(str(p) for p in state["ports"])
    versions = "|".join(sorted({state["stable"], state["canary"]}))
    fqdn = state["fqdn"].replace(".", r"\.")
    return rf"^cluster\.outbound\|({ports})\|({versions})\|{fqdn}\.(upstream_rq_completed|upstream_rq_5xx|upstream_rq_time)$"


def window(before: Mapping[str, Any], after: Mapping[str, Any], state: Mapping[str, Any], version: str) -> Measure:
    """What one version got between two snapshots of every client sidecar ({host: /stats JSON}). A sidecar
    that restarted in between counts from zero. The version's cluster is its subset's: the rollout names subsets
    after the versions."""
    total = Measure()
    for host, answer in sorted(after.items()):
        for port in state["ports"]:
            cluster = outbound_name(port, version, state["fqdn"])
            now, then = measure([answer], cluster), measure([before.get(host) or {}], cluster)
            total = total + (now if now.requests < then.requests else now - then)
    return total


def numbers(m: Measure) -> dict[str, Any]:
    p99 = m.quantile(0.99)
    return {"requests": m.requests, "errors": m.errors, "success_rate": m.success_rate,
            "p99_ms": None if p99 is None else (p99 if p99 != math.inf else "inf")}
