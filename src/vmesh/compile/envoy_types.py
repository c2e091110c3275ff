"""Envoy type URLs and small builders shared by the compiler's parts."""

from __future__ import annotations

import functools
import hashlib
import re

from typing import Any

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_LOAD_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
HTTP_PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
DOWNSTREAM_CONNECTIONS = \
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"

# Istio's names for the catch-all clusters; dashboards and users look for them.
PASSTHROUGH = "PassthroughCluster"
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"
BLACKHOLE = "BlackHoleCluster"

# Istio lifts Envoy's default circuit-breaker limits (1024) out of the way; DestinationRules set real ones.
UNLIMITED = 4294967295


def socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def typed(name: str, type_url: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": type_url, **config}}


def tcp_proxy(stat_prefix: str, cluster: str) -> dict[str, Any]:
    return typed("envoy.filters.network.tcp_proxy", TCP_PROXY, stat_prefix=stat_prefix, cluster=cluster)


def file_source(config_dir: str, file: str) -> dict[str, Any]:
    """Filesystem xDS: Envoy re-reads ``config_dir/file`` whenever something is moved into ``config_dir``.

    On the VM ``config_dir/file`` is a link ``..data/file`` and ``..data`` a link to the version directory in
    force (plugins/module_utils/envoy_files.py): the one rename of ``..data`` that switches versions is a
    move into ``config_dir``, so every resource watching it (LDS, CDS, each RDS and EDS file) re-reads, through
    the links, the new version. Path and watched directory are therefore the plain ones, the same for a directory
    of plain files (the layout before versions, and the test harness's), and nothing here names a version.
    ``resource_api_version`` is left out: V3 is Envoy's only one, and its default."""
    return {"path_config_source": {"path": f"{config_dir}/{file}", "watched_directory": {"path": config_dir}}}


def secret_source(config_dir: str, file: str) -> dict[str, Any]:
    """Where a secret's SDS file is read from. Unlike file_source, Envoy reads it when a listener or cluster
    first names it and not again: what the file says (where the certificate, key and trust bundle are) is
    fixed, and the secret watches those files itself. A changed secret file therefore needs a restart, which the
    config module asks for (plugins/module_utils/sidecar.py); the files' contents change with no restart."""
    return {"path_config_source": {"path": f"{config_dir}/{file}"}}


_FILE_CHAR = re.compile(r"[A-Za-z0-9.-]")
FILE_STEM_MAX = 200  # file names stay well under the usual 255 bytes


@functools.cache  # hosts name the same shared resources again and again
def resource_file(prefix: str, name: str) -> str:
    """The file that holds one named resource (Envoy's filesystem xDS reads one per file): ``rds`` a
    RouteConfiguration, ``eds`` a cluster's endpoints (ClusterLoadAssignment).

    One file per name, never shared: '|' (Istio's separator in route names) is written '_', every other character
    but letters, digits, '.' and '-' as '~' and its code point in six hex digits. A longer name is cut, and its
    SHA-256 follows a '+' (a character the rest never uses)."""
    stem = "".join("_" if c == "|" else c if _FILE_CHAR.fullmatch(c) else f"~{ord(c):06x}" for c in name)
    if len(stem) > FILE_STEM_MAX:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        stem = stem[:FILE_STEM_MAX - 17] + "+" + digest
    return f"{prefix}_{stem}.json"
