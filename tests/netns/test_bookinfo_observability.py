"""Bookinfo seen as its operators see it, with real traffic through real proxies: Prometheus (Debian's) scrapes
them and ``vmesh graph`` draws the edges that carried traffic, reviews split 90/10, in a headless Chromium (its
screenshot is kept in .cache/test-artifacts/graph.png); Jaeger (built from its Go module) gets every span at
100 % sampling, and one request through the ingress is one trace across productpage, reviews and ratings.

Hosts: Bookinfo's six, an ingress gateway, and ``monitoring``, a machine outside the mesh running Prometheus and
Jaeger (declared to the mesh by a ServiceEntry, as the monitoring VM of the demo is). A module of its own: one
Bookinfo mesh in namespaces (see test_traffic_bookinfo_mtls.py on inotify instances).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from harness import DATA, ROOT, jaeger, prometheus
from harness.jaeger import requires_jaeger
from harness.mesh import bookinfo_hosts
from harness.netmesh import FIRST_HOST_ADDRESS, NETWORK
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401
from harness.prometheus import prometheus_dir, requires_prometheus  # noqa: F401
from vmesh import graph, rollout

pytestmark = [pytest.mark.netns, requires_netns, requires_prometheus]
ARTIFACTS = ROOT / ".cache" / "test-artifacts"
MONITORING = str(NETWORK.network_address + FIRST_HOST_ADDRESS + len(bookinfo_hosts()) + 1)  # after the ingress
RULES = ("mesh/destination-rule-all.yaml", (DATA / "bookinfo" / "destination-rule-all.yaml").read_text())


def reviews(*weights: tuple[str, int]) -> tuple[str, str]:
    routes = "".join(f"    - {{destination: {{host: reviews, subset: {subset}}}, weight: {weight}}}\n"
                     for subset, weight in weights)
    return ("mesh/reviews.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                                 "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n" + routes)


SPLIT = reviews(("v1", 90), ("v2", 10))
# The ingress routes Bookinfo's page; the proxies send their spans to Jaeger on the monitoring machine, every one
OBSERVED = ("mesh/observability.yaml", f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo}}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match: [{{uri: {{exact: /productpage}}}}]
    route: [{{destination: {{host: productpage, port: {{number: 9080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: jaeger, namespace: istio-system}}
spec:
  hosts: [jaeger.monitoring.internal]
  location: MESH_EXTERNAL
  ports: [{{number: 9411, name: http-zipkin, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {MONITORING}}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - randomSamplingPercentage: 100
""")
MESH_CONFIG = {"defaultProviders": {"tracing": ["jaeger"]},
               "extensionProviders": [{"name": "jaeger",
                                       "zipkin": {"service": "jaeger.monitoring.internal", "port": 9411}}]}
PAGES = 150  # enough that a 10 % version is not at the mercy of rate()'s extrapolation of a young series


@pytest.fixture(scope="module")
def mesh(netmesh_module, prometheus_dir):
    hosts = {host: {**variables, "vmesh_mesh_config": MESH_CONFIG} for host, variables in bookinfo_hosts().items()}
    hosts["ingress"] = {"vmesh_labels": {"istio": "ingressgateway"}, "vmesh_mesh_config": MESH_CONFIG}
    hosts["monitoring"] = {"netmesh_outside": True}
    mesh = netmesh_module(hosts, [RULES, SPLIT, OBSERVED])
    assert mesh.address("monitoring") == MONITORING
    for host in bookinfo_hosts():
        # reviews v3 answers every call with a 500: the canary a rollout must roll back (nothing else calls it)
        mesh.start_bookinfo(host, {"BOOKINFO_ERROR_RATE": "1"} if host == "reviews-v3" else None)
    prometheus.start(mesh, "monitoring", prometheus_dir)
    if jaeger.available():
        jaeger.start(mesh, "monitoring", prometheus_dir)
    return mesh


def prometheus_url(mesh) -> str:
    return f"http://{mesh.address('monitoring')}:9090"


