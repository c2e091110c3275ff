"""Canary rollouts, the pure part: settings, stages, and judging a stage from Envoy's statistics."""

from __future__ import annotations

import math

import pytest

from harness import DATA
from harness.mesh import bookinfo_hosts, destination_rules, outbound_vhost, resources
from vmesh import load, registry as registry_mod, rollout
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
     "max_failed_checks, source, prometheus, interval, metrics)"),
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
    mesh = load.mesh(bookinfo_hosts(), sources, rollouts={"reviews": (r, stage)})
    return outbound_vhost(render_host(mesh, "productpage-v1").files, FQDN)["routes"]


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


# --- the state kept on the controller: start, stages judged one by one, rollback, promotion, resume, abort ----------

STABLE = f"outbound|9080|v1|{FQDN}"
SLOW = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100, 100, 100]  # every request between 1 and 2.5 s


def snapshot(canary: tuple[int, int, list[int]], stable: tuple[int, int, list[int]]) -> dict:
    """{host: /stats answer} of one client sidecar (productpage-v1) with both versions' clusters."""
    a, b = envoy_stats(CANARY, *canary), envoy_stats(STABLE, *stable)
    return {"productpage-v1": {"stats": a["stats"] + b["stats"]}}


ZERO = snapshot((0, 0, [0] * 13), (0, 0, [0] * 13))
HEALTHY = snapshot((100, 0, FAST), (400, 0, [4 * c for c in FAST]))


def started(**settings) -> dict:
    declared = parse({"reviews": {"stable": "v1", "canary": "v3", "steps": [10, 100], **settings}})
    (entry,) = rollout.plan(declared, {}, now=1000.0)
    assert entry["action"] == "start"
    return entry["state"]


def test_a_healthy_canary_goes_through_every_stage_and_is_promoted():
    state = started()
    assert [s["name"] for s in state["stages"]] == ["10%", "100%"]
    assert rollout.stage_in_force(state).weight == 10
    state = rollout.step(state, ZERO, HEALTHY, 1001.0, 1061.0)
    assert (state["status"], state["stage"], state["history"][-1]["verdict"]) == ("running", 1, "passed")
    assert state["history"][-1]["canary"]["requests"] == 100 and state["history"][-1]["stable"]["requests"] == 400
    state = rollout.step(state, ZERO, HEALTHY, 1062.0, 1122.0)
    assert (state["status"], state["stable"], state["baseline"]) == ("promoted", "v3", "v1")
    assert "v3 promoted after 2 stages" in state["reason"]
    # once promoted, the service routes to v3 alone, and the inventory's "stable: v1" no longer says otherwise
    declared = rollout.parse({"reviews": {"stable": "v1", "canary": "v3"}}, REGISTRY, {"reviews": state})
    ((r, stage),) = rollout.in_force(declared, {"reviews": state}).values()
    assert (r.stable, stage.weight) == ("v3", 0)
    (entry,) = rollout.plan(declared, {"reviews": state})
    assert entry["action"] == "none" and "promoted already" in entry["message"]
    # the next rollout starts from v3
    declared = rollout.parse({"reviews": {"canary": "v2"}}, REGISTRY, {"reviews": state})
    (entry,) = rollout.plan(declared, {"reviews": state})
    assert (entry["action"], entry["state"]["stable"], entry["state"]["canary"]) == ("start", "v3", "v2")
    assert entry["state"]["previous"][-1]["status"] == "promoted"


def test_a_faulty_canary_is_rolled_back_and_the_report_names_the_check():
    state = started()
    faulty = snapshot((100, 20, FAST), (400, 0, [4 * c for c in FAST]))
    state = rollout.step(state, ZERO, faulty, 1001.0, 1061.0)
    assert state["status"] == "rolled back" and state["stable"] == "v1"
    assert state["reason"] == ("rolled back to v1 at stage 10%: the canary v3 failed success rate 80.0 % "
                               "(needs >= 99 %)")
    ((_, stage),) = rollout.in_force({"reviews": parse({"reviews": {"stable": "v1", "canary": "v3"}})["reviews"]},
                                     {"reviews": state}).values()
    assert stage == rollout.STABLE_ONLY
    text = rollout.summary(state)
    assert text.splitlines()[0] == "reviews: v3 against v1, rolled back"
    assert "failed: success rate 80.0 %" in text and text.endswith(state["reason"])
    slow = rollout.step(started(), ZERO, snapshot((100, 0, SLOW), (400, 0, FAST)), 1.0, 2.0)
    assert slow["status"] == "rolled back" and "p99 latency" in slow["reason"]


def test_a_failed_check_repeats_the_stage_until_max_failed_checks():
    state = started(analysis={"max_failed_checks": 2})
    idle = snapshot((5, 0, [0, 0, 5] + [5] * 10), (400, 0, FAST))
    state = rollout.step(state, ZERO, idle, 1.0, 2.0)
    assert (state["status"], state["stage"], state["failed_checks"]) == ("running", 0, 1)
    assert state["history"][-1]["verdict"].startswith("failed (1 of 2 failed checks allowed), stage again: requests 5")
    state = rollout.step(state, ZERO, idle, 3.0, 4.0)
    assert state["status"] == "rolled back"


def test_a_sidecar_restarted_in_a_stage_counts_from_zero():
    before = snapshot((1000, 0, [10 * c for c in FAST]), (0, 0, [0] * 13))
    state = rollout.step(started(), before, HEALTHY, 1.0, 2.0)
    assert state["history"][-1]["canary"]["requests"] == 100


