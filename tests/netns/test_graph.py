"""``vmesh graph`` on Bookinfo with real traffic: Prometheus (Debian's) scrapes the proxies, the graph shows the
edges that carried traffic with reviews split 90/10, and a headless Chromium renders the page; its screenshot is
kept in .cache/test-artifacts/graph.png.

A module of its own: one Bookinfo mesh in namespaces (see test_traffic_bookinfo_mtls.py on inotify instances).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest

from harness import DATA, ROOT, prometheus
from harness.mesh import bookinfo_hosts
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401
from harness.prometheus import prometheus_dir, requires_prometheus  # noqa: F401
from vmesh import graph

pytestmark = [pytest.mark.netns, requires_netns, requires_prometheus]
ARTIFACTS = ROOT / ".cache" / "test-artifacts"
RULES = ("mesh/destination-rule-all.yaml", (DATA / "bookinfo" / "destination-rule-all.yaml").read_text())
SPLIT = ("mesh/reviews.yaml", """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
""")
PAGES = 60


@pytest.fixture(scope="module")
def mesh(netmesh_module, prometheus_dir):
    hosts = bookinfo_hosts()
    hosts["prometheus"] = {"netmesh_outside": True}
    mesh = netmesh_module(hosts, [RULES, SPLIT])
    for host in bookinfo_hosts():
        mesh.start_bookinfo(host)
    prometheus.start(mesh, "prometheus", prometheus_dir)
    return mesh


def prometheus_url(mesh) -> str:
    return f"http://{mesh.address('prometheus')}:9090"


def graph_from(mesh) -> graph.Graph:
    """The graph as `vmesh graph` builds it, its queries sent through the namespace that runs Prometheus."""
    def query(promql: str) -> list[dict]:
        answer = mesh.request("prometheus", f"{prometheus_url(mesh)}/api/v1/query?"
                              + urllib.parse.urlencode({"query": promql}))
        assert answer.status == 200, answer
        return answer.json()["data"]["result"]

    return graph.fetch(prometheus_url(mesh), "2m", ask=query)


def _served(mesh) -> dict[str, int]:
    name = "cluster.inbound|9080||.upstream_rq_completed"
    return {host: mesh.stats(host, name).get(name, 0) for host in ("reviews-v1", "reviews-v2")}


def test_the_graph_shows_bookinfo_with_the_90_10_split_and_mtls(mesh):
    url = f"http://{mesh.address('productpage-v1')}:9080/productpage"
    wanted = {("unknown", "productpage-v1"), ("productpage-v1", "details-v1"),
              ("productpage-v1", "reviews-v1"), ("productpage-v1", "reviews-v2"), ("reviews-v2", "ratings-v1")}

    def settled() -> dict:
        """The graph once every edge has a rate (Prometheus has two samples of each new series)."""
        deadline = time.monotonic() + 45
        while True:
            found = {(e.source[1], e.destination[1]): e for e in graph_from(mesh).edges.values()}
            if wanted <= set(found) and all(found[key].rps > 0 for key in wanted) or time.monotonic() > deadline:
                return found
            time.sleep(2)

    # first every edge exists in Prometheus (a counter's first value is not counted by rate()), then the calls
    # the split is judged on
    for _ in range(20):
        mesh.sample("prometheus", url, 5)
        if _served(mesh)["reviews-v2"]:
            break
    settled()
    before = _served(mesh)
    served = mesh.sample("prometheus", url, PAGES)
    assert {status for status, _ in served} == {200}, served
    after = _served(mesh)
    by_version = {host: after[host] - before[host] for host in after}
    assert sum(by_version.values()) == PAGES and by_version["reviews-v2"] > 0, by_version
    time.sleep(3)  # scraped every second; the proxies publish histograms every 5 s
    edges = settled()
    mesh_graph = graph_from(mesh)
    assert set(edges) == wanted, sorted(edges)  # only the edges that carried traffic: no v3, no v1 -> ratings
    share_v2 = by_version["reviews-v2"] / sum(by_version.values())
    assert edges[("productpage-v1", "reviews-v2")].share == pytest.approx(share_v2, abs=0.05)
    assert edges[("productpage-v1", "reviews-v1")].share == pytest.approx(1 - share_v2, abs=0.05)
    assert all(e.secure for key, e in edges.items() if key[0] != "unknown")  # mesh hops: mTLS
    assert not edges[("unknown", "productpage-v1")].secure  # the caller outside the mesh: plaintext
    assert all(e.error_rate == 0 for e in edges.values())

    # `vmesh graph` itself, run where Prometheus can be reached, writes the page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = ARTIFACTS / "graph.html"
    page.unlink(missing_ok=True)
    vmesh = Path(sys.executable).with_name("vmesh")
    made = subprocess.run(["ip", "netns", "exec", mesh.namespace("prometheus"), str(vmesh), "graph", "--prometheus",
                           prometheus_url(mesh), "--window", "2m", "--out", str(page)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    assert f"{len(mesh_graph.nodes)} workloads, {len(wanted)} edges" in made.stdout, made.stdout

    # the page in a real browser: it renders, with every edge and the split
    browser = graph.chromium()
    if browser is None:
        pytest.skip("needs Chromium (make setup installs Debian's chromium)")
    with tempfile.TemporaryDirectory(prefix="vmesh-chromium-") as profile:
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="edge"') == len(wanted)
    assert 'data-destination="reviews-v2"' in dom.stdout and "reviews-v3" not in dom.stdout
    shown = re.search(r'data-source="productpage-v1" data-destination="reviews-v2" data-rps="[0-9.]+" '
                      r'data-share="([0-9.]+)"', dom.stdout)
    assert shown and float(shown.group(1)) == pytest.approx(share_v2, abs=0.05), dom.stdout
    shot = ARTIFACTS / "graph.png"
    shot.unlink(missing_ok=True)
    graph.screenshot(page.read_text(), shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
