"""Canary rollouts driven from the inventory: the stages, and the judgement of each stage from what the sidecars
measured.

The inventory declares a rollout per service (mesh-wide ``vmesh_rollouts``)::

    vmesh_rollouts:
      reviews:
        stable: v1            # the version label of the hosts that serve now
        canary: v3            # the version label of the new hosts
        steps: [5, 25, 50, 100]
        step_seconds: 60
        mirror: 20            # optional first stage: copies of 20 % of requests to the canary, answers discarded
        match:                # optional stage: only these requests reach the canary (dark launch)
          - headers: {end-user: {exact: jason}}
        analysis: {success_rate: 99, p99_ms: 500, min_requests: 20, max_failed_checks: 1}

Pure Python, no I/O: the canary playbook reads Envoy's statistics on the client hosts and hands them here.
Metrics are those of the client-side sidecars: the subset clusters ``outbound|PORT|SUBSET|FQDN`` count every
request sent to each version (``upstream_rq_completed``, ``upstream_rq_5xx``) and time it
(``upstream_rq_time``, a histogram in milliseconds). A stage is judged on the difference between two snapshots,
so counts from before the stage never blur it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

from vmesh.documents import Document
from vmesh.errors import MeshError
from vmesh.names import outbound_name
from vmesh.registry import Registry

# Flagger's defaults: request success rate at least 99 %, p99 latency at most 500 ms.
DEFAULT_ANALYSIS = {"success_rate": 99.0, "p99_ms": 500.0, "min_requests": 20, "max_failed_checks": 1}
DEFAULT_STEPS = (5, 25, 50, 100)
DEFAULT_STEP_SECONDS = 60
SETTINGS = ("stable", "canary", "steps", "step_seconds", "mirror", "match", "analysis", "label")


@dataclasses.dataclass(frozen=True)
class Analysis:
    success_rate: float  # percent of non-5xx answers, at least
    p99_ms: float  # 99th percentile of the request time, at most
    min_requests: int  # fewer requests than this to the canary in a stage: the stage cannot be judged (a failed check)
    max_failed_checks: int  # this many failed checks roll back


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


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # "mirror 20%", "match", "5%", ... as the report shows it
    weight: int  # percent of the default route that goes to the canary
    mirror: int  # percent of requests copied to the canary
    match: tuple[dict[str, Any], ...]  # requests that go to the canary whatever the weight


def _err(field: str, message: str) -> MeshError:
    return MeshError(message, file="inventory", field=field)


def _number(value: Any, field: str, *, minimum: float, maximum: float | None = None, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _err(field, f"expected {'a whole number' if integer else 'a number'}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise _err(field, f"expected {bound}, got {value!r}")
    return value


def _analysis(value: Any, field: str) -> Analysis:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _err(field, "expected a mapping such as {success_rate: 99, p99_ms: 500}")
    unknown = sorted(set(value) - set(DEFAULT_ANALYSIS))
    if unknown:
        raise _err(f"{field}.{unknown[0]}", f"unknown setting (known: {', '.join(DEFAULT_ANALYSIS)})")
    merged = {**DEFAULT_ANALYSIS, **value}
    return Analysis(
        float(_number(merged["success_rate"], f"{field}.success_rate", minimum=0, maximum=100)),
        float(_number(merged["p99_ms"], f"{field}.p99_ms", minimum=0)),
        _number(merged["min_requests"], f"{field}.min_requests", minimum=1, integer=True),
        _number(merged["max_failed_checks"], f"{field}.max_failed_checks", minimum=1, integer=True))


def _steps(value: Any, field: str) -> tuple[int, ...]:
    if value is None:
        return DEFAULT_STEPS
    if not isinstance(value, list) or not value:
        raise _err(field, "expected a list of canary weights in percent, such as [5, 25, 50, 100]")
    steps = tuple(_number(v, f"{field}[{i}]", minimum=1, maximum=100, integer=True) for i, v in enumerate(value))
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise _err(f"{field}[{i}]", f"weights must grow step by step ({steps[i - 1]} then {steps[i]})")
    if steps[-1] != 100:
        raise _err(field, f"the last step must be 100 (the canary takes all traffic before promotion), got {steps[-1]}")
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
        raise _err("vmesh_rollouts", "expected a mapping of service name to rollout, such as {reviews: {stable: v1, "
                                     "canary: v3}}")
    states = states or {}
    rollouts = {}
    for name, value in sorted(settings.items()):
        field = f"vmesh_rollouts.{name}"
        services = [s for s in registry.services.values() if s.entry is None and s.name == name]
        if not services:
            known = ", ".join(sorted({s.name for s in registry.services.values() if s.entry is None})) or "none"
            raise _err(field, f"{name!r} is not a service in the inventory (services: {known})")
        if len(services) > 1:
            raise _err(field, f"{name!r} is a service in several namespaces; vmesh rolls out one at a time")
        service = services[0]
        if not isinstance(value, dict):
            raise _err(field, "expected a mapping with stable, canary and steps")
        opaque = [p for p in service.ports if not p.is_http]
        if opaque:
            raise _err(field, f"{name} port {opaque[0].number} is {opaque[0].protocol}: a rollout is judged on HTTP "
                              "answers (success rate, latency), so every port of the service must be http, http2 or "
                              "grpc")
        unknown = sorted(set(value) - set(SETTINGS))
        if unknown:
            raise _err(f"{field}.{unknown[0]}", f"unknown setting (known: {', '.join(SETTINGS)})")
        label = value.get("label", "version")
        if not isinstance(label, str) or not label:
            raise _err(f"{field}.label", f"expected a label name, got {label!r}")
        versions = {w.labels.get(label) for w in service.workloads}
        saved = states.get(name) or {}
        chosen = {"stable": saved.get("stable") or value.get("stable"), "canary": value.get("canary")}
        for role in ("stable", "canary"):
            version = chosen[role]
            where = f"{field}.{role}" if role == "canary" or not saved.get("stable") else \
                f"{field}.stable (the stable version {version} comes from the state of the last rollout)"
            if not isinstance(version, str) or not version:
                raise _err(where, f"expected the {label} label of the {role} hosts, such as v1")
            if version not in versions:
                have = ", ".join(sorted(v for v in versions if v)) or "none"
                raise _err(where, f"no host of {name} has {label}: {version} (they have: {have}); "
                                  f"provision the {role} hosts first")
        promoted = saved.get("status") == PROMOTED and saved.get("stable") == chosen["canary"]
        if chosen["stable"] == chosen["canary"] and not promoted:
            raise _err(f"{field}.canary", f"the canary is the stable version ({chosen['canary']}): nothing to roll out")
        mirror = value.get("mirror")
        if mirror is not None:
            mirror = _number(mirror, f"{field}.mirror", minimum=1, maximum=100, integer=True)
        match = value.get("match") or []
        if not isinstance(match, list) or not all(isinstance(m, dict) and m for m in match):
            raise _err(f"{field}.match", "expected a list of Istio HTTP match blocks, such as "
                                         "[{headers: {end-user: {exact: jason}}}]")
        seconds = _number(value.get("step_seconds", DEFAULT_STEP_SECONDS), f"{field}.step_seconds", minimum=1,
                          integer=True)
        rollouts[name] = Rollout(name, service.fqdn, label, chosen["stable"], chosen["canary"],
                                 _steps(value.get("steps"), f"{field}.steps"), seconds, mirror, tuple(match),
                                 _analysis(value.get("analysis"), f"{field}.analysis"),
                                 tuple(p.number for p in service.ports))
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


# --- what the sidecars measured -----------------------------------------------------------------------------------


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
    name: str  # "requests", "success rate", "p99 latency"
    value: float | None
    threshold: float
    passed: bool

    def describe(self) -> str:
        if self.value is None:
            shown = "none"
        else:
            shown = f"{self.value:.1f}" if isinstance(self.value, float) else str(self.value)
        relation = {"requests": ">=", "success rate": ">=", "p99 latency": "<="}[self.name]
        unit = {"requests": "", "success rate": " %", "p99 latency": " ms"}[self.name]
        return f"{self.name} {shown}{unit} (needs {relation} {self.threshold:g}{unit})"


def judge(canary: Measure, analysis: Analysis) -> list[Check]:
    """The checks of one stage, on what the canary got in it."""
    rate, p99 = canary.success_rate, canary.quantile(0.99)
    return [
        Check("requests", canary.requests, analysis.min_requests, canary.requests >= analysis.min_requests),
        Check("success rate", rate, analysis.success_rate, rate is not None and rate >= analysis.success_rate),
        Check("p99 latency", p99, analysis.p99_ms, p99 is not None and p99 <= analysis.p99_ms),
    ]


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


# --- the routing of a stage ----------------------------------------------------------------------------------------

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


# --- the state of a rollout, kept on the controller -----------------------------------------------------------------
#
# One JSON document per service (the canary playbook keeps it in <inventory>/rollouts/<service>.json). It holds
# what the rollout was started with (versions, stages, analysis), so a resumed rollout runs the stages it began
# with, and what happened (the stage in force and since when its routing is on every host, the failed checks, the
# history of the stages with their numbers).

RUNNING, PROMOTED, ROLLED_BACK, ABORTED = "running", "promoted", "rolled back", "aborted"
STABLE_ONLY = Stage("stable", 0, 0, ())


def start(r: Rollout, previous: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The state of a new rollout of ``r`` at its first stage; earlier attempts are kept in ``previous``."""
    earlier = list((previous or {}).get("previous", []))
    if previous:
        earlier.append({key: previous.get(key) for key in ("canary", "status", "started", "updated", "reason")})
    return {
        "service": r.service, "fqdn": r.fqdn, "ports": list(r.ports), "label": r.label,
        "stable": r.stable, "canary": r.canary, "baseline": r.stable, "step_seconds": r.step_seconds,
        "analysis": dataclasses.asdict(r.analysis),
        "stages": [{"name": s.name, "weight": s.weight, "mirror": s.mirror, "match": [dict(m) for m in s.match]}
                   for s in stages(r)],
        "status": RUNNING, "stage": 0, "since": None, "failed_checks": 0, "history": [], "reason": "",
        "started": now, "updated": now, "previous": earlier[-10:],
    }


