"""Canary rollouts, the pure part: settings, stages, and judging a stage from Envoy's statistics."""

from __future__ import annotations

import math

import pytest

from conftest import DATA, bookinfo_hosts, destination_rules, resources
from vmesh import istio, registry as registry_mod, rollout
from vmesh.compile import render_host
from vmesh.errors import MeshError

REGISTRY = registry_mod.build(bookinfo_hosts())
FQDN = "reviews.default.svc.cluster.local"


def parse(settings):
    return rollout.parse(settings, REGISTRY)


def test_defaults_are_flaggers():
    (r,) = parse({"reviews": {"stable": "v1", "canary": "v3"}}).values()
    assert (r.fqdn, r.stable, r.canary, r.steps, r.step_seconds) == (FQDN, "v1", "v3", (5, 25, 50, 100), 60)
    assert r.analysis == rollout.Analysis(99.0, 500.0, 20, 1)


@pytest.mark.parametrize("settings,expected", [
    ({"ratings-db": {"stable": "v1", "canary": "v2"}}, "vmesh_rollouts.ratings-db: 'ratings-db' is not a service"),
    ({"reviews": {"stable": "v1", "canary": "v9"}}, "vmesh_rollouts.reviews.canary: no host of reviews has version: v9"
                                                    " (they have: v1, v2, v3); provision the canary hosts first"),
    ({"reviews": {"stable": "v1", "canary": "v1"}}, "vmesh_rollouts.reviews.canary: the canary is the stable version"),
    ({"reviews": {"stable": "v1", "canary": "v3", "steps": [5, 50, 25, 100]}},
     "vmesh_rollouts.reviews.steps[2]: weights must grow step by step (50 then 25)"),
    ({"reviews": {"stable": "v1", "canary": "v3", "steps": [10, 50]}},
     "vmesh_rollouts.reviews.steps: the last step must be 100"),
    ({"reviews": {"stable": "v1", "canary": "v3", "steps": [0, 100]}},
     "vmesh_rollouts.reviews.steps[0]: expected 1 to 100, got 0"),
    ({"reviews": {"stable": "v1", "canary": "v3", "analysis": {"p99": 300}}},
     "vmesh_rollouts.reviews.analysis.p99: unknown setting (known: success_rate, p99_ms, min_requests, "
     "max_failed_checks)"),
    ({"reviews": {"stable": "v1", "canary": "v3", "mirror": 150}}, "vmesh_rollouts.reviews.mirror: expected 1 to 100"),
    ({"reviews": {"stable": "v1", "canary": "v3", "match": {"headers": {}}}},
     "vmesh_rollouts.reviews.match: expected a list of Istio HTTP match blocks"),
    ({"reviews": {"stable": "v1", "canary": "v3", "speed": "fast"}}, "vmesh_rollouts.reviews.speed: unknown setting"),
])
def test_mistakes_name_the_setting(settings, expected):
    with pytest.raises(MeshError) as err:
        parse(settings)
    assert str(err.value).startswith("inventory: ") and expected in str(err.value), str(err.value)


def test_stages_mirror_then_match_then_weights():
    jason = {"headers": {"end-user": {"exact": "jason"}}}
    (r,) = parse({"reviews": {"stable": "v1", "canary": "v3", "steps": [10, 100], "mirror": 20,
                              "match": [jason]}}).values()
    assert [(s.name, s.weight, s.mirror, len(s.match)) for s in rollout.stages(r)] == [
        ("mirror 20%", 0, 20, 0), ("match", 0, 0, 1), ("10%", 10, 0, 1), ("100%", 100, 0, 1)]


def envoy_stats(cluster: str, completed: int | None, errors: int | None, cumulative: list[int]) -> dict:
    """An answer of /stats?format=json&histogram_buckets=cumulative, shaped as Envoy 1.40 gives it."""
    stats = []
    if completed is not None:
        stats.append({"name": f"cluster.{cluster}.upstream_rq_completed", "value": completed})
    if errors is not None:
        stats.append({"name": f"cluster.{cluster}.upstream_rq_5xx", "value": errors})
    bounds = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
    stats.append({"histograms": [{"name": f"cluster.{cluster}.upstream_rq_time", "buckets": [
        {"upper_bound": b, "interval": 0, "cumulative": c} for b, c in zip(bounds, cumulative)]}]})
    return {"stats": stats}


CANARY = f"outbound|9080|v3|{FQDN}"
FAST = [0, 0, 10, 60, 90, 100, 100, 100, 100, 100, 100, 100, 100]


def test_a_stage_is_the_difference_of_two_snapshots_over_all_client_hosts():
    before = [envoy_stats(CANARY, 100, None, FAST), envoy_stats(CANARY, None, None, [0] * 13)]
    # in the stage: host 1 sends 200 more (2 errors), host 2 its first 100 (all slow: 250-500 ms)
    after = [envoy_stats(CANARY, 300, 2, [c + 2 * (c - 0) for c in FAST]),
             envoy_stats(CANARY, 100, None, [0, 0, 0, 0, 0, 0, 0, 0, 100, 100, 100, 100, 100])]
    stage = rollout.measure(after, CANARY) - rollout.measure(before, CANARY)
    assert (stage.requests, stage.errors) == (300, 2)
    assert stage.success_rate == pytest.approx(99.333, abs=0.001)
    # 300 timed requests: 200 fast, 100 between 250 and 500 ms; the 99th percentile (297th) is near 500 ms
    assert 480 < stage.quantile(0.99) <= 500
    assert stage.quantile(0.5) <= 50


