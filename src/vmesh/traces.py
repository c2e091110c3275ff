"""Traces from Jaeger's query API, as a person reads them (``vmesh traces``): a service's recent traces, and one
trace as the tree of its spans, each under the span that caused it, with the service, operation, start, duration
and status of each; as text, or as a self-contained HTML page with the waterfall Jaeger's UI draws.

Jaeger's Go module carries no UI (its pages are built from another repository at release time), so this is the
view the project gives of what Jaeger stores; a Jaeger with its UI shows the same traces at ``/trace/ID``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import urllib.parse
import urllib.request
from typing import Any, Callable

from vmesh.errors import MeshError

TRACE_ID = re.compile(r"^[0-9a-f]{16,32}$")
LOOKBACK = re.compile(r"^[0-9]+[smhd]$")


@dataclasses.dataclass(frozen=True)
class Span:
    id: str
    parent: str | None
    service: str
    operation: str
    kind: str  # client, server, or "" (Envoy's spans always say)
    start_us: int
    duration_us: int
    status: str  # http.status_code, "" when none
    error: bool
    tags: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Trace:
    id: str
    spans: tuple[Span, ...]

    @property
    def start_us(self) -> int:
        return min(s.start_us for s in self.spans)

    @property
    def duration_us(self) -> int:
        return max(s.start_us + s.duration_us for s in self.spans) - self.start_us

    def tree(self) -> list[tuple[int, Span]]:
        """(depth, span), each span after its parent and before its parent's later children, siblings by start;
        a span whose parent is not in the trace is a root, and so is one caught in a loop of parents."""
        ids = {s.id for s in self.spans}
        children: dict[str | None, list[Span]] = {}
        for span in self.spans:
            children.setdefault(span.parent if span.parent in ids else None, []).append(span)
        out: list[tuple[int, Span]] = []
        seen: set[str] = set()

        def walk(spans: list[Span], depth: int) -> None:
            for span in sorted(spans, key=lambda s: (s.start_us, s.id)):
                if span.id not in seen:
                    seen.add(span.id)
                    out.append((depth, span))
                    walk(children.get(span.id, []), depth + 1)

        walk(children.get(None, []), 0)
        walk([s for s in self.spans if s.id not in seen], 0)
        return out

    def root(self) -> Span:
        return self.tree()[0][1]

    def services(self) -> list[str]:
        return sorted({s.service for s in self.spans})


def parse(data: dict[str, Any]) -> Trace:
    """One trace of Jaeger's JSON (an element of ``data`` in /api/traces answers)."""
    try:
        processes = {key: p.get("serviceName", "?") for key, p in data["processes"].items()}
        spans = []
        for raw in data["spans"]:
            tags = {t["key"]: str(t.get("value", "")) for t in raw.get("tags") or []}
            parent = next((r["spanID"] for r in raw.get("references") or [] if r.get("refType") == "CHILD_OF"), None)
            status = tags.get("http.status_code", "")
            spans.append(Span(raw["spanID"], parent, processes.get(raw["processID"], "?"), raw["operationName"],
                              tags.get("span.kind", ""), int(raw["startTime"]), int(raw["duration"]), status,
                              tags.get("error") == "true" or status.startswith("5"), tags))
        return Trace(data["traceID"], tuple(spans))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MeshError(f"Jaeger's answer is not a trace as its API gives them: {exc!r}") from None


