"""``vmesh graph`` from Prometheus's answers: which workloads and edges, each version's share, errors, mTLS, and
what the page shows. (Real Prometheus, real Bookinfo traffic and a real browser: tests/netns/test_bookinfo_observability.py.)"""

from __future__ import annotations

import re

import pytest

from vmesh import cli, graph
from vmesh.errors import MeshError


def sample(value: float, **labels: str) -> dict:
    base = {"source_workload": "productpage-v1", "source_workload_namespace": "default",
            "source_canonical_service": "productpage", "destination_workload_namespace": "default",
            "destination_service_name": "reviews", "destination_service_namespace": "default",
            "response_code": "200", "connection_security_policy": "mutual_tls"}
    return {"metric": {**base, **labels}, "value": [1796306000.0, str(value)]}


REQUESTS = [
    sample(9.0, destination_workload="reviews-v1", destination_version="v1"),
    sample(0.9, destination_workload="reviews-v2", destination_version="v2"),
    sample(0.1, destination_workload="reviews-v2", destination_version="v2", response_code="503"),
    sample(2.0, source_workload="unknown", source_workload_namespace="unknown", source_canonical_service="unknown",
           destination_workload="productpage-v1", destination_service_name="productpage", destination_version="v1",
           connection_security_policy="none"),
]
UNANSWERED = [sample(0.5, destination_workload="unknown", destination_workload_namespace="unknown",
                     destination_service_name="ratings", response_code="503")]
P99 = [{"metric": {"source_workload": "productpage-v1", "source_workload_namespace": "default",
                   "destination_workload": "reviews-v1", "destination_workload_namespace": "default"},
        "value": [0, "42.5"]},
       {"metric": {"source_workload": "productpage-v1", "source_workload_namespace": "default",
                   "destination_workload": "reviews-v2", "destination_workload_namespace": "default"},
        "value": [0, "NaN"]}]


def test_edges_carry_rate_errors_p99_mtls_and_each_versions_share():
    mesh = graph.build(REQUESTS, UNANSWERED, P99, [], "1m")
    edges = {(e.source[1], e.destination[1]): e for e in mesh.edges.values()}
    v1, v2 = edges[("productpage-v1", "reviews-v1")], edges[("productpage-v1", "reviews-v2")]
    assert v1.rps == 9.0 and v1.error_rate == 0 and v1.p99_ms == 42.5 and v1.secure
    assert v2.rps == pytest.approx(1.0) and v2.error_rate == pytest.approx(0.1) and v2.p99_ms is None
    assert (v1.share, v2.share) == (pytest.approx(0.9), pytest.approx(0.1))  # the 90/10 split
    outside = edges[("unknown", "productpage-v1")]
    assert not outside.secure and outside.share is None  # one version: no share
    # a call no workload answered ends at a node of its own, all errors
    nobody = edges[("productpage-v1", "unknown:ratings")]
    assert nobody.error_rate == 1.0
    services = {key[1]: [n.workload for n in nodes] for key, nodes in mesh.services().items()}
    assert services["reviews"] == ["reviews-v1", "reviews-v2"]
    assert services["ratings"] == ["unknown:ratings"]


def test_the_svg_and_the_page_show_each_edge():
    mesh = graph.build(REQUESTS, UNANSWERED, P99, [], "1m")
    picture = graph.svg(mesh)
    assert picture.count('class="edge"') == len(mesh.edges) == 4
    assert 'data-destination="reviews-v2"' in picture and "<tspan>10%, 1.00 rps</tspan>" in picture
    assert "<tspan>90%, 9.00 rps</tspan>" in picture and "0.0% err, p99 42 ms, mTLS</tspan>" in picture
    page = graph.page(mesh, "http://prometheus:9090", refresh=5)
    assert page.startswith("<!DOCTYPE html>") and '<meta http-equiv="refresh" content="5">' in page
    assert "<script" not in page and "http://prometheus:9090" in page
    assert "no answer" in picture


def test_labels_are_escaped():
    bad = [sample(1.0, destination_workload='<script>alert(1)</script>', destination_version="v1")]
    page = graph.page(graph.build(bad, [], [], [], "1m"), "x")
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_cli_refuses_a_bad_window_and_a_missing_output(capsys):
    assert cli.main(["graph", "--prometheus", "http://127.0.0.1:9", "--out", "g.html", "--window", "5 minutes"]) == 1
    assert "--window: expected a duration" in capsys.readouterr().err
    assert cli.main(["graph", "--prometheus", "http://127.0.0.1:9"]) == 1
    assert "give --out FILE" in capsys.readouterr().err
    with pytest.raises(MeshError, match="expected a .html, .svg or .png"):
        graph.write(graph.build([], [], [], [], "1m"), __import__("pathlib").Path("g.txt"), "x")


def test_labels_of_edges_into_one_workload_stay_apart():
    """Two callers of ratings: their labels sit near where each edge starts, not on top of each other where the
    edges meet."""
    into_ratings = [sample(rps, source_workload=f"reviews-{v}", source_canonical_service="reviews",
                           destination_workload="ratings-v1", destination_service_name="ratings",
                           destination_version="v1") for v, rps in (("v2", 0.5), ("v3", 0.7))]
    extra = [sample(0.2, destination_workload="reviews-v3", destination_version="v3")]
    picture = graph.svg(graph.build(REQUESTS + into_ratings + extra, [], P99, [], "1m"))
    at = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'data-source="(reviews-v[23])" data-destination="ratings-v1".*?<text x="[0-9]+" y="([0-9]+)"', picture)}
    assert set(at) == {"reviews-v2", "reviews-v3"} and abs(at["reviews-v2"] - at["reviews-v3"]) >= 26  # two lines
