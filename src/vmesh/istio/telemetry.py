"""Telemetry: access logs, tracing and metrics per workload, on each side of a call (client, server).

Scope, as Istio: the mesh-wide Telemetry (root namespace ``istio-system``, no selector), then the namespace's
(no selector), then the one whose ``selector`` picks the workload in its own namespace; each later one overrides
what it sets. Providers are those of ``vmesh_mesh_config`` (vmesh.istio.meshconfig).

- ``accessLogging``: each entry turns its providers (or the default ones) on, or off with ``disabled``; with no
  default provider the built-in ``envoy`` (Istio's format, to the proxy's journal) is meant.
- ``tracing``: the provider (one), ``randomSamplingPercentage``, ``disableSpanReporting`` and ``customTags``, each
  from the most specific Telemetry that sets it.
- ``metrics``: the providers (``prometheus``: on), and ``overrides`` in order, least specific first: a metric
  ``disabled``, or a tag removed (``REMOVE``) or set to a literal (``UPSERT`` of a quoted string; vmesh evaluates
  no other expression).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from vmesh.documents import Document, show
from vmesh.errors import MeshError
from vmesh.istio.fields import Node, root
from vmesh.istio.meshconfig import FileLog, MeshConfig, Prometheus, Tracer, percent
from vmesh.istio.sidecar import ROOT_NAMESPACE

MODES = ("CLIENT_AND_SERVER", "CLIENT", "SERVER")
SIDES = ("client", "server")
# Istio's metric names in the API -> in Prometheus
METRICS = {
    "REQUEST_COUNT": "istio_requests_total",
    "REQUEST_DURATION": "istio_request_duration_milliseconds",
    "REQUEST_SIZE": "istio_request_bytes",
    "RESPONSE_SIZE": "istio_response_bytes",
    "TCP_OPENED_CONNECTIONS": "istio_tcp_connections_opened_total",
    "TCP_CLOSED_CONNECTIONS": "istio_tcp_connections_closed_total",
    "TCP_SENT_BYTES": "istio_tcp_sent_bytes_total",
    "TCP_RECEIVED_BYTES": "istio_tcp_received_bytes_total",
    "GRPC_REQUEST_MESSAGES": "istio_request_messages_total",
    "GRPC_RESPONSE_MESSAGES": "istio_response_messages_total",
}
_TAG = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LITERAL = re.compile(r"""^(?:'([^'\\"]*)'|"([^'\\"]*)")$""")


@dataclasses.dataclass(frozen=True)
class TagOverride:
    metric: str  # a Prometheus name, or "*" for all
    tag: str
    value: str | None  # None: removed


@dataclasses.dataclass(frozen=True)
class _Logging:
    mode: str
    providers: tuple[tuple[Node, str], ...]
    disabled: bool


@dataclasses.dataclass(frozen=True)
class _Tracing:
    mode: str
    provider: tuple[Node, str] | None
    sampling: float | None
    disable_reporting: bool | None
    custom_tags: tuple[tuple[str, str, str, str], ...] | None  # (tag, literal|environment|header, value, default)


@dataclasses.dataclass(frozen=True)
class _Override:
    mode: str
    metrics: tuple[str, ...]
    disabled: bool | None
    tags: tuple[TagOverride, ...]


@dataclasses.dataclass(frozen=True)
class _Metrics:
    providers: tuple[tuple[Node, str], ...] | None
    overrides: tuple[_Override, ...]


@dataclasses.dataclass
class Telemetry:
    doc: Document
    selector: dict[str, str] | None
    logging: list[_Logging]
    tracing: list[_Tracing]
    metrics: list[_Metrics]

    @property
    def mesh_wide(self) -> bool:
        return self.doc.namespace == ROOT_NAMESPACE and self.selector is None

    def selects(self, namespace: str, labels: dict[str, str]) -> bool:
        return (self.selector is not None and self.doc.namespace == namespace
                and all(labels.get(k) == v for k, v in self.selector.items()))


@dataclasses.dataclass(frozen=True)
class Side:
    """What one side (client or server) of a workload's proxy records."""

    logs: tuple[FileLog, ...] = ()
    tracer: Tracer | None = None
    sampling: float = 0.0
    report_spans: bool = True
    custom_tags: tuple[tuple[str, str, str, str], ...] = ()
    metrics: bool = True
    disabled: frozenset[str] = frozenset()  # Prometheus names of the metrics not written
    tags: tuple[TagOverride, ...] = ()


def _mode(node: Node, known: tuple[str, ...] = ("mode",)) -> str:
    mode = node.mapping(known).get("mode").string(default="CLIENT_AND_SERVER")
    if mode not in MODES:
        raise node.get("mode").error(f"expected one of {', '.join(MODES)}, got {show(mode)}")
    return mode


def _providers(node: Node) -> tuple[tuple[Node, str], ...]:
    out = []
    for item in node.items():
        out.append((item.get("name"), item.mapping(("name",)).get("name").string(required=True)))
    return tuple(out)


def _custom_tags(node: Node) -> tuple[tuple[str, str, str, str], ...] | None:
    if not node.present:
        return None
    tags = []
    for name, spec in node.entries():
        spec.mapping(("literal", "environment", "header"), ("formatter",))
        kinds = [k for k in ("literal", "environment", "header") if spec.get(k).present]
        if len(kinds) != 1:
            raise spec.error("expected exactly one of literal, environment, header")
        kind = kinds[0]
        if kind == "literal":
            value = spec.get(kind).mapping(("value",)).get("value").string(required=True)
            tags.append((name, kind, value, ""))
        else:
            fields = spec.get(kind).mapping(("name", "defaultValue"))
            tags.append((name, kind, fields.get("name").string(required=True),
                         fields.get("defaultValue").string(default="")))
    return tuple(tags)


def _override(node: Node) -> _Override:
    spec = node.mapping(("match", "disabled", "tagOverrides"))
    match = spec.get("match").mapping(("metric", "mode"), ("customMetric",))
    mode = _mode(match, ("metric", "mode"))
    metric = match.get("metric").string(default="ALL_METRICS")
    if metric != "ALL_METRICS" and metric not in METRICS:
        raise match.get("metric").error(f"expected ALL_METRICS or one of {', '.join(METRICS)}, got {show(metric)}")
    names = ("*",) if metric == "ALL_METRICS" else (METRICS[metric],)
    tags = []
    for tag, item in spec.get("tagOverrides").entries():
        if not _TAG.match(tag):
            raise item.error(f"expected a Prometheus label name, got {show(tag)}")
        fields = item.mapping(("operation", "value"))
        operation = fields.get("operation").string(default="UPSERT")
        if operation == "REMOVE":
            if fields.get("value").present:
                raise fields.get("value").error("REMOVE takes no value")
            value = None
        elif operation == "UPSERT":
            text = fields.get("value").string(required=True)
            literal = _LITERAL.match(text)
            if not literal:
                raise fields.get("value").error(f"vmesh sets a tag to a quoted literal such as \"'v1'\"; the "
                                                f"expression {show(text)} is not supported yet")
            value = literal.group(1) if literal.group(1) is not None else literal.group(2)
        else:
            raise fields.get("operation").error(f"expected UPSERT or REMOVE, got {show(operation)}")
        tags.extend(TagOverride(name, tag, value) for name in names)
    disabled = spec.get("disabled").boolean() if spec.get("disabled").present else None
    return _Override(mode, names, disabled, tuple(tags))


def parse(doc: Document) -> Telemetry:
    spec = root(doc).mapping(("selector", "accessLogging", "tracing", "metrics"), ("targetRef", "targetRefs"))
    selector = None
    if spec.get("selector").present:
        selector = spec.get("selector").mapping(("matchLabels",)).get("matchLabels").string_map()
    logging = []
    for item in spec.get("accessLogging").items():
        fields = item.mapping(("match", "providers", "disabled"), ("filter",))
        logging.append(_Logging(_mode(fields.get("match")), _providers(fields.get("providers")),
                                fields.get("disabled").boolean()))
    tracing = []
    for item in spec.get("tracing").items():
        fields = item.mapping(("match", "providers", "randomSamplingPercentage", "disableSpanReporting",
                               "customTags"),
                              ("useRequestIdForTraceSampling", "enableIstioTags", "disableContextPropagation"))
        providers = _providers(fields.get("providers"))
        if len(providers) > 1:
            raise fields.get("providers").error("Istio supports one tracing provider per proxy; name one")
        reporting = fields.get("disableSpanReporting")
        tracing.append(_Tracing(_mode(fields.get("match")), providers[0] if providers else None,
                                percent(fields.get("randomSamplingPercentage")),
                                reporting.boolean() if reporting.present else None,
                                _custom_tags(fields.get("customTags"))))
    metrics = []
    for item in spec.get("metrics").items():
        fields = item.mapping(("providers", "overrides"), ("reportingInterval",))
        providers = _providers(fields.get("providers")) if fields.get("providers").present else None
        metrics.append(_Metrics(providers, tuple(_override(o) for o in fields.get("overrides").items())))
    return Telemetry(doc, selector, logging, tracing, metrics)


def check(telemetries: list[Telemetry], config: MeshConfig) -> None:
    """Every provider named exists and is of the right kind; one selector-less Telemetry per namespace."""
    seen: dict[str, Telemetry] = {}
    for t in telemetries:
        for entry in t.logging:
            for node, name in entry.providers:
                config.provider(node, name, FileLog)
        for entry in t.tracing:
            if entry.provider:
                config.provider(entry.provider[0], entry.provider[1], Tracer)
        for entry in t.metrics:
            for node, name in entry.providers or ():
                config.provider(node, name, Prometheus)
        if t.selector is None:
            other = seen.setdefault(t.doc.namespace, t)
            if other is not t:
                scope = "mesh" if t.mesh_wide else f"namespace {t.doc.namespace}"
                raise MeshError(f"{other.doc.ref} in {other.doc.file} is already the {scope}-wide Telemetry; keep one",
                                file=t.doc.file, doc=t.doc.ref, field="spec.selector")


def chain(telemetries: Iterable[Telemetry], namespace: str, labels: dict[str, str]) -> list[Telemetry]:
    """The Telemetries that apply to a workload, least specific first (mesh, namespace, workload)."""
    telemetries = list(telemetries)
    own = [t for t in telemetries if t.selects(namespace, labels)]
    if len(own) > 1:
        raise MeshError(f"{own[0].doc.ref} in {own[0].doc.file} already selects this workload (labels {labels}); "
                        "Istio would pick the oldest, vmesh needs one", file=own[1].doc.file, doc=own[1].doc.ref,
                        field="spec.selector")
    mesh = [t for t in telemetries if t.mesh_wide]
    space = [t for t in telemetries if t.selector is None and t.doc.namespace == namespace and not t.mesh_wide]
    return mesh + space + own


def _applies(mode: str, side: str) -> bool:
    return mode == "CLIENT_AND_SERVER" or mode.lower() == side


def resolve(applicable: list[Telemetry], config: MeshConfig, side: str, *, access_log: bool = False) -> Side:
    """What one side records, from the applicable Telemetries (``chain``) over the mesh's defaults;
    ``access_log``: the host's vmesh_access_log (the ``envoy`` provider on by default)."""
    defaults = tuple(dict.fromkeys(config.default_logging + (("envoy",) if access_log else ())))
    logs: dict[str, bool] = {name: True for name in defaults}
    tracer = config.default_tracing[0] if config.default_tracing else None
    sampling, report, custom = config.sampling, True, ()
    metric_providers = config.default_metrics
    disabled: set[str] = set()
    tags: list[TagOverride] = []
    for t in applicable:
        for entry in t.logging:
            if _applies(entry.mode, side):
                for name in [n for _, n in entry.providers] or list(defaults) or ["envoy"]:
                    logs[name] = not entry.disabled
        for entry in t.tracing:
            if not _applies(entry.mode, side):
                continue
            tracer = entry.provider[1] if entry.provider else tracer
            sampling = entry.sampling if entry.sampling is not None else sampling
            report = not entry.disable_reporting if entry.disable_reporting is not None else report
            custom = entry.custom_tags if entry.custom_tags is not None else custom
        for entry in t.metrics:
            if entry.providers is not None:
                metric_providers = tuple(n for _, n in entry.providers)
            for override in entry.overrides:
                if not _applies(override.mode, side):
                    continue
                names = list(METRICS.values()) if override.metrics == ("*",) else list(override.metrics)
                if override.disabled is not None:
                    (disabled.update if override.disabled else disabled.difference_update)(names)
                tags.extend(override.tags)
    providers = config.providers
    return Side(tuple(providers[n] for n, on in logs.items() if on),
                providers[tracer] if tracer and config.tracing_enabled else None,  # type: ignore[arg-type]
                sampling, report, custom, bool(metric_providers), frozenset(disabled), tuple(tags))
