"""Health checks from ``vmesh_probe`` (Istio's WorkloadGroup probe): the app is probed on its own host, and clients
ask that host's proxy for the answer.

- On the host that serves: an HTTP or TCP probe is an Envoy active health check of the cluster ``vmesh_probe``
  (the app on loopback, no traffic of its own); an exec probe is run by ``vmesh-probe`` (roles/proxy), which fails
  and clears Envoy's health (admin ``/healthcheck/fail`` and ``/ok``). The readiness listener (15021) answers
  ``/healthz/probe`` from both: 200 while the app is healthy, 503 when not (Envoy's health check filter).
- On every client: the service's clusters health-check each endpoint's ``/healthz/probe`` on port 15021, in
  plaintext (the port is outside the capture and says only healthy or not), every ``periodSeconds``; an endpoint
  that answers anything but 200, or not at all, takes no new request until it answers 200 again.

The app's own thresholds count on its host; clients take the host's word at once (thresholds of 1), so a VM whose
app fails is out of every client's load balancing within one period of the probe declaring it unhealthy.
"""

from __future__ import annotations

from typing import Any

from vmesh.compile.envoy_types import CLUSTER, RAW_BUFFER, socket_address, typed
from vmesh.registry import Probe

PROBE_CLUSTER = "vmesh_probe"
PROBE_PATH = "/healthz/probe"
PROBE_PORT = 15021  # the readiness listener's (listeners.READINESS_PORT)
HEALTH_CHECK = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
# what selects the plaintext socket for health checks among a cluster's transport sockets
_MATCH = {"vmesh-probe": True}


def _timing(probe: Probe) -> dict[str, Any]:
    return {"interval": f"{probe.period}s", "timeout": f"{probe.timeout}s"}


def local_cluster(probe: Probe | None) -> list[dict[str, Any]]:
    """The cluster the host's own Envoy probes its app through (none for an exec probe, or no probe)."""
    if probe is None or probe.kind == "exec":
        return []
    check: dict[str, Any] = {**_timing(probe), "unhealthy_threshold": probe.failure,
                             "healthy_threshold": probe.success,
                             # nothing but the probe goes through it: probe at the period, not the idle one
                             "no_traffic_interval": f"{probe.period}s"}
    if probe.kind == "http":
        check["http_health_check"] = {"path": probe.path}
    else:
        check["tcp_health_check"] = {}
    return [{"@type": CLUSTER, "name": PROBE_CLUSTER, "type": "STATIC", "connect_timeout": f"{probe.timeout}s",
             "load_assignment": {"cluster_name": PROBE_CLUSTER, "endpoints": [{"lb_endpoints": [
                 {"endpoint": {"address": socket_address("127.0.0.1", probe.port)}}]}]},
             "health_checks": [check]}]


def readiness_filter(probe: Probe | None) -> list[dict[str, Any]]:
    """The readiness listener's health check filter: /healthz/probe from the probe's result."""
    if probe is None:
        return []
    config: dict[str, Any] = {"pass_through_mode": False,
                              "headers": [{"name": ":path", "string_match": {"exact": PROBE_PATH}}]}
    if probe.kind != "exec":
        config["cluster_min_healthy_percentages"] = {PROBE_CLUSTER: {"value": 100}}
    return [typed("envoy.filters.http.health_check", HEALTH_CHECK, **config)]


def client_checks(cluster: dict[str, Any], load_assignment: dict[str, Any], probe: Probe, fqdn: str) -> None:
    """A client's cluster of a probed service: health-check each endpoint's proxy (with the service's name as
    Host: Envoy's default, the cluster's name, is not a valid one)."""
    # every period, with traffic or without (Envoy's default for a cluster with none is a minute)
    cluster["health_checks"] = [{**_timing(probe), "no_traffic_interval": f"{probe.period}s",
                                 "unhealthy_threshold": 1, "healthy_threshold": 1,
                                 "http_health_check": {"path": PROBE_PATH, "host": fqdn},
                                 "transport_socket_match_criteria": _MATCH}]
    # the first match wins: the probe's plaintext socket before any tlsMode match (which may match everything)
    cluster["transport_socket_matches"] = [
        {"name": "vmesh-probe", "match": _MATCH, "transport_socket": {
            "name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": RAW_BUFFER}}},
        *cluster.get("transport_socket_matches", [])]
    for group in load_assignment.get("endpoints", []):
        for lb_endpoint in group.get("lb_endpoints", []):
            lb_endpoint["endpoint"]["health_check_config"] = {"port_value": PROBE_PORT}