def ask_prometheus(mesh, promql: str) -> dict:
    """Prometheus's whole answer to an instant query, asked from the namespace that runs it."""
    answer = mesh.request("monitoring", f"{prometheus_url(mesh)}/api/v1/query?"
                          + urllib.parse.urlencode({"query": promql}))
    assert answer.status == 200, answer
    return answer.json()


def graph_from(mesh) -> graph.Graph:
    """The graph as `vmesh graph` builds it, its queries sent through the namespace that runs Prometheus."""
    return graph.fetch(prometheus_url(mesh), "5m", ask=lambda promql: ask_prometheus(mesh, promql)["data"]["result"])


def _served(mesh) -> dict[str, int]:
    name = "cluster.inbound|9080||.upstream_rq_total"
    return {host: mesh.stats(host, name).get(name, 0) for host in ("reviews-v1", "reviews-v2", "reviews-v3")}


def _reviews_in_prometheus(mesh, over: str = "") -> dict[str, float]:
    """Each reviews version's calls as Prometheus holds them: its latest value, or with ``over`` the earliest
    one of the graph's window (a counter's first sample, which rate() does not count)."""
    series = 'istio_requests_total{reporter="destination",destination_service_name="reviews"}'
    promql = f"sum by (destination_workload) ({f'min_over_time({series}[{over}])' if over else series})"
    return {r["metric"]["destination_workload"]: float(r["value"][1])
            for r in ask_prometheus(mesh, promql)["data"]["result"]}