def test_quantile_interpolates_inside_the_bucket_and_knows_its_limits():
    m = rollout.Measure(100, 0, ((10.0, 0), (20.0, 50), (30.0, 100)))
    assert m.quantile(0.5) == 20.0 and m.quantile(0.75) == 25.0
    assert rollout.Measure().quantile(0.99) is None
    assert rollout.Measure(5, 0, ((10.0, 0), (20.0, 0))).quantile(0.99) is None
    assert rollout.Measure(1, 0, ((10.0, 0),)).success_rate == 100.0


def test_judge_names_each_failed_check_with_its_numbers():
    analysis = rollout.Analysis(99.0, 500.0, 20, 1)
    healthy = rollout.Measure(400, 0, ((100.0, 390), (250.0, 400)))
    assert all(c.passed for c in rollout.judge(healthy, analysis))
    faulty = rollout.Measure(400, 80, ((100.0, 390), (250.0, 400)))
    failed = [c.describe() for c in rollout.judge(faulty, analysis) if not c.passed]
    assert failed == ["success rate 80.0 % (needs >= 99 %)"]
    slow = rollout.Measure(400, 0, ((500.0, 10), (1000.0, 400)))
    assert [c.describe() for c in rollout.judge(slow, analysis) if not c.passed] == [
        "p99 latency 994.9 ms (needs <= 500 ms)"]
    idle = rollout.Measure(3, 0, ((5.0, 3),))
    assert [c.name for c in rollout.judge(idle, analysis) if not c.passed] == ["requests"]
    nothing = rollout.judge(rollout.Measure(), analysis)
    assert [c.passed for c in nothing] == [False, False, False]


def test_report_is_a_table_of_the_steps():
    text = rollout.report([
        {"stage": "5%", "canary": {"requests": 21, "success_rate": 100.0, "p99_ms": 12.5},
         "stable": {"requests": 400, "success_rate": 100.0, "p99_ms": 9.9}, "verdict": "passed"},
        {"stage": "25%", "canary": {"requests": 100, "success_rate": 80.0, "p99_ms": math.inf},
         "stable": {"requests": 300, "success_rate": None, "p99_ms": None}, "verdict": "failed: success rate"},
    ])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["stage", "canary", "rq"] and set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["5%", "21", "100.0", "12.5", "400", "100.0", "9.9", "passed"]
    assert lines[3].split() == ["25%", "100", "80.0", "inf", "300", "-", "-", "failed:", "success", "rate"]


# --- a stage's routing, compiled -------------------------------------------------------------------------------------

JASON = {"headers": {"end-user": {"exact": "jason"}}}
ALL_V1 = (DATA / "bookinfo" / "virtual-service-all-v1.yaml").read_text()


def compiled_routes(stage_index: int, *docs: str, with_rules: bool = True, **settings) -> list[dict]:
    r = parse({"reviews": {"stable": "v1", "canary": "v3", "steps": [25, 100], **settings}})["reviews"]
    stage = rollout.stages(r)[stage_index]
    sources = ([destination_rules()] if with_rules else []) + [(f"mesh/doc{i}.yaml", t) for i, t in enumerate(docs)]
    mesh = istio.build(bookinfo_hosts(), sources, rollouts={"reviews": (r, stage)})
    (config,) = resources(render_host(mesh, "productpage-v1").files, f"rds_outbound_9080__{FQDN}.json")
    return config["virtual_hosts"][0]["routes"]


def clusters_of(route: dict) -> dict[str, int]:
    target = route["route"]
    if "weighted_clusters" in target:
        return {c["name"].split("|")[2]: c["weight"] for c in target["weighted_clusters"]["clusters"]}
    return {target["cluster"].split("|")[2]: 100}


def test_a_weighted_stage_replaces_the_services_own_routes():
    (route,) = compiled_routes(0, ALL_V1)  # the user's all-v1 rule goes aside while the rollout runs
    assert clusters_of(route) == {"v1": 75, "v3": 25}
    (route,) = compiled_routes(1, ALL_V1)
    assert clusters_of(route) == {"v3": 100}


def test_match_and_mirror_stages():
    mirror, match, first, last = (compiled_routes(i, mirror=20, match=[JASON]) for i in range(4))
    (route,) = mirror
    assert clusters_of(route) == {"v1": 100}
    (policy,) = route["route"]["request_mirror_policies"]
    assert policy["cluster"] == f"outbound|9080|v3|{FQDN}"
    assert policy["runtime_fraction"]["default_value"] == {"numerator": 200000, "denominator": "MILLION"}  # 20 %
    jason, rest = match
    assert jason["match"]["headers"][0]["name"] == "end-user" and clusters_of(jason) == {"v3": 100}
    assert clusters_of(rest) == {"v1": 100}
    assert clusters_of(first[0]) == {"v3": 100} and clusters_of(first[1]) == {"v1": 75, "v3": 25}


def test_subsets_are_added_when_there_is_no_destination_rule():
    (route,) = compiled_routes(0, with_rules=False)
    assert clusters_of(route) == {"v1": 75, "v3": 25}


def test_a_subset_named_after_a_version_must_select_it():
    wrong = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v3, labels: {version: v2}}
"""
    expected = "DestinationRule/reviews: spec.subsets: subset 'v3' does not select version: v3"
    with pytest.raises(MeshError, match=expected):
        compiled_routes(0, wrong, with_rules=False)
