"""``vmesh graph``: the mesh as Kiali draws it, from Prometheus, without Kubernetes.

Nodes are workloads (inventory hosts) grouped by service, one box per service with a node per version; callers
outside the mesh are one ``unknown`` node. An edge is what a client sent to a workload over the window: requests
per second, the share of errors (5xx, or no answer), p99 latency, "mTLS" when the calls were mutual TLS, and,
where a service has several versions, each version's share of what that client sent to the service (so a 90/10
split or a canary is seen at a glance). TCP edges show bytes per second.

Queries, as Kiali's (graph/telemetry/istio): the server's side (``reporter="destination"``) for what reached a
workload, and the client's side (``reporter="source"``) for calls no workload answered (``destination_workload
="unknown"``). Output: a self-contained HTML page (inline SVG, no script, no network), SVG alone, or PNG (the
page rendered by a headless Chromium).
"""

from __future__ import annotations

import collections
import dataclasses
import html
import json
import math
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from vmesh.errors import MeshError

UNKNOWN = "unknown"
_EDGE_LABELS = ("source_workload", "source_workload_namespace", "source_canonical_service", "destination_workload",
                "destination_workload_namespace", "destination_service_name", "destination_service_namespace",
                "destination_version")
REQUESTS = ("sum by ({labels}, response_code, connection_security_policy) "
            "(rate(istio_requests_total{{reporter=\"destination\"{match}}}[{window}]))")
UNANSWERED = ("sum by ({labels}, response_code) (rate(istio_requests_total{{reporter=\"source\","
              "destination_workload=\"unknown\"{match}}}[{window}]))")
P99 = ("histogram_quantile(0.99, sum by (le, source_workload, source_workload_namespace, destination_workload, "
       "destination_workload_namespace) (rate(istio_request_duration_milliseconds_bucket"
       "{{reporter=\"destination\"{match}}}[{window}])))")
TCP = ("sum by ({labels}, connection_security_policy) (rate(istio_tcp_sent_bytes_total{{reporter=\"destination\""
       "{match}}}[{window}])) + sum by ({labels}, connection_security_policy) "
       "(rate(istio_tcp_received_bytes_total{{reporter=\"destination\"{match}}}[{window}]))")


@dataclasses.dataclass(frozen=True)
class Node:
    workload: str
    namespace: str
    service: str  # the service (canonical name) it serves, UNKNOWN for a caller outside the mesh
    version: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.workload)


@dataclasses.dataclass
class Edge:
    source: tuple[str, str]
    destination: tuple[str, str]
    rps: float = 0.0  # HTTP requests per second
    errors: float = 0.0  # of which 5xx or unanswered
    mtls: float = 0.0  # of which mutual TLS
    p99_ms: float | None = None
    tcp_bps: float = 0.0  # TCP bytes per second, both ways
    share: float | None = None  # of what the source sent to this service, with more than one version

    @property
    def error_rate(self) -> float:
        return self.errors / self.rps if self.rps else 0.0

    @property
    def secure(self) -> bool:
        return (self.rps + self.tcp_bps) > 0 and self.mtls >= 0.99 * (self.rps + self.tcp_bps)


@dataclasses.dataclass
class Graph:
    nodes: dict[tuple[str, str], Node]
    edges: dict[tuple[tuple[str, str], tuple[str, str]], Edge]
    window: str = "5m"

    def services(self) -> dict[tuple[str, str], list[Node]]:
        """(namespace, service) -> its nodes, versions in order."""
        out: dict[tuple[str, str], list[Node]] = {}
        for node in self.nodes.values():
            out.setdefault((node.namespace, node.service), []).append(node)
        return {k: sorted(v, key=lambda n: (n.version, n.workload)) for k, v in sorted(out.items())}


def _value(sample: dict[str, Any]) -> float:
    number = float(sample["value"][1])
    return 0.0 if math.isnan(number) or math.isinf(number) else number


