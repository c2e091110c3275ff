"""A rollout as the inventory declares it (``vmesh_rollouts``): its settings, checked, and its stages."""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Any, Mapping

from vmesh.errors import MeshError
from vmesh.registry import Registry

# Flagger's defaults: request success rate at least 99 %, p99 latency at most 500 ms; the numbers come from the
# client sidecars unless the rollout says Prometheus.
DEFAULT_ANALYSIS = {"success_rate": 99.0, "p99_ms": 500.0, "min_requests": 20, "max_failed_checks": 1,
                    "source": "sidecars", "prometheus": "", "interval": "", "metrics": []}
SOURCES = ("sidecars", "prometheus")
# What a custom metric's PromQL may name, as $name: replaced per stage (see vmesh.rollout.prometheus)
PLACEHOLDERS = ("namespace", "service", "target", "stable_target", "interval")
_DURATION = re.compile(r"^[1-9][0-9]*[smh]$")
_METRIC_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$")
DEFAULT_STEPS = (5, 25, 50, 100)
DEFAULT_STEP_SECONDS = 60
SETTINGS = ("stable", "canary", "steps", "step_seconds", "mirror", "match", "analysis", "label")
# How a rollout stands (its state's "status"); a promoted canary is the next rollout's stable version.
RUNNING, PROMOTED, ROLLED_BACK, ABORTED = "running", "promoted", "rolled back", "aborted"


@dataclasses.dataclass(frozen=True)
class Analysis:
    success_rate: float  # percent of non-5xx answers, at least
    p99_ms: float  # 99th percentile of the request time, at most
    min_requests: int  # fewer requests than this to the canary in a stage: the stage cannot be judged (a failed check)
    max_failed_checks: int  # this many failed checks roll back
    source: str = "sidecars"  # where the numbers come from: the client sidecars' stats, or Prometheus
    prometheus: str = ""  # Prometheus's URL (empty: the canary role's canary_prometheus_url, the monitoring host's)
    interval: str = ""  # the PromQL range of the queries (empty: the stage's length)
    metrics: tuple[dict[str, Any], ...] = ()  # custom PromQL checks: {name, query, min and/or max}


@dataclasses.dataclass(frozen=True)
class Rollout:
    service: str  # the inventory's vmesh_service
    fqdn: str
    label: str  # the label that tells versions apart
    stable: str
    canary: str
    steps: tuple[int, ...]
    step_seconds: int
    mirror: int | None
    match: tuple[dict[str, Any], ...]
    analysis: Analysis
    ports: tuple[int, ...] = ()  # the service's ports: its clusters are measured on each
    hosts: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (version, its hosts) of stable and canary: Prometheus's
    # destination_workload


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # "mirror 20%", "match", "5%", ... as the report shows it
    weight: int  # percent of the default route that goes to the canary
    mirror: int  # percent of requests copied to the canary
    match: tuple[dict[str, Any], ...]  # requests that go to the canary whatever the weight


def setting_error(field: str, message: str) -> MeshError:
    return MeshError(message, file="inventory", field=field)