def _rollout_of(state: Mapping[str, Any]) -> Rollout:
    return Rollout(state["service"], state["fqdn"], state["label"], state["stable"], state["canary"], (100,),
                   int(state["step_seconds"]), None, (), Analysis(**state["analysis"]), tuple(state["ports"]))


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


def plan(rollouts: Mapping[str, Rollout], states: Mapping[str, Mapping[str, Any]], *, only: str | None = None,
         abort: bool = False, now: float = 0.0) -> list[dict[str, Any]]:
    """What the canary playbook does for each declared rollout: ``start`` (a new state at the first stage),
    ``resume`` (a running state, at its stage), ``abort`` (all traffic back to stable) or ``none``, with a
    message for the person running it."""
    if only is not None and only not in rollouts:
        raise _err("vmesh_rollout", f"{only!r} has no rollout in vmesh_rollouts (declared: "
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
                out.append({"service": name, "action": "abort", "state": ended, "message": f"{name}: {ended['reason']}"})
            else:
                out.append({"service": name, "action": "none", "state": state,
                            "message": f"{name}: no rollout under way, nothing to abort"})
        elif running and state["canary"] != r.canary:
            raise _err(f"vmesh_rollouts.{name}.canary",
                       f"a rollout of {name} {state['canary']} is under way (stage {stage_in_force(state).name}); "
                       f"finish it, or abort it with -e vmesh_rollout_abort=true, before rolling out {r.canary}")
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


def _numbers(m: Measure) -> dict[str, Any]:
    p99 = m.quantile(0.99)
    return {"requests": m.requests, "errors": m.errors, "success_rate": m.success_rate,
            "p99_ms": None if p99 is None else (p99 if p99 != math.inf else "inf")}


def step(state: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any], started: float,
         ended: float) -> dict[str, Any]:
    """Judge the stage in force on what the sidecars measured in it, and move on: the next stage, the same stage
    again (a failed check while fewer than max_failed_checks failed), rollback, or promotion after the last."""
    if state.get("status") != RUNNING:
        raise _err(f"rollouts/{state.get('service')}", f"the rollout is {state.get('status')}, not running")
    stage = stage_in_force(state)
    analysis = Analysis(**state["analysis"])
    canary = window(before, after, state, state["canary"])
    stable = window(before, after, state, state["baseline"])
    checks = judge(canary, analysis)
    failed = [c for c in checks if not c.passed]
    new = {**state, "history": list(state["history"]), "updated": ended, "since": None}
    entry = {"stage": stage.name, "weight": stage.weight, "mirror": stage.mirror, "started": started, "ended": ended,
             "canary": _numbers(canary), "stable": _numbers(stable),
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


def summary(state: Mapping[str, Any]) -> str:
    """The report of a rollout: what it is, the table of its stages and how it stands."""
    head = f"{state['service']}: {state['canary']} against {state['baseline']}, {state['status']}"
    lines = [head, report(state["history"]) if state["history"] else "(no stage judged yet)"]
    if state.get("reason"):
        lines.append(f"{state['service']}: {state['reason']}")
    elif state["status"] == RUNNING:
        lines.append(f"{state['service']}: at stage {stage_in_force(state).name}")
    return "\n".join(lines)
