"""``vmesh traces``: what a person reads of Jaeger's traces, from answers shaped as Jaeger's API gives them (a real
Jaeger with real Bookinfo spans: tests/netns/test_bookinfo_observability.py), and the command against a stand-in
Jaeger on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vmesh import traces
from vmesh.errors import MeshError

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def span(span_id, parent, process, operation, kind, start, duration, status="200", **tags):
    references = [{"refType": "CHILD_OF", "traceID": TRACE_ID, "spanID": parent}] if parent else []
    tags = {"span.kind": kind, "http.status_code": status, **tags}
    return {"traceID": TRACE_ID, "spanID": span_id, "operationName": operation, "references": references,
            "startTime": start, "duration": duration, "processID": process,
            "tags": [{"key": k, "type": "string", "value": v} for k, v in tags.items()]}


# ingress -> productpage -> (details, reviews -> ratings), as the proxies report it; listed out of order
BOOKINFO = {
    "traceID": TRACE_ID,
    "processes": {"p1": {"serviceName": "istio-ingressgateway.default"}, "p2": {"serviceName": "productpage.default"},
                  "p3": {"serviceName": "details.default"}, "p4": {"serviceName": "reviews.default"},
                  "p5": {"serviceName": "ratings.default"}},
    "spans": [
        span("a7", "a6", "p5", "ratings.default.svc.cluster.local:9080/*", "server", 1_000_600, 300),
        span("a1", None, "p1", "productpage.default.svc.cluster.local:9080/*", "client", 1_000_000, 9_000),
        span("a2", "a1", "p2", "productpage.default.svc.cluster.local:9080/*", "server", 1_000_100, 8_800),
        span("a5", "a4", "p4", "reviews.default.svc.cluster.local:9080/*", "server", 1_000_500, 1_000),
        span("a3", "a2", "p2", "details.default.svc.cluster.local:9080/*", "client", 1_000_200, 200),
        span("a4", "a2", "p2", "reviews.default.svc.cluster.local:9080/*", "client", 1_000_450, 1_200),
        span("a6", "a5", "p4", "ratings.default.svc.cluster.local:9080/*", "client", 1_000_550, 400, status="503",
             response_flags="UF"),
        span("a8", "a3", "p3", "details.default.svc.cluster.local:9080/*", "server", 1_000_250, 100),
    ],
}


def test_a_trace_reads_as_its_tree_of_calls():
    trace = traces.parse(BOOKINFO)
    tree = [(depth, s.id) for depth, s in trace.tree()]
    assert tree == [(0, "a1"), (1, "a2"), (2, "a3"), (3, "a8"), (2, "a4"), (3, "a5"), (4, "a6"), (5, "a7")]
    assert trace.duration_us == 9_000 and trace.root().service == "istio-ingressgateway.default"
    assert trace.services() == ["details.default", "istio-ingressgateway.default", "productpage.default",
                                "ratings.default", "reviews.default"]
    lines = traces.text(trace).splitlines()
    assert lines[0] == (f"trace {TRACE_ID}: 8 spans, 9.00 ms, details.default, istio-ingressgateway.default, "
                        "productpage.default, ratings.default, reviews.default")
    assert lines[1].startswith("+   0.00 ms    9.00 ms  istio-ingressgateway.default client")
    # the failed call: under reviews' answer, indented once more, its status and the error shown
    failed = next(line for line in lines if " 503" in line)
    assert failed.startswith("        +   0.55 ms    0.40 ms  reviews.default client ratings.") and failed.endswith(
        "503 ERROR")


def test_the_page_draws_each_span_under_its_parent():
    page = traces.page(traces.parse(BOOKINFO), "http://jaeger:16686")
    assert page.count('class="span"') == 8
    assert 'data-span="a7" data-parent="a6" data-service="ratings.default" data-kind="server"' in page
    assert page.index('data-span="a3"') < page.index('data-span="a8"') < page.index('data-span="a4"')
    assert "#d9534f" in page  # the 503 drawn red
    assert "<script" not in page and "response_flags" in page


def test_spans_whose_parent_is_missing_or_loops_are_still_shown():
    lost = dict(BOOKINFO, spans=[span("b1", "gone", "p1", "x", "client", 5, 1),
                                 span("b2", "b3", "p2", "y", "server", 6, 1), span("b3", "b2", "p2", "z", "client", 7, 1)])
    tree = [(depth, s.id) for depth, s in traces.parse(lost).tree()]
    assert sorted(s for _, s in tree) == ["b1", "b2", "b3"] and tree[0] == (0, "b1")


@pytest.mark.parametrize("broken", [{}, {"traceID": "x", "processes": {}, "spans": [{"spanID": "a"}]},
                                    {"traceID": "x", "processes": [], "spans": []}])
def test_an_answer_that_is_not_a_trace_is_a_clear_error(broken):
    with pytest.raises(MeshError, match="not a trace as its API gives them"):
        traces.parse(broken)


def test_bad_arguments_are_refused_before_asking():
    asked = []
    with pytest.raises(MeshError, match="--id: expected a trace id"):
        traces.one("http://j", "../api", ask=asked.append)
    with pytest.raises(MeshError, match="--lookback"):
        traces.recent("http://j", "productpage.default", lookback="1 hour", ask=asked.append)
    with pytest.raises(MeshError, match="--limit"):
        traces.recent("http://j", "productpage.default", limit=0, ask=asked.append)
    assert asked == []


class _Jaeger(BaseHTTPRequestHandler):
    asked: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).asked.append(self.path)
        if self.path.startswith("/api/traces?"):
            body = {"data": [BOOKINFO]}
        elif self.path == f"/api/traces/{TRACE_ID}":
            body = {"data": [BOOKINFO]}
        else:
            body = {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]}
        data = json.dumps(body).encode()
        self.send_response(200 if body["data"] else 404)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


@pytest.fixture
def jaeger():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jaeger)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Jaeger.asked = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def vmesh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("vmesh")), *argv], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_command_lists_a_services_traces_and_shows_one(jaeger, tmp_path):
    listed = vmesh("traces", "--jaeger", jaeger, "--service", "productpage.default", "--lookback", "30m")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith(f"{TRACE_ID}  istio-ingressgateway.default: productpage.default.svc")
    assert "8 spans  9.00 ms" in listed.stdout
    assert _Jaeger.asked == ["/api/traces?service=productpage.default&limit=20&lookback=30m"]
    shown = vmesh("traces", "--jaeger", jaeger, "--id", TRACE_ID)
    assert shown.returncode == 0 and shown.stdout.splitlines()[0].startswith(f"trace {TRACE_ID}: 8 spans")
    page = tmp_path / "trace.html"
    written = vmesh("traces", "--jaeger", jaeger, "--id", TRACE_ID, "--out", str(page))
    assert written.returncode == 0 and page.read_text().count('class="span"') == 8
    missing = vmesh("traces", "--jaeger", jaeger, "--id", "0" * 32)
    assert missing.returncode == 1 and "did not answer /api/traces/" + "0" * 32 in missing.stderr
    neither = vmesh("traces", "--jaeger", jaeger)
    assert neither.returncode == 1 and "give --service NAME" in neither.stderr
