"""Prometheus for the mesh: what it scrapes (every proxy's :15090, from the inventory), how (its config) and the
recording rules Istio's docs give, as the monitoring role writes them and the tests run them.

- ``targets``: Prometheus file_sd JSON, one group per mesh host: ``ADDRESS:15090`` with the labels ``instance``
  and ``mesh_host`` (the inventory host), ``mesh_namespace`` and ``mesh_service``. Rewritten on every site.yml, read by
  Prometheus without a restart.
- ``config``: prometheus.yml scraping ``/stats/prometheus`` of those targets and Prometheus itself.
- ``RULES``: Istio's recording rules for aggregation (``workload:istio_*``: the proxies' series without the
  ``instance`` they came from), so long-range and federated queries read fewer series.
- ``jaeger_config``: Jaeger's config, for the trace store on the same host.
"""

from __future__ import annotations

import json
from typing import Any

from vmesh.registry import Registry

STATS_PORT = 15090
STATS_PATH = "/stats/prometheus"
JOB = "vmesh-proxies"
# Istio's recording rules (istio.io, "Observability best practices"), with the target labels vmesh adds
_PER_INSTANCE = "instance, mesh_host"
RULES = {"groups": [{"name": "istio.workload.rules", "interval": "10s", "rules": [
    {"record": f"workload:{name}", "expr": f"sum without({_PER_INSTANCE}) ({name})"}
    for name in ("istio_requests_total", "istio_request_duration_milliseconds_count",
                 "istio_request_duration_milliseconds_sum", "istio_request_duration_milliseconds_bucket",
                 "istio_request_bytes_count", "istio_request_bytes_sum", "istio_request_bytes_bucket",
                 "istio_response_bytes_count", "istio_response_bytes_sum", "istio_response_bytes_bucket",
                 "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total",
                 "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total")]}]}


def targets(registry: Registry, addresses: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """file_sd groups: every mesh host, sorted by host, at its address in ``addresses`` (the inventory's
    ansible_host, which may be a name), else its mesh address; hosts with neither are left out."""
    groups = []
    for host, workload in sorted(registry.workloads.items()):
        address = (addresses or {}).get(host) or workload.address
        if not address:
            continue
        groups.append({"targets": [f"{address}:{STATS_PORT}"],
                       "labels": {"instance": host, "mesh_host": host, "mesh_namespace": workload.namespace,
                                  "mesh_service": workload.service or ""}})
    return groups


def config(targets_file: str, rules_file: str, *, scrape_interval: str = "15s",
           evaluation_interval: str = "15s") -> dict[str, Any]:
    """prometheus.yml (as data): the proxies from ``targets_file``, Prometheus itself, the rules."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [rules_file],
        "scrape_configs": [
            {"job_name": JOB, "metrics_path": STATS_PATH, "file_sd_configs": [{"files": [targets_file]}]},
            {"job_name": "prometheus", "static_configs": [{"targets": ["localhost:9090"]}]},
        ],
    }


# Jaeger's ports: Zipkin (what the proxies' Zipkin tracer sends to), OTLP over gRPC and HTTP, the query API and
# UI, its gRPC API, the health check
JAEGER_PORTS = {"zipkin": 9411, "otlp-grpc": 4317, "otlp-http": 4318, "query": 16686, "query-grpc": 16685,
                "health": 13133}


def jaeger_config(*, listen: str = "0.0.0.0", max_traces: int = 100_000, ui_assets: str = "") -> dict[str, Any]:
    """Jaeger v2's config (as data): Zipkin and OTLP in, the newest ``max_traces`` traces kept in memory, the
    query API (and UI) on 16686. ``ui_assets``: a directory of jaeger-ui's built files, which the Go module
    does not carry (without it, 16686 serves the API and a placeholder page)."""
    def at(port: str) -> str:
        return f"{listen}:{JAEGER_PORTS[port]}"

    query: dict[str, Any] = {"storage": {"traces": "memory"}, "enable_tracing": False,
                             "http": {"endpoint": at("query")}, "grpc": {"endpoint": at("query-grpc")}}
    if ui_assets:
        query["ui"] = {"assets_path": ui_assets}
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {"traces": {"receivers": ["otlp", "zipkin"], "processors": ["batch"],
                                     "exporters": ["jaeger_storage_exporter"]}},
            "telemetry": {"resource": {"service.name": "jaeger"}, "metrics": {"level": "none"},
                          "logs": {"level": "warn"}},
        },
        "extensions": {
            "jaeger_storage": {"backends": {"memory": {"memory": {"max_traces": max_traces}}}},
            "jaeger_query": query,
            "healthcheckv2": {"use_v2": True, "http": {"endpoint": at("health")}},
        },
        "receivers": {
            "otlp": {"protocols": {"grpc": {"endpoint": at("otlp-grpc")}, "http": {"endpoint": at("otlp-http")}}},
            "zipkin": {"endpoint": at("zipkin")},
        },
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memory"}},
    }


def dumps(data: Any) -> str:
    """JSON text (YAML reads it too), stable for idempotent writes."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