def test_the_graph_shows_bookinfo_with_the_90_10_split_and_mtls(mesh):
    url = f"http://{mesh.address('productpage-v1')}:9080/productpage"
    wanted = {("unknown", "productpage-v1"), ("productpage-v1", "details-v1"),
              ("productpage-v1", "reviews-v1"), ("productpage-v1", "reviews-v2"), ("reviews-v2", "ratings-v1")}

    def settled(pages: int = 0) -> dict:
        """The graph once every edge has a rate (two samples of each series, the later one counting more calls:
        the first sample may already hold every call made so far), sending ``pages`` pages before each look."""
        deadline = time.monotonic() + 45
        while True:
            if pages:
                assert {status for status, _ in mesh.sample("monitoring", url, pages)} == {200}
            found = {(e.source[1], e.destination[1]): e for e in graph_from(mesh).edges.values()}
            if wanted <= set(found) and all(found[key].rps > 0 for key in wanted) or time.monotonic() > deadline:
                return found
            time.sleep(2)

    # first every edge has a rate in Prometheus, then the calls the split is judged on
    settled(pages=5)
    before = _served(mesh)
    served = mesh.sample("monitoring", url, PAGES)
    assert {status for status, _ in served} == {200}, served
    after = _served(mesh)
    by_version = {host: after[host] - before[host] for host in after}
    assert sum(by_version.values()) == PAGES and by_version["reviews-v2"] > 0 and not by_version["reviews-v3"], \
        by_version
    # the proxies publish their histograms (istio_requests_total is one's count) every 5 s, scraped every second:
    # the graph is read once Prometheus holds every call the versions served
    deadline = time.monotonic() + 30
    while (latest := _reviews_in_prometheus(mesh)) != {host: after[host] for host in after if after[host]}:
        assert time.monotonic() < deadline, (latest, after)
        time.sleep(1)
    edges = settled()
    mesh_graph = graph_from(mesh)
    assert set(edges) == wanted, sorted(edges)  # only the edges that carried traffic: no v3, no v1 -> ratings
    # what the window holds: each version's calls since its series' first sample (rate() cannot count what came
    # before it); the 10 % version's share of those is what the graph must show
    earliest = _reviews_in_prometheus(mesh, over="5m")
    counted = {host: latest[host] - earliest[host] for host in latest}
    share_v2 = counted["reviews-v2"] / sum(counted.values())
    assert sum(counted.values()) >= PAGES, (counted, by_version)
    assert edges[("productpage-v1", "reviews-v2")].share == pytest.approx(share_v2, abs=0.02), (counted, edges)
    assert edges[("productpage-v1", "reviews-v1")].share == pytest.approx(1 - share_v2, abs=0.02)
    assert all(e.secure for key, e in edges.items() if key[0] != "unknown")  # mesh hops: mTLS
    assert not edges[("unknown", "productpage-v1")].secure  # the caller outside the mesh: plaintext
    assert all(e.error_rate == 0 for e in edges.values())

    # `vmesh graph` itself, run where Prometheus can be reached, writes the page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = ARTIFACTS / "graph.html"
    page.unlink(missing_ok=True)
    vmesh = Path(sys.executable).with_name("vmesh")
    made = subprocess.run(["ip", "netns", "exec", mesh.namespace("monitoring"), str(vmesh), "graph", "--prometheus",
                           prometheus_url(mesh), "--window", "5m", "--out", str(page)],
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
    assert shown and float(shown.group(1)) == pytest.approx(share_v2, abs=0.02), dom.stdout
    shot = ARTIFACTS / "graph.png"
    shot.unlink(missing_ok=True)
    graph.screenshot(page.read_text(), shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_prometheus_pages_show_the_mesh_the_service_and_its_workloads(mesh):
    """The monitoring role's console pages, as Prometheus renders them from the graph test's traffic (before
    any other test's): reviews in the mesh's table, its v1 and v2 workloads with v2's small share, productpage as
    its caller over mutual TLS; and the page in a real browser (its screenshot kept in .cache/test-artifacts)."""
    def page(path: str) -> str:
        answer = mesh.request("monitoring", f"{prometheus_url(mesh)}/consoles/{path}")
        assert answer.status == 200, answer
        return answer.body.decode()

    reviews = "reviews.default.svc.cluster.local"
    overview = page("vmesh-mesh.html")
    assert re.search(rf'data-service="{re.escape(reviews)}">\s*<td><a href="vmesh-service.html\?service={reviews}"',
                     overview), overview
    assert float(re.search(rf'data-service="{re.escape(reviews)}">.*?class="n rps">([0-9.]+)<', overview,
                           re.S).group(1)) > 0
    service = page(f"vmesh-service.html?service={reviews}")
    shares = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'data-workload="(reviews-v[0-9])".*?class="n share">([0-9.]+) %', service, re.S)}
    assert set(shares) == {"reviews-v1", "reviews-v2"}, service  # v3 got nothing
    assert shares["reviews-v1"] > 70 and 0 < shares["reviews-v2"] < 30
    assert sum(shares.values()) == pytest.approx(100, abs=0.1)
    caller = re.search(r'data-caller="productpage-v1">.*?class="n">[0-9.]+</td>\s*<td class="n">([0-9.]+) %',
                       service, re.S)
    assert caller and float(caller.group(1)) == 100.0, service  # every call over mutual TLS
    workload = page("vmesh-workload.html?workload=productpage-v1")
    assert f'data-service="{reviews}"' in workload and 'data-service="details.default.svc.cluster.local"' in workload
    # a parameter that is not a name changes nothing in the queries
    assert "No requests in the last 5 minutes" in page('vmesh-service.html?service=x%22%7D%20or%20vector(1)%20%23')

    browser = graph.chromium()
    if browser is None:
        pytest.skip("needs Chromium (make setup installs Debian's chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "prometheus-service-page.png"
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmesh-chromium-") as profile:
        drawn = subprocess.run(["ip", "netns", "exec", mesh.namespace("monitoring"), browser, "--headless",
                                "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                                "--virtual-time-budget=5000", "--window-size=1200,1400", f"--screenshot={shot}",
                                f"{prometheus_url(mesh)}/consoles/vmesh-service.html?service={reviews}"],
                               capture_output=True, text=True, timeout=90, check=False)
    assert drawn.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", drawn.stderr[-2000:]


@requires_jaeger
def test_a_request_through_the_ingress_is_one_trace_across_bookinfo(mesh):
    """As Istio's distributed tracing task shows it: the ingress's span is the root, each service's span is the
    child of its caller's call, and Jaeger's API gives the whole tree by the trace's id."""
    mesh.push([RULES, reviews(("v2", 100)), OBSERVED])  # reviews v2 calls ratings
    mesh.sample("monitoring", f"http://{mesh.address('ingress')}:8080/productpage", 2)  # pooled connections renewed
    marker = uuid.uuid4().hex
    page = mesh.request("monitoring", f"http://{mesh.address('ingress')}:8080/productpage?u={marker}")
    assert page.status == 200, page

    def mine() -> dict | None:
        for trace in jaeger.traces(mesh, "monitoring", "productpage.default"):
            if any(tag["key"] == "http.url" and tag["value"].endswith(f"?u={marker}")
                   for span in trace["spans"] for tag in span["tags"]):
                return trace
        return None

    deadline = time.monotonic() + 30  # the tracers send every 5 s
    while (trace := mine()) is None or len(trace["spans"]) < 8:  # 4 hops, 2 spans each
        assert time.monotonic() < deadline, f"no whole trace for ?u={marker} in Jaeger: {trace}"
        time.sleep(1)
    # the whole trace, asked by its id
    answer = mesh.request("monitoring", f"{jaeger_url(mesh)}/api/traces/{trace['traceID']}")
    assert answer.status == 200, answer
    (whole,) = answer.json()["data"]
    spans = {span["spanID"]: span for span in whole["spans"]}
    service = {span_id: whole["processes"][span["processID"]]["serviceName"] for span_id, span in spans.items()}
    kind = {span_id: next(t["value"] for t in span["tags"] if t["key"] == "span.kind")
            for span_id, span in spans.items()}
    parent = {span_id: next((r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"), None)
              for span_id, span in spans.items()}
    (root,) = [span_id for span_id in spans if parent[span_id] is None]
    assert service[root] == "ingress.default" and kind[root] == "client"
    # the ingress's span is named by the VirtualService route it took, as Istio names it
    assert spans[root]["operationName"] == "productpage.default.svc.cluster.local:9080/productpage"

    def children(span_id: str) -> list[tuple[str, str]]:
        return sorted((service[child], kind[child]) for child in spans if parent[child] == span_id)

    def only(found: list[str], span_id: str) -> str:
        assert len(found) == 1, children(span_id)
        return found[0]

    def calls(span_id: str, caller: str, called: str) -> str:
        """The called service's server span under the caller's client span for it, under ``span_id``."""
        client = only([c for c in spans if parent[c] == span_id and service[c] == f"{caller}.default"
                       and kind[c] == "client" and spans[c]["operationName"].startswith(f"{called}.")], span_id)
        return only([c for c in spans if parent[c] == client and service[c] == f"{called}.default"
                     and kind[c] == "server"], client)

    # ingress -> productpage -> (details, reviews -> ratings): each server span under its caller's client span
    productpage = only([c for c in spans if parent[c] == root], root)
    assert (service[productpage], kind[productpage]) == ("productpage.default", "server")
    details = calls(productpage, "productpage", "details")
    ratings = calls(calls(productpage, "productpage", "reviews"), "reviews", "ratings")
    assert not children(details) and not children(ratings)
    # Istio's span names: the called service's host, port and route
    assert spans[ratings]["operationName"] == "ratings.default.svc.cluster.local:9080/*"
    assert {t["key"]: t["value"] for t in spans[ratings]["tags"]}["http.status_code"] == "200"
    assert set(service.values()) == {"ingress.default", "productpage.default", "details.default", "reviews.default",
                                     "ratings.default"}

    # `vmesh traces`, where Jaeger can be reached, shows the same tree: ratings' answer five calls deep
    vmesh = Path(sys.executable).with_name("vmesh")
    shown = subprocess.run(["ip", "netns", "exec", mesh.namespace("monitoring"), str(vmesh), "traces", "--jaeger",
                            jaeger_url(mesh), "--id", whole["traceID"]], capture_output=True, text=True, timeout=60,
                           check=False)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"trace {whole['traceID']}: 8 spans") and lines[1].startswith("+")
    assert "ingress.default client" in lines[1]
    assert [line for line in lines if " ratings.default server " in line][0].startswith(" " * 10 + "+")


def jaeger_url(mesh) -> str:
    return f"http://{mesh.address('monitoring')}:{jaeger.QUERY_PORT}"


def test_the_ingress_is_the_source_its_callees_report(mesh):
    """productpage, called through the ingress, names the ingress as its caller (by the address and identity
    the inventory gives it), and so does the ingress itself."""
    mesh.sample("monitoring", f"http://{mesh.address('ingress')}:8080/productpage", 3)
    query = ('sum by (reporter, source_workload, source_canonical_service, connection_security_policy) '
             '(istio_requests_total{destination_workload="productpage-v1", source_workload!="unknown"})')
    deadline = time.monotonic() + 20
    while True:
        found = {(r["metric"]["reporter"], r["metric"]["source_workload"], r["metric"]["source_canonical_service"],
                  r["metric"].get("connection_security_policy", ""))
                 for r in ask_prometheus(mesh, query)["data"]["result"]}
        if len(found) == 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert found == {("source", "ingress", "ingress", "unknown"), ("destination", "ingress", "ingress", "mutual_tls")}


def test_a_rollout_judged_from_prometheus_moves_a_healthy_canary_on_and_rolls_back_a_failing_one(mesh):
    """The canary role's Prometheus analysis, on Istio's metrics as Prometheus scraped them from the proxies:
    reviews v2 answers well and goes on to the next stage; v3 answers 500 and is rolled back."""
    page = f"http://{mesh.address('productpage-v1')}:9080/productpage"

    def stage(canary: str) -> tuple[dict, int, float]:
        """One 50 % stage of a rollout of ``canary``, judged from Prometheus; (the new state, calls it served, the
        stage's length in seconds: the range of its queries)."""
        declared = rollout.parse({"reviews": {"stable": "v1", "canary": canary, "steps": [50, 100], "analysis": {
            "source": "prometheus", "min_requests": 10, "metrics": [{
                "name": "stable-served", "min": 1, "query": 'sum(increase(istio_requests_total{reporter="destination",'
                                                            'destination_workload=~"$stable_target"}[$interval]))'}]}}},
                                 mesh.registry)
        (entry,) = rollout.plan(declared, {}, now=time.time())
        mesh.push([RULES, reviews(("v1", 50), (canary, 50)), OBSERVED])
        mesh.sample("monitoring", page, 2)  # connections pooled before the push renewed
        time.sleep(2)
        started, before = time.time(), _served(mesh)
        # a scrape inside the stage before its first call: increase() counts from the sample it takes first, so
        # calls made before that sample would be left out
        time.sleep(1.5)
        assert {status for status, _ in mesh.sample("monitoring", page, 40)} == {200}
        served = _served(mesh)[f"reviews-{canary}"] - before[f"reviews-{canary}"]
        time.sleep(4)  # scraped every second; histograms published every 5 s... and a last scrape
        seconds = time.time() - started
        queries = rollout.prometheus_queries(entry["state"], seconds)
        answers = {name: ask_prometheus(mesh, promql) for name, promql in queries.items()}
        return rollout.step_from_prometheus(entry["state"], answers, started, time.time()), served, seconds

    def near(counted: int, served: int, seconds: float) -> bool:
        """What the sidecars served, as Prometheus's increase() gives it: its samples of a stage of some seconds,
        scraped every second, are stretched to the ends of the range (Prometheus extrapolates by up to 1.1 times
        the interval between samples at each end: up to range / (range - 2.2 s)), and the first and last second
        may fall outside."""
        stretch = seconds / max(seconds - 2.2, 1.0)
        return served >= 10 and served - 2 <= counted <= served * stretch + 2

    healthy, served, seconds = stage("v2")
    judged = healthy["history"][-1]
    assert (healthy["status"], healthy["stage"], judged["verdict"]) == ("running", 1, "passed"), judged
    assert near(judged["canary"]["requests"], served, seconds), (judged, served, seconds)
    assert judged["canary"]["success_rate"] == 100.0 and judged["stable"]["requests"] > 0

    failing, served, seconds = stage("v3")
    judged = failing["history"][-1]
    assert failing["status"] == "rolled back", judged
    assert "success rate 0.0 %" in failing["reason"] and judged["canary"]["errors"] == judged["canary"]["requests"]
    assert near(judged["canary"]["requests"], served, seconds), (judged, served, seconds)