def _number(value: Any, field: str, *, minimum: float, maximum: float | None = None, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise setting_error(field, f"expected {'a whole number' if integer else 'a number'}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise setting_error(field, f"expected {bound}, got {value!r}")
    return value


def _analysis(value: Any, field: str) -> Analysis:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise setting_error(field, "expected a mapping such as {success_rate: 99, p99_ms: 500}")
    unknown = sorted(set(value) - set(DEFAULT_ANALYSIS))
    if unknown:
        raise setting_error(f"{field}.{unknown[0]}", f"unknown setting (known: {', '.join(DEFAULT_ANALYSIS)})")
    merged = {**DEFAULT_ANALYSIS, **value}
    source = merged["source"]
    if source not in SOURCES:
        raise setting_error(f"{field}.source", f"expected {' or '.join(SOURCES)}, got {source!r}")
    url = merged["prometheus"]
    if not isinstance(url, str) or (url and not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", url)):
        raise setting_error(f"{field}.prometheus", f"expected Prometheus's URL, such as http://10.0.0.5:9090, got {url!r}")
    interval = merged["interval"]
    if not isinstance(interval, str) or (interval and not _DURATION.match(interval)):
        raise setting_error(f"{field}.interval", f"expected a Prometheus duration such as 1m or 90s, got {interval!r}")
    if source != "prometheus":
        for name in ("prometheus", "interval", "metrics"):
            if merged[name]:
                raise setting_error(f"{field}.{name}", "is read from Prometheus: give source: prometheus too")
    return Analysis(
        float(_number(merged["success_rate"], f"{field}.success_rate", minimum=0, maximum=100)),
        float(_number(merged["p99_ms"], f"{field}.p99_ms", minimum=0)),
        _number(merged["min_requests"], f"{field}.min_requests", minimum=1, integer=True),
        _number(merged["max_failed_checks"], f"{field}.max_failed_checks", minimum=1, integer=True),
        source, url.rstrip("/"), interval, _metrics(merged["metrics"], f"{field}.metrics"))


def _metrics(value: Any, field: str) -> tuple[dict[str, Any], ...]:
    """Custom checks, as Flagger's MetricTemplates: a PromQL query and the range its value must be in."""
    if not isinstance(value, list):
        raise setting_error(field, "expected a list of {name, query, min and/or max}")
    out, seen = [], set()
    for i, metric in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(metric, dict):
            raise setting_error(where, "expected a mapping with name, query, and min and/or max")
        unknown = sorted(set(metric) - {"name", "query", "min", "max"})
        if unknown:
            raise setting_error(f"{where}.{unknown[0]}", "unknown setting (known: name, query, min, max)")
        name = metric.get("name")
        if not isinstance(name, str) or not _METRIC_NAME.match(name):
            raise setting_error(f"{where}.name", f"expected a name of lower-case letters, digits, - and _, got {name!r}")
        if name in seen:
            raise setting_error(f"{where}.name", f"{name!r} is given twice")
        seen.add(name)
        query = metric.get("query")
        if not isinstance(query, str) or not query.strip():
            raise setting_error(f"{where}.query", "expected a PromQL query that gives one number")
        try:
            string.Template(query).substitute({p: "x" for p in PLACEHOLDERS})
        except (KeyError, ValueError) as exc:
            raise setting_error(f"{where}.query", f"unknown placeholder {exc} (known: "
                                                  f"{', '.join('$' + p for p in PLACEHOLDERS)})") from None
        bounds = {k: float(_number(metric[k], f"{where}.{k}", minimum=float("-inf")))
                  for k in ("min", "max") if k in metric}
        if not bounds:
            raise setting_error(where, "give min, max or both: the range the query's value must stay in")
        out.append({"name": name, "query": query, **bounds})
    return tuple(out)


def _steps(value: Any, field: str) -> tuple[int, ...]:
    if value is None:
        return DEFAULT_STEPS
    if not isinstance(value, list) or not value:
        raise setting_error(field, "expected a list of canary weights in percent, such as [5, 25, 50, 100]")
    steps = tuple(_number(v, f"{field}[{i}]", minimum=1, maximum=100, integer=True) for i, v in enumerate(value))
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise setting_error(f"{field}[{i}]", f"weights must grow step by step ({steps[i - 1]} then {steps[i]})")
    if steps[-1] != 100:
        raise setting_error(field, "the last step must be 100 (the canary takes all traffic before promotion), "
                                   f"got {steps[-1]}")
    return steps


def parse(settings: Any, registry: Registry, states: Mapping[str, Mapping[str, Any]] | None = None
          ) -> dict[str, Rollout]:
    """``vmesh_rollouts`` -> {service name: Rollout}, or MeshError naming the setting.

    ``states``: the saved state of earlier rollouts ({service: state}). Once a rollout was promoted, its
    canary is the service's stable version, whatever the inventory's ``stable`` still says (the next rollout
    starts from there); ``stable`` may then be left out."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise setting_error("vmesh_rollouts", "expected a mapping of service name to rollout, such as "
                                              "{reviews: {stable: v1, canary: v3}}")
    states = states or {}
    rollouts = {}
    for name, value in sorted(settings.items()):
        field = f"vmesh_rollouts.{name}"
        services = [s for s in registry.services.values() if s.entry is None and s.name == name]
        if not services:
            known = ", ".join(sorted({s.name for s in registry.services.values() if s.entry is None})) or "none"
            raise setting_error(field, f"{name!r} is not a service in the inventory (services: {known})")
        if len(services) > 1:
            raise setting_error(field, f"{name!r} is a service in several namespaces; vmesh rolls out one at a time")
        service = services[0]
        if not isinstance(value, dict):
            raise setting_error(field, "expected a mapping with stable, canary and steps")
        opaque = [p for p in service.ports if not p.is_http]
        if opaque:
            raise setting_error(field, f"{name} port {opaque[0].number} is {opaque[0].protocol}: a rollout is judged "
                                       "on HTTP answers (success rate, latency), so every port of the service must be "
                                       "http, http2 or grpc")
        unknown = sorted(set(value) - set(SETTINGS))
        if unknown:
            raise setting_error(f"{field}.{unknown[0]}", f"unknown setting (known: {', '.join(SETTINGS)})")
        label = value.get("label", "version")
        if not isinstance(label, str) or not label:
            raise setting_error(f"{field}.label", f"expected a label name, got {label!r}")
        versions = {w.labels.get(label) for w in service.workloads}
        saved = states.get(name) or {}
        chosen = {"stable": saved.get("stable") or value.get("stable"), "canary": value.get("canary")}
        for role in ("stable", "canary"):
            version = chosen[role]
            where = f"{field}.{role}" if role == "canary" or not saved.get("stable") else \
                f"{field}.stable (the stable version {version} comes from the state of the last rollout)"
            if not isinstance(version, str) or not version:
                raise setting_error(where, f"expected the {label} label of the {role} hosts, such as v1")
            if version not in versions:
                have = ", ".join(sorted(v for v in versions if v)) or "none"
                raise setting_error(where, f"no host of {name} has {label}: {version} (they have: {have}); "
                                           f"provision the {role} hosts first")
        promoted = saved.get("status") == PROMOTED and saved.get("stable") == chosen["canary"]
        if chosen["stable"] == chosen["canary"] and not promoted:
            raise setting_error(f"{field}.canary",
                                f"the canary is the stable version ({chosen['canary']}): nothing to roll out")
        mirror = value.get("mirror")
        if mirror is not None:
            mirror = _number(mirror, f"{field}.mirror", minimum=1, maximum=100, integer=True)
        match = value.get("match") or []
        if not isinstance(match, list) or not all(isinstance(m, dict) and m for m in match):
            raise setting_error(f"{field}.match", "expected a list of Istio HTTP match blocks, such as "
                                                  "[{headers: {end-user: {exact: jason}}}]")
        seconds = _number(value.get("step_seconds", DEFAULT_STEP_SECONDS), f"{field}.step_seconds", minimum=1,
                          integer=True)
        rollouts[name] = Rollout(name, service.fqdn, label, chosen["stable"], chosen["canary"],
                                 _steps(value.get("steps"), f"{field}.steps"), seconds, mirror, tuple(match),
                                 _analysis(value.get("analysis"), f"{field}.analysis"),
                                 tuple(p.number for p in service.ports),
                                 tuple((v, tuple(sorted(w.host for w in service.workloads if w.labels.get(label) == v)))
                                       for v in sorted({chosen["stable"], chosen["canary"]})))
    return rollouts


def stages(rollout: Rollout) -> list[Stage]:
    """Mirror first, then the matched requests alone, then the weights; the matched requests keep going to the
    canary through the weighted steps."""
    out = []
    if rollout.mirror:
        out.append(Stage(f"mirror {rollout.mirror}%", 0, rollout.mirror, ()))
    if rollout.match:
        out.append(Stage("match", 0, 0, rollout.match))
    out += [Stage(f"{weight}%", weight, 0, rollout.match) for weight in rollout.steps]
    return out