def build(requests: list[dict], unanswered: list[dict], p99: list[dict], tcp: list[dict],
          window: str = "5m") -> Graph:
    """The graph from Prometheus's instant-query results (``data.result`` of each query above)."""
    graph = Graph({}, {}, window)

    def node(metric: dict[str, str], side: str) -> Node:
        workload = metric.get(f"{side}_workload") or UNKNOWN
        namespace = metric.get(f"{side}_workload_namespace") or UNKNOWN
        if side == "source":
            service = metric.get("source_canonical_service") or UNKNOWN
            version = ""
        else:
            service = metric.get("destination_service_name") or metric.get("destination_canonical_service") or UNKNOWN
            version = metric.get("destination_version") or ""
            if workload == UNKNOWN:  # no workload answered: a node of its own per service
                namespace = metric.get("destination_service_namespace") or UNKNOWN
                workload, version = f"{UNKNOWN}:{service}", ""
        if workload == UNKNOWN:
            service = UNKNOWN
        found = graph.nodes.get((namespace, workload))
        if found is None or (version and not found.version):
            found = graph.nodes[(namespace, workload)] = Node(workload, namespace, service, version)
        return found

    def edge(metric: dict[str, str]) -> Edge:
        source, destination = node(metric, "source"), node(metric, "destination")
        key = (source.key, destination.key)
        if key not in graph.edges:
            graph.edges[key] = Edge(source.key, destination.key)
        return graph.edges[key]

    # a series with no traffic in the window (rate 0) draws no edge, as Kiali's "> 0"
    requests, unanswered, tcp = ([s for s in series if _value(s) > 0] for series in (requests, unanswered, tcp))
    for sample in requests:
        metric, rate = sample["metric"], _value(sample)
        item = edge(metric)
        item.rps += rate
        if str(metric.get("response_code", "")).startswith("5") or metric.get("response_code") == "0":
            item.errors += rate
        if metric.get("connection_security_policy") == "mutual_tls":
            item.mtls += rate
    for sample in unanswered:
        item = edge(sample["metric"])
        rate = _value(sample)
        item.rps += rate
        item.errors += rate
    for sample in tcp:
        metric, rate = sample["metric"], _value(sample)
        item = edge(metric)
        item.tcp_bps += rate
        if metric.get("connection_security_policy") == "mutual_tls":
            item.mtls += rate
    for sample in p99:
        metric = sample["metric"]
        key = ((metric.get("source_workload_namespace") or UNKNOWN, metric.get("source_workload") or UNKNOWN),
               (metric.get("destination_workload_namespace") or UNKNOWN, metric.get("destination_workload") or UNKNOWN))
        p99_ms = float(sample["value"][1])
        if key in graph.edges and math.isfinite(p99_ms):  # NaN: too few requests in the window
            graph.edges[key].p99_ms = p99_ms
    # each version's share of what one client sent to a service with several versions
    totals: dict[tuple, float] = {}
    versions: dict[tuple, set] = {}
    for edge_item in graph.edges.values():
        target = graph.nodes[edge_item.destination]
        key = (edge_item.source, target.namespace, target.service)
        totals[key] = totals.get(key, 0.0) + edge_item.rps
        versions.setdefault(key, set()).add(edge_item.destination)
    for edge_item in graph.edges.values():
        target = graph.nodes[edge_item.destination]
        key = (edge_item.source, target.namespace, target.service)
        if len(versions[key]) > 1 and totals[key] > 0:
            edge_item.share = edge_item.rps / totals[key]
    return graph


