"""Rollouts judged from Prometheus (analysis.source: prometheus), as Flagger's Istio observer judges them: the
settings, the PromQL each stage asks, and the verdicts on Prometheus's answers. (The same with a real Prometheus
scraping real proxies: tests/netns/test_bookinfo_observability.py.)"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from harness.mesh import bookinfo_hosts
from vmesh import registry as registry_mod, rollout
from vmesh.errors import MeshError
from vmesh.rollout import prometheus

REGISTRY = registry_mod.build(bookinfo_hosts())
ERRORS = {"name": "error-budget", "max": 2,
          "query": 'sum(rate(istio_requests_total{destination_workload=~"$target",response_code=~"5.."}[$interval]))'}


def started(**analysis) -> dict:
    declared = rollout.parse({"reviews": {"stable": "v1", "canary": "v3", "steps": [50, 100],
                                          "analysis": {"source": "prometheus", **analysis}}}, REGISTRY)
    (entry,) = rollout.plan(declared, {}, now=1000.0)
    return entry["state"]


def vector(value: str | None) -> dict:
    """Prometheus's answer to an instant query: one sample, or none."""
    result = [] if value is None else [{"metric": {}, "value": [1234.5, value]}]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def answers(requests, rate, p99, **custom) -> dict:
    out = {"requests": vector(requests), "success_rate": vector(rate), "p99_ms": vector(p99),
           "stable_requests": vector("400"), "stable_success_rate": vector("100"), "stable_p99_ms": vector("12.5")}
    out.update({f"metric:{name}": vector(value) for name, value in custom.items()})
    return out


def test_the_stage_asks_flaggers_queries_of_the_canary_hosts():
    state = started(metrics=[ERRORS])
    assert state["hosts"] == {"v1": ["reviews-v1"], "v3": ["reviews-v3"]}
    asked = prometheus.queries(state, 75)
    selector = ('reporter="destination",destination_workload_namespace="default",'
                'destination_workload=~"reviews\\\\-v3"')
    assert asked["requests"] == f"sum(increase(istio_requests_total{{{selector}}}[75s]))"
    assert asked["success_rate"] == (f'100 - (sum(rate(istio_requests_total{{{selector},response_code=~"5.*"}}[75s]))'
                                     f" or vector(0)) / sum(rate(istio_requests_total{{{selector}}}[75s])) * 100")
    assert asked["p99_ms"] == (f"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket"
                               f"{{{selector}}}[75s])) by (le))")
    assert 'destination_workload=~"reviews\\\\-v1"' in asked["stable_requests"]
    assert asked["metric:error-budget"] == ('sum(rate(istio_requests_total{destination_workload=~"reviews\\\\-v3",'
                                            'response_code=~"5.."}[75s]))')
    # the analysis's interval, when it gives one, is the range of every query
    assert "[2m]" in prometheus.queries(started(interval="2m"), 75)["requests"]


def test_a_healthy_canary_moves_on_and_a_faulty_one_is_rolled_back_naming_the_check():
    state = started(metrics=[ERRORS])
    passed = rollout.step_from_prometheus(state, answers("100.4", "100", "23.2", **{"error-budget": "0"}), 1001, 1061)
    entry = passed["history"][-1]
    assert (passed["status"], passed["stage"], entry["verdict"]) == ("running", 1, "passed")
    assert entry["canary"] == {"requests": 100, "errors": 0, "success_rate": 100.0, "p99_ms": 23.2}
    assert entry["stable"] == {"requests": 400, "errors": 0, "success_rate": 100.0, "p99_ms": 12.5}
    assert [c["name"] for c in entry["checks"]] == ["requests", "success rate", "p99 latency", "error-budget"]
    failed = rollout.step_from_prometheus(passed, answers("100", "90", "23", **{"error-budget": "4.5"}), 1062, 1122)
    assert failed["status"] == "rolled back"
    assert failed["reason"] == ("rolled back to v1 at stage 100%: the canary v3 failed success rate 90.0 % (needs >= "
                                "99 %); error-budget 4.5 (needs <= 2)")
    assert failed["history"][-1]["canary"]["errors"] == 10


