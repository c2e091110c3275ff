"""The bootstrap: node identity, local admin, static readiness/stats listeners, and the file-based xDS sources."""

from __future__ import annotations

from typing import Any

from vmesh.compile import listeners, telemetry
from vmesh.compile.envoy_types import DOWNSTREAM_CONNECTIONS, file_source, socket_address
from vmesh.registry import Registry, Workload

LDS_FILE = "lds.json"
CDS_FILE = "cds.json"
MAX_DOWNSTREAM_CONNECTIONS = 100000
# Envoy's own histograms that nothing of vmesh reads, left unrecorded (Istio's default stats matcher keeps none of
# them): per request the connection managers' downstream_rq_time and every cluster's copy of upstream_rq_time for
# external (or internal) requests, which Istio's request duration covers on both sides; per connection the lengths
# and connect times. The outbound clusters' upstream_rq_time is kept: a canary rollout is judged on it. Inbound
# routers record no timings and per-code counters (listeners._hcm): their clusters' upstream_rq_completed, which
# would stay 0, is left out too (upstream_rq_total counts the calls). Other counters and gauges are all kept.
UNRECORDED_STATS = [{"suffix": ".downstream_rq_time"}, {"suffix": ".downstream_cx_length_ms"},
                    {"suffix": ".upstream_cx_length_ms"}, {"suffix": ".upstream_cx_connect_ms"},
                    {"suffix": ".external.upstream_rq_time"}, {"suffix": ".internal.upstream_rq_time"},
                    {"safe_regex": {"regex": r"^cluster\.inbound\|[^.]*\.upstream_rq_completed$"}}]


def node_id(workload: Workload, registry: Registry) -> str:
    """Istio's sidecar node id shape: sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN."""
    return f"sidecar~{workload.address or '0.0.0.0'}~{workload.host}.{workload.namespace}~" \
           f"{workload.namespace}.svc.{registry.cluster_domain}"


def bootstrap(workload: Workload, registry: Registry) -> dict[str, Any]:
    cluster = telemetry.service_name(workload)  # Istio's: the tracing service name, app.namespace
    return {
        "node": {
            "id": node_id(workload, registry),
            "cluster": cluster,
            "metadata": {"NAMESPACE": workload.namespace, "LABELS": workload.labels,
                         "SERVICE_ACCOUNT": workload.service_account, "INVENTORY_HOST": workload.host},
        },
        "admin": {"address": socket_address("127.0.0.1", listeners.ADMIN_PORT)},
        "static_resources": {
            "listeners": listeners.static(workload),
            "clusters": [{"name": listeners.ADMIN_CLUSTER, "type": "STATIC",
                          "connect_timeout": "1s", "load_assignment": {
                              "cluster_name": listeners.ADMIN_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
                                  "address": socket_address("127.0.0.1", listeners.ADMIN_PORT)}}]}]}}],
        },
        # The files of the config dir (each a link into the version in force, see file_source): Envoy reloads
        # them when the version is switched, with no restart; only this bootstrap needs one.
        "dynamic_resources": {
            "lds_config": file_source(workload.config_dir, LDS_FILE),
            "cds_config": file_source(workload.config_dir, CDS_FILE),
        },
        "stats_config": {"stats_matcher": {"exclusion_list": {"patterns": UNRECORDED_STATS}}},
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {"@type": DOWNSTREAM_CONNECTIONS,
                             "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS}}]},
    }