def query(prometheus: str, promql: str, timeout: float = 10) -> list[dict]:
    """One instant query; its ``data.result``."""
    url = prometheus.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (the user's Prometheus URL)
            body = json.loads(answer.read())
    except (OSError, ValueError) as exc:
        raise MeshError(f"Prometheus at {prometheus} did not answer the query: {exc}") from None
    if body.get("status") != "success":
        raise MeshError(f"Prometheus refused the query {promql!r}: {body.get('error', body)}")
    return body["data"]["result"]


def fetch(prometheus: str, window: str = "5m", namespace: str | None = None,
          ask: Callable[[str], list[dict]] | None = None) -> Graph:
    """The graph of the last ``window`` (a Prometheus duration such as 1m, 5m, 1h), of one namespace or all.
    ``ask``: how a query reaches Prometheus (default: an HTTP request to ``prometheus``)."""
    if not window or not window[-1] in "smhdwy" or not window[:-1].isdigit():
        raise MeshError(f"--window: expected a duration such as 1m, 5m or 1h, got {window!r}")
    ask = ask or (lambda promql: query(prometheus, promql))
    match = ""
    if namespace:
        ns = json.dumps(namespace)
        match = f",destination_workload_namespace={ns}"
    labels = ", ".join(_EDGE_LABELS)
    fields = {"labels": labels, "match": match, "window": window}
    return build(ask(REQUESTS.format(**fields)), ask(UNANSWERED.format(**fields)), ask(P99.format(**fields)),
                 ask(TCP.format(**fields)), window)


# --- drawing -------------------------------------------------------------------------------------------------------

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 38, 230, 30, 14


def _layers(graph: Graph) -> dict[tuple[str, str], int]:
    """Each service's column: callers first, then what they call (longest path; cycles broken by order)."""
    services = graph.services()
    of = {n.key: (n.namespace, n.service) for n in graph.nodes.values()}
    calls: dict[tuple, set] = {s: set() for s in services}
    for edge_item in graph.edges.values():
        a, b = of[edge_item.source], of[edge_item.destination]
        if a != b:
            calls[a].add(b)
    column = {s: 0 for s in services}
    for _ in range(len(services)):
        changed = False
        for a, targets in calls.items():
            for b in targets:
                if column[b] < column[a] + 1 and column[a] + 1 < len(services):
                    column[b] = column[a] + 1
                    changed = True
        if not changed:
            break
    return column


def layout(graph: Graph) -> tuple[dict[tuple[str, str], tuple[float, float]], list[tuple[Any, ...]], float, float]:
    """Node positions, service boxes (service, x, y, w, h) and the picture's size."""
    services = graph.services()
    column = _layers(graph)
    heights: dict[int, float] = {}
    positions: dict[tuple[str, str], tuple[float, float]] = {}
    boxes = []
    for service, nodes in services.items():
        col = column[service]
        x = PAD + col * (NODE_W + GAP_X)
        y = heights.get(col, PAD)
        top = y
        y += 22  # the service's name
        for node in nodes:
            positions[node.key] = (x + 10, y)
            y += NODE_H + 8
        boxes.append((service, x, top, NODE_W + 20, y - top + 2))
        heights[col] = y + GAP_Y
    width = PAD * 2 + (max(column.values(), default=0) + 1) * (NODE_W + GAP_X) - GAP_X + 20
    height = max(heights.values(), default=PAD * 2) + PAD
    return positions, boxes, width, height


def _rate(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def edge_label(edge_item: Edge) -> tuple[str, str]:
    """Two lines: the share and the rate; errors, p99 and mTLS."""
    first, second = [], []
    if edge_item.share is not None:
        first.append(f"{edge_item.share * 100:.0f}%")
    if edge_item.rps:
        first.append(f"{_rate(edge_item.rps)} rps")
        second.append(f"{edge_item.error_rate * 100:.1f}% err")
        if edge_item.p99_ms is not None:
            second.append(f"p99 {edge_item.p99_ms:.0f} ms")
    if edge_item.tcp_bps:
        first.append(f"{_rate(edge_item.tcp_bps / 1000)} kB/s")
    if edge_item.secure:
        second.append("mTLS")
    return ", ".join(first), ", ".join(second)


def _colour(edge_item: Edge) -> str:
    if edge_item.error_rate >= 0.05:
        return "#d9363e"
    if edge_item.error_rate > 0:
        return "#e8a33d"
    return "#3e8635"


def _bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], p3: tuple[float, float],
            t: float) -> tuple[float, float]:
    """The point at ``t`` of a cubic Bézier curve."""
    u = 1 - t
    return (u ** 3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * p3[0],
            u ** 3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * p3[1])