@pytest.mark.parametrize("missing", [None, "NaN"])
def test_no_number_from_prometheus_fails_the_check(missing):
    """No series (nobody called the canary) or NaN (0/0) is no value, as a stage without requests."""
    state = rollout.step_from_prometheus(started(max_failed_checks=2), answers("0", missing, missing), 1001, 1061)
    assert state["status"] == "running" and state["stage"] == 0 and state["failed_checks"] == 1
    assert state["history"][-1]["verdict"].startswith(
        "failed (1 of 2 failed checks allowed), stage again: requests 0 (needs >= 20); success rate none")
    # an error from Prometheus is no number either
    broken = answers("100", "100", "20")
    broken["p99_ms"] = {"status": "error", "errorType": "bad_data", "error": "parse error"}
    assert rollout.step_from_prometheus(started(), broken, 1, 2)["status"] == "rolled back"


@pytest.mark.parametrize("analysis,expected", [
    ({"source": "grafana"}, "analysis.source: expected sidecars or prometheus, got 'grafana'"),
    ({"prometheus": "http://10.0.0.5:9090"}, "analysis.prometheus: is read from Prometheus: give source: prometheus"),
    ({"metrics": [ERRORS]}, "analysis.metrics: is read from Prometheus: give source: prometheus too"),
    ({"source": "prometheus", "prometheus": "10.0.0.5:9090"}, "analysis.prometheus: expected Prometheus's URL"),
    ({"source": "prometheus", "interval": "5 minutes"}, "analysis.interval: expected a Prometheus duration"),
    ({"source": "prometheus", "metrics": [{"name": "x", "query": "up"}]},
     "analysis.metrics[0]: give min, max or both"),
    ({"source": "prometheus", "metrics": [{"name": "x", "query": "rate(a{b=\"$workload\"}[1m])", "max": 1}]},
     "analysis.metrics[0].query: unknown placeholder 'workload' (known: $namespace, $service, $target, "
     "$stable_target, $interval)"),
    ({"source": "prometheus", "metrics": [ERRORS, ERRORS]}, "analysis.metrics[1].name: 'error-budget' is given twice"),
    ({"source": "prometheus", "metrics": [{**ERRORS, "threshold": 3}]}, "analysis.metrics[0].threshold: unknown"),
    ({"source": "prometheus", "metrics": [{**ERRORS, "name": "Error Budget"}]}, "analysis.metrics[0].name: expected"),
])
def test_mistakes_in_a_prometheus_analysis_name_the_setting(analysis, expected):
    with pytest.raises(MeshError) as err:
        rollout.parse({"reviews": {"stable": "v1", "canary": "v3", "analysis": analysis}}, REGISTRY)
    assert f"inventory: vmesh_rollouts.reviews.{expected}" in str(err.value), str(err.value)


def test_a_state_saved_before_prometheus_analysis_still_resumes():
    state = started()
    state["analysis"] = {k: state["analysis"][k] for k in ("success_rate", "p99_ms", "min_requests",
                                                           "max_failed_checks")}
    del state["hosts"]
    zero = {"reviews-v1": {"stats": []}}
    assert rollout.step(state, zero, zero, 1, 2)["failed_checks"] == 1  # judged, on the sidecars as before


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs Debian's prometheus (make setup)")
def test_prometheus_parses_every_query(tmp_path):
    """promtool checks each query as the expression of a recording rule: PromQL that Prometheus would refuse
    (a bad escape in the hosts' regular expression, say) fails here, not in the middle of a rollout."""
    asked = prometheus.queries(started(metrics=[ERRORS]), 75)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "rollout", "rules": [
        {"record": f"vmesh:{name.replace(':', '_').replace('-', '_')}", "expr": query}
        for name, query in asked.items()]}]}))
    checked = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(asked)} rules found" in checked.stdout