def get(jaeger: str, path: str, timeout: float = 10) -> dict[str, Any]:
    """One request to Jaeger's query API; its JSON."""
    url = jaeger.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (the user's Jaeger URL)
            return json.loads(answer.read())
    except (OSError, ValueError) as exc:
        raise MeshError(f"Jaeger at {jaeger} did not answer {path}: {exc}") from None


def recent(jaeger: str, service: str, limit: int = 20, lookback: str = "1h",
           ask: Callable[[str], dict[str, Any]] | None = None) -> list[Trace]:
    """The service's traces of the last ``lookback`` (30m, 1h, 2d), newest first, at most ``limit``.
    ``ask``: how a path reaches Jaeger (default: an HTTP request to ``jaeger``)."""
    if not LOOKBACK.match(lookback):
        raise MeshError(f"--lookback: expected a duration such as 30m, 1h or 2d, got {lookback!r}")
    if not 1 <= limit <= 1000:
        raise MeshError(f"--limit: expected 1 to 1000, got {limit}")
    ask = ask or (lambda path: get(jaeger, path))
    path = "/api/traces?" + urllib.parse.urlencode({"service": service, "limit": str(limit), "lookback": lookback})
    traces = [parse(t) for t in ask(path).get("data") or []]
    return sorted(traces, key=lambda t: t.start_us, reverse=True)[:limit]


def one(jaeger: str, trace_id: str, ask: Callable[[str], dict[str, Any]] | None = None) -> Trace:
    """The trace with this id (16 or 32 hex digits)."""
    if not TRACE_ID.match(trace_id):
        raise MeshError(f"--id: expected a trace id of 16 to 32 hex digits, got {trace_id!r}")
    ask = ask or (lambda path: get(jaeger, path))
    found = ask(f"/api/traces/{trace_id}").get("data") or []
    if not found:
        raise MeshError(f"Jaeger at {jaeger} has no trace {trace_id}")
    return parse(found[0])


def _ms(us: int) -> str:
    return f"{us / 1000:.2f} ms"


def summary(traces: list[Trace]) -> str:
    """One line per trace: id, root operation, spans, duration, services."""
    if not traces:
        return "no traces\n"
    lines = [f"{t.id}  {t.root().service}: {t.root().operation}  {len(t.spans)} spans  {_ms(t.duration_us)}  "
             f"{', '.join(t.services())}" for t in traces]
    return "\n".join(lines) + "\n"


def text(trace: Trace) -> str:
    """The trace as an indented tree: start offset, duration, service, kind, operation, status."""
    start = trace.start_us
    lines = [f"trace {trace.id}: {len(trace.spans)} spans, {_ms(trace.duration_us)}, "
             f"{', '.join(trace.services())}"]
    for depth, span in trace.tree():
        mark = " ERROR" if span.error else ""
        lines.append(f"{'  ' * depth}+{_ms(span.start_us - start):>10} {_ms(span.duration_us):>10}  "
                     f"{span.service} {span.kind or '-'} {span.operation} {span.status or '-'}{mark}")
    return "\n".join(lines) + "\n"


def page(trace: Trace, source: str) -> str:
    """A self-contained HTML page (no script): the trace's waterfall, a row per span under its parent, and the
    tags of each span."""
    esc = html.escape
    start, total = trace.start_us, max(trace.duration_us, 1)
    width, label_w, row_h = 1100, 420, 24
    rows, details = [], []
    for i, (depth, span) in enumerate(trace.tree()):
        y = i * row_h
        x = label_w + (span.start_us - start) / total * (width - label_w - 10)
        w = max(span.duration_us / total * (width - label_w - 10), 2)
        colour = "#d9534f" if span.error else ("#5b8bd9" if span.kind == "client" else "#4cae4c")
        rows.append(
            f'<g class="span" data-span="{esc(span.id)}" data-parent="{esc(span.parent or "")}" '
            f'data-service="{esc(span.service)}" data-kind="{esc(span.kind)}">'
            f'<text x="{4 + depth * 14}" y="{y + 16}">{esc(span.service)}: {esc(span.operation[:48])}</text>'
            f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{colour}"/>'
            f'<text x="{min(x + w + 4, width - 90):.1f}" y="{y + 16}" class="d">{_ms(span.duration_us)}</text></g>')
        tags = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in sorted(span.tags.items()))
        details.append(f"<details><summary>{esc(span.service)} {esc(span.kind)} {esc(span.operation)} "
                       f"{esc(span.status)} ({_ms(span.duration_us)})</summary><table>{tags}</table></details>")
    height = len(rows) * row_h + 4
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>trace {esc(trace.id)}</title>
<style>body{{font-family:sans-serif;margin:16px}}svg text{{font-size:12px}}svg .d{{fill:#555}}
table{{border-collapse:collapse}}td{{border:1px solid #ccc;padding:2px 6px}}.legend{{color:#555}}</style></head>
<body><h1>Trace {esc(trace.id)}</h1>
<p class="legend">From {esc(source)}: {len(trace.spans)} spans over {_ms(trace.duration_us)}, services
{esc(', '.join(trace.services()))}. Each span sits under the span that caused it. Blue: a proxy's call out
(client), green: a proxy's answer (server), red: an error.</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">
{chr(10).join(rows)}
</svg>
{chr(10).join(details)}
</body></html>
"""