def svg(graph: Graph) -> str:
    positions, boxes, width, height = layout(graph)
    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" markerHeight="9" '
           'markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/>'
           '</marker></defs>']
    for (namespace, service), x, y, w, h in boxes:
        out.append(f'<g class="service" data-service="{esc(service)}"><rect x="{x}" y="{y}" width="{w}" '
                   f'height="{h}" rx="8" fill="#f2f5f9" stroke="#8aa4c8"/>'
                   f'<text x="{x + 8}" y="{y + 15}" font-weight="bold">{esc(service)} '
                   f'<tspan fill="#777" font-weight="normal">{esc(namespace)}</tspan></text></g>')
    # several edges into one workload meet at its end: their labels go near where they start instead
    incoming = collections.Counter(e.destination for e in graph.edges.values())
    for edge_item in sorted(graph.edges.values(), key=lambda e: (e.source, e.destination)):
        (x1, y1), (x2, y2) = positions[edge_item.source], positions[edge_item.destination]
        start = (x1 + NODE_W, y1 + NODE_H / 2)
        end = (x2, y2 + NODE_H / 2)
        if x2 <= x1:  # a call back to an earlier column, or within one: around the right side
            start, end = (x1 + NODE_W, y1 + NODE_H / 2), (x2 + NODE_W, y2 + NODE_H / 2)
            bend = max(start[0], end[0]) + 60
            path = f"M {start[0]} {start[1]} C {bend} {start[1]}, {bend} {end[1]}, {end[0]} {end[1]}"
            label_at = (bend - 40, (start[1] + end[1]) / 2)
        else:
            mid = (start[0] + end[0]) / 2
            path = f"M {start[0]} {start[1]} C {mid} {start[1]}, {mid} {end[1]}, {end[0]} {end[1]}"
            along = 0.3 if incoming[edge_item.destination] > 1 else 0.7  # where this edge is apart from others
            label_at = _bezier(start, (mid, start[1]), (mid, end[1]), end, along)
        width_px = 1.5 + min(4.0, math.log10(1 + edge_item.rps + edge_item.tcp_bps / 1000) * 2)
        line1, line2 = edge_label(edge_item)
        out.append(f'<g class="edge" data-source="{esc(edge_item.source[1])}" '
                   f'data-destination="{esc(edge_item.destination[1])}" data-rps="{edge_item.rps:.4f}" '
                   f'data-share="{"" if edge_item.share is None else f"{edge_item.share:.4f}"}" '
                   f'data-mtls="{str(edge_item.secure).lower()}">'
                   f'<path d="{path}" fill="none" stroke="{_colour(edge_item)}" stroke-width="{width_px:.1f}" '
                   f'marker-end="url(#arrow)"/><text x="{label_at[0]:.0f}" y="{label_at[1] - 18:.0f}" '
                   f'text-anchor="middle" font-size="11" fill="#333" paint-order="stroke" stroke="#fff" '
                   f'stroke-width="3"><tspan>{esc(line1)}</tspan><tspan x="{label_at[0]:.0f}" dy="13">'
                   f'{esc(line2)}</tspan></text></g>')
    for node in graph.nodes.values():
        x, y = positions[node.key]
        caption = "no answer" if node.workload.startswith(f"{UNKNOWN}:") else \
            node.workload if not node.version else f"{node.workload} ({node.version})"
        fill = "#ffffff" if node.workload != UNKNOWN else "#eeeeee"
        out.append(f'<g class="node" data-workload="{esc(node.workload)}"><rect x="{x}" y="{y}" width="{NODE_W}" '
                   f'height="{NODE_H}" rx="6" fill="{fill}" stroke="#4a6fa5"/><text x="{x + NODE_W / 2}" '
                   f'y="{y + NODE_H / 2 + 4}" text-anchor="middle">{esc(caption)}</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def page(graph: Graph, source: str, refresh: int | None = None) -> str:
    """A self-contained HTML page: the picture and a table of the edges."""
    esc = html.escape
    rows = "\n".join(
        f"<tr><td>{esc(e.source[1])}</td><td>{esc(e.destination[1])}</td><td>{_rate(e.rps)}</td>"
        f"<td>{e.error_rate * 100:.1f}%</td><td>{'' if e.p99_ms is None else f'{e.p99_ms:.0f}'}</td>"
        f"<td>{'' if e.share is None else f'{e.share * 100:.0f}%'}</td><td>{_rate(e.tcp_bps / 1000)}</td>"
        f"<td>{'mTLS' if e.secure else 'plaintext or mixed'}</td></tr>"
        for e in sorted(graph.edges.values(), key=lambda e: (e.source, e.destination)))
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    empty = "" if graph.edges else "<p><b>No traffic in this window.</b></p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{meta}<title>vmesh graph</title>
<style>body{{font-family:sans-serif;margin:16px}}table{{border-collapse:collapse;margin-top:16px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}.legend{{color:#555}}</style></head>
<body><h1>vmesh graph</h1>
<p class="legend">Requests over the last {esc(graph.window)} from {esc(source)}: requests per second, errors, p99,
each version's share of a client's calls; mTLS: mutual TLS. Green: no errors, orange: some, red: 5 % or more.</p>
{empty}{svg(graph)}
<table><tr><th>from</th><th>to</th><th>rps</th><th>errors</th><th>p99 ms</th><th>share</th><th>TCP kB/s</th>
<th>security</th></tr>
{rows}
</table></body></html>
"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html_text: str, png: Path, width: int = 1400, height: int = 900, timeout: float = 60) -> None:
    """``html_text`` rendered to ``png`` by a headless Chromium (Debian's package ``chromium``)."""
    browser = chromium()
    if browser is None:
        raise MeshError("PNG output needs Chromium (apt-get install chromium); write .html or .svg instead")
    with tempfile.TemporaryDirectory(prefix="vmesh-graph-") as tmp:
        source = Path(tmp) / "graph.html"
        source.write_text(html_text, encoding="utf-8")
        argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
                f"--screenshot={png.resolve()}", source.as_uri()]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not png.exists():
        raise MeshError(f"Chromium could not render the graph (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")


def write(graph: Graph, out: Path, source: str) -> None:
    """The graph to ``out``: .html, .svg or .png by its suffix."""
    suffix = out.suffix.lower()
    if suffix in (".html", ".htm"):
        out.write_text(page(graph, source), encoding="utf-8")
    elif suffix == ".svg":
        out.write_text(svg(graph), encoding="utf-8")
    elif suffix == ".png":  # the whole picture and the table, however wide the mesh
        _, _, width, height = layout(graph)
        screenshot(page(graph, source), out, width=max(1000, int(width) + 40),
                   height=int(height) + 220 + 30 * len(graph.edges))
    else:
        raise MeshError(f"--out: expected a .html, .svg or .png file, got {out.name!r}")
