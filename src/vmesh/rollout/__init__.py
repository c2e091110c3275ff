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
        # or judged from Prometheus (Flagger's queries), with checks of your own:
        # analysis: {source: prometheus, metrics: [{name: errors, query: "...", max: 1}]}

Pure Python, no I/O: the canary playbook reads Envoy's statistics on the client hosts (or asks Prometheus) and
hands them here.
Metrics are those of the client-side sidecars: the subset clusters ``outbound|PORT|SUBSET|FQDN`` count every
request sent to each version (``upstream_rq_completed``, ``upstream_rq_5xx``) and time it
(``upstream_rq_time``, a histogram in milliseconds). A stage is judged on the difference between two snapshots,
so counts from before the stage never blur it.

One module per concern, as Flagger splits a canary: ``settings`` (the declaration, checked, and its stages),
``router`` (a stage's routing), ``metrics`` (what the sidecars measured, and the checks), ``prometheus`` (the
same checks from Prometheus, and custom ones), ``state`` (the document
kept on the controller), ``scheduler`` (start, resume, abort, judge and move on) and ``report`` (the step table).
"""

from __future__ import annotations

from vmesh.rollout.metrics import Check, Measure, judge, measure, stats_filter, window
from vmesh.rollout.report import report, summary
from vmesh.rollout.router import ROLLOUT_FILE, override, routes
from vmesh.rollout.prometheus import queries as prometheus_queries
from vmesh.rollout.scheduler import plan, step, step_from_prometheus
from vmesh.rollout.settings import (ABORTED, DEFAULT_ANALYSIS, DEFAULT_STEP_SECONDS, DEFAULT_STEPS, PROMOTED,
                                    ROLLED_BACK, RUNNING, SETTINGS, Analysis, Rollout, Stage, parse, stages)
from vmesh.rollout.state import STABLE_ONLY, in_force, stage_in_force, start

__all__ = [
    "ABORTED", "DEFAULT_ANALYSIS", "DEFAULT_STEPS", "DEFAULT_STEP_SECONDS", "PROMOTED", "ROLLED_BACK", "ROLLOUT_FILE",
    "RUNNING", "SETTINGS", "STABLE_ONLY", "Analysis", "Check", "Measure", "Rollout", "Stage", "in_force", "judge",
    "measure", "override", "parse", "plan", "report", "routes", "stage_in_force", "stages", "start", "stats_filter",
    "step", "step_from_prometheus", "prometheus_queries", "summary", "window",
]
