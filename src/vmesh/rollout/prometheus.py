"""A stage judged from Prometheus instead of the sidecars' own stats (``analysis.source: prometheus``), as Flagger's
Istio observer does: the canary's request success rate and p99 request duration from ``istio_requests_total`` and
``istio_request_duration_milliseconds``, as the canary's sidecars report them (``reporter="destination"``,
``destination_workload`` the canary hosts), and custom PromQL checks with their ranges.

The canary role runs the queries (:func:`queries`) when the stage has run and Prometheus has scraped it, and hands
the answers of its HTTP API here (:func:`judge`). A query that gives no number (no series, NaN: no request in the
range) counts as no value: a failed check, as a stage without requests is with the sidecars.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any, Mapping

from vmesh.rollout.metrics import Check, judge_numbers
from vmesh.rollout.state import analysis as analysis_of

REQUESTS = "requests"
SUCCESS_RATE = "success_rate"
P99 = "p99_ms"
STABLE = "stable_"  # the same queries for the stable version, for the report
CUSTOM = "metric:"


def target(hosts: list[str]) -> str:
    """A regular expression of exactly these hosts, written for the inside of a PromQL string ("...")."""
    regex = "|".join(re.escape(h) for h in hosts) or "^$"
    return regex.replace("\\", "\\\\").replace('"', '\\"')


def _selector(namespace: str, hosts: list[str]) -> str:
    return (f'reporter="destination",destination_workload_namespace="{namespace}",'
            f'destination_workload=~"{target(hosts)}"')


def _builtin(selector: str, interval: str) -> dict[str, str]:
    total = f"sum(rate(istio_requests_total{{{selector}}}[{interval}]))"
    failed = f'sum(rate(istio_requests_total{{{selector},response_code=~"5.*"}}[{interval}]))'
    return {
        REQUESTS: f"sum(increase(istio_requests_total{{{selector}}}[{interval}]))",
        # Flagger divides the non-5xx rate by the total, which has no value when every answer failed (no non-5xx
        # series): here no failure is 0 failures, and only no request at all gives no value
        SUCCESS_RATE: f"100 - ({failed} or vector(0)) / {total} * 100",
        P99: f"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{{selector}}}"
             f"[{interval}])) by (le))",
    }


def interval(state: Mapping[str, Any], seconds: float) -> str:
    """The range every query covers: the analysis's interval, else ``seconds`` (the stage and Prometheus's lag)."""
    return state["analysis"].get("interval") or f"{max(1, math.ceil(seconds))}s"


def queries(state: Mapping[str, Any], seconds: float) -> dict[str, str]:
    """{name: PromQL} for the stage in force: the canary's requests, success rate and p99, the stable version's,
    and each custom metric with its placeholders filled in."""
    namespace = state["fqdn"].split(".")[1]
    hosts = state.get("hosts") or {}
    canary, stable = hosts.get(state["canary"], []), hosts.get(state["baseline"], [])
    window = interval(state, seconds)
    out = _builtin(_selector(namespace, canary), window)
    out.update({STABLE + name: query for name, query in _builtin(_selector(namespace, stable), window).items()})
    fill = {"namespace": namespace, "service": state["service"], "interval": window,
            "target": target(canary), "stable_target": target(stable)}
    for metric in state["analysis"].get("metrics") or ():
        out[CUSTOM + metric["name"]] = string.Template(metric["query"]).substitute(fill)
    return out


def value(answer: Mapping[str, Any] | None) -> float | None:
    """The one number of an instant query's answer (Prometheus's JSON); None when it has none."""
    if not answer or answer.get("status") != "success":
        return None
    data = answer.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list) and len(result) == 2:
        raw = result[1]
    elif isinstance(result, list) and len(result) == 1:
        raw = (result[0].get("value") or [None, None])[1]
    else:
        return None  # no series, or several: not one number
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _numbers(answers: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    requests, rate, p99 = (value(answers.get(prefix + name)) for name in (REQUESTS, SUCCESS_RATE, P99))
    count = 0 if requests is None else int(round(requests))  # increase() extrapolates: a count, rounded
    errors = None if rate is None else int(round(count * (100.0 - rate) / 100.0))
    return {"requests": count, "errors": errors, "success_rate": rate,
            "p99_ms": None if p99 is None else (p99 if p99 != math.inf else "inf")}


def judge(state: Mapping[str, Any], answers: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[Check]]:
    """(canary numbers, stable numbers, checks) of a stage from Prometheus's answers ({query name: JSON})."""
    analysis = analysis_of(state)
    canary, stable = _numbers(answers, ""), _numbers(answers, STABLE)
    p99 = canary["p99_ms"]
    checks = judge_numbers(canary["requests"], canary["success_rate"], math.inf if p99 == "inf" else p99, analysis)
    for metric in analysis.metrics:
        got = value(answers.get(CUSTOM + metric["name"]))
        if "min" in metric:
            checks.append(Check(metric["name"], got, metric["min"], got is not None and got >= metric["min"], ">="))
        if "max" in metric:
            checks.append(Check(metric["name"], got, metric["max"], got is not None and got <= metric["max"], "<="))
    return canary, stable, checks