def test_resume_and_abort():
    state = rollout.step(started(), ZERO, HEALTHY, 1.0, 2.0)
    declared = parse({"reviews": {"stable": "v1", "canary": "v3"}})
    (entry,) = rollout.plan(declared, {"reviews": state})
    assert entry["action"] == "resume" and entry["state"]["stage"] == 1 and "at stage 100%" in entry["message"]
    ((_, stage),) = rollout.in_force(declared, {"reviews": state}).values()
    assert stage.weight == 100  # site.yml during a rollout keeps the stage in force
    (entry,) = rollout.plan(declared, {"reviews": state}, abort=True, now=5.0)
    assert entry["action"] == "abort" and entry["state"]["status"] == "aborted"
    assert entry["message"] == "reviews: aborted at stage 100% on request; all traffic back to v1"
    (nothing,) = rollout.plan(declared, {"reviews": entry["state"]}, abort=True)
    assert nothing["action"] == "none"
    (again,) = rollout.plan(declared, {"reviews": entry["state"]})
    assert again["action"] == "start" and "(the last attempt was aborted)" in again["message"]
    other = parse({"reviews": {"stable": "v1", "canary": "v2"}})
    with pytest.raises(MeshError, match=r"vmesh_rollouts.reviews.canary: a rollout of reviews v3 is under way "
                                        r"\(stage 100%\); finish it, or abort it"):
        rollout.plan(other, {"reviews": state})
    with pytest.raises(MeshError, match="'ratings' has no rollout in vmesh_rollouts"):
        rollout.plan(declared, {}, only="ratings")


def test_a_declared_rollout_keeps_the_canary_out_until_it_starts():
    mesh = load.mesh({h: {**v, "vmesh_rollouts": {"reviews": {"stable": "v1", "canary": "v3"}}}
                        for h, v in bookinfo_hosts().items()}, [destination_rules()])
    (route,) = outbound_vhost(render_host(mesh, "productpage-v1").files, FQDN)["routes"]
    assert clusters_of(route) == {"v1": 100}


def test_the_stats_filter_keeps_both_versions_clusters():
    import re

    pattern = re.compile(rollout.stats_filter(started()))
    assert pattern.search(f"cluster.{CANARY}.upstream_rq_completed")
    assert pattern.search(f"cluster.{STABLE}.upstream_rq_time")
    assert not pattern.search(f"cluster.outbound|9080|v2|{FQDN}.upstream_rq_completed")
    assert not pattern.search(f"cluster.{CANARY}.upstream_rq_total")


def test_the_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from vmesh import plot

    state = rollout.step(started(), ZERO, HEALTHY, 1.0, 2.0)
    plot.rollout_png(state, str(tmp_path / "reviews.png"))
    assert (tmp_path / "reviews.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tcp_service_cannot_be_rolled_out():
    hosts = bookinfo_hosts()
    for host in ("ratings-v1",):
        hosts[host]["vmesh_ports"] = [{"port": 9080, "protocol": "tcp", "name": "tcp"}]
    hosts["ratings-v2"] = {**hosts["ratings-v1"], "vmesh_labels": {"version": "v2"}, "ansible_host": "10.0.0.99"}
    with pytest.raises(MeshError, match=r"^inventory: vmesh_rollouts.ratings: ratings port 9080 is tcp: a rollout is "
                                        r"judged on HTTP answers"):
        rollout.parse({"ratings": {"stable": "v1", "canary": "v2"}}, registry_mod.build(hosts))


def test_two_rollouts_route_their_services_each_by_its_own_state():
    hosts = bookinfo_hosts()
    hosts["ratings-v2"] = {**hosts["ratings-v1"], "vmesh_labels": {"version": "v2"}, "ansible_host": "10.0.0.99"}
    settings = {"reviews": {"stable": "v1", "canary": "v3", "steps": [10, 100]},
                "ratings": {"stable": "v1", "canary": "v2", "steps": [50, 100]}}
    registry = registry_mod.build(hosts)
    plans = rollout.plan(rollout.parse(settings, registry), {})
    assert [p["service"] for p in plans] == ["ratings", "reviews"]  # one after the other, in name order
    ratings = rollout.step(plans[0]["state"], ZERO, ZERO, 1.0, 2.0)  # nothing measured: rolled back
    assert ratings["status"] == "rolled back"
    reviews = rollout.step(plans[1]["state"], ZERO, HEALTHY, 3.0, 4.0)  # promoted next stage: at 100 %
    states = {"ratings": ratings, "reviews": reviews}
    mesh = load.mesh({h: {**v, "vmesh_rollouts": settings} for h, v in hosts.items()}, [destination_rules()],
                       rollout_states=states)
    files = render_host(mesh, "productpage-v1").files
    assert clusters_of(outbound_vhost(files, FQDN)["routes"][0]) == {"v3": 100}
    files = render_host(mesh, "reviews-v1").files
    assert clusters_of(outbound_vhost(files, "ratings.default.svc.cluster.local")["routes"][0]) == {"v1": 100}


def test_every_stage_compiles_to_a_config_envoy_accepts(envoy_validate):
    r = parse({"reviews": {"stable": "v1", "canary": "v3", "steps": [25, 100], "mirror": 20, "match": [JASON]}})
    for stage in rollout.stages(r["reviews"]) + [rollout.STABLE_ONLY]:
        mesh = load.mesh(bookinfo_hosts(), [destination_rules(), ("mesh/all-v1.yaml", ALL_V1)],
                           rollouts={"reviews": (r["reviews"], stage)})
        envoy_validate(render_host(mesh, "productpage-v1").validation)
