"""The part of Istio's meshConfig that vmesh reads, from the inventory variable ``vmesh_mesh_config``: the
telemetry providers (``extensionProviders``), the ones used when a Telemetry names none (``defaultProviders``), the
mesh-wide access log of older Istio (``accessLogFile``, ``accessLogEncoding``, ``accessLogFormat``), and tracing's
mesh-wide switch and sampling (``enableTracing``, ``defaultConfig.tracing.sampling``). An IstioOperator's
``meshConfig:`` block with these fields can be pasted as it is.

Providers, as Istio: ``envoyFileAccessLog`` (a path, ``/dev/stdout`` by default, which goes to the proxy's
journal; text or JSON), ``zipkin`` and ``opentelemetry`` (a service of the mesh, from the inventory or a
ServiceEntry, and one of its ports), ``prometheus``. Built in: ``envoy`` (the access log on stdout in Istio's
format) and ``prometheus``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from vmesh.documents import Document, show
from vmesh.errors import MeshError
from vmesh.istio.fields import Node, duration_ns
from vmesh.registry import Registry

VARIABLE = "vmesh_mesh_config"
STDOUT = "/dev/stdout"
STDERR = "/dev/stderr"
# Istio's default access log (pilot/pkg/model/telemetry_logging.go, EnvoyTextLogFormat)
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    '%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" '
    '"%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    '%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% '
    '%ROUTE_NAME%\n')
# ... and its JSON form (EnvoyJSONLogFormatIstio), keys in Istio's order
ISTIO_JSON_FORMAT = {
    "start_time": "%START_TIME%", "route_name": "%ROUTE_NAME%", "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%", "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%", "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%", "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%", "request_id": "%REQ(X-REQUEST-ID)%", "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%", "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%", "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%", "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}
DEFAULT_SAMPLING = 1.0  # percent, as Istio's default install (pilot.traceSampling)
LEGACY_LOG = "(accessLogFile)"  # the provider name of the mesh-wide access log of older Istio
CONTEXT_OPTIONS = ("USE_B3", "USE_B3_WITH_W3C_PROPAGATION")
_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class FileLog:
    """envoyFileAccessLog: where (a file, or the journal through stdout/stderr) and in which format."""

    name: str
    path: str
    text: str | None = None  # the format string (a newline at the end); None with json
    json: tuple[tuple[str, Any], ...] | None = None  # JSON keys -> command operators, in order
    omit_empty: bool = False


@dataclasses.dataclass(frozen=True)
class Tracer:
    """zipkin or opentelemetry: the collector is a service of the mesh, reached through its outbound cluster."""

    name: str
    kind: str  # "zipkin" | "opentelemetry"
    service: str  # FQDN
    port: int
    path: str = ""  # zipkin: /api/v2/spans; opentelemetry over HTTP: /v1/traces; "" with gRPC
    grpc: bool = False
    max_tag_length: int = 0  # 0: Envoy's default
    trace_id_128bit: bool = True
    context_option: str = "USE_B3"
    timeout_ns: int | None = None


@dataclasses.dataclass(frozen=True)
class Prometheus:
    name: str


Provider = FileLog | Tracer | Prometheus


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    providers: dict[str, Provider]
    default_tracing: tuple[str, ...] = ()
    default_metrics: tuple[str, ...] = ("prometheus",)
    default_logging: tuple[str, ...] = ()
    tracing_enabled: bool = True
    sampling: float = DEFAULT_SAMPLING

    def provider(self, node: Node, name: str, kind: type | tuple[type, ...]) -> Provider:
        """The provider ``name``, which must be of ``kind``: else an error at ``node``."""
        provider = self.providers.get(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if provider is None:
            known = ", ".join(sorted(n for n, p in self.providers.items() if isinstance(p, kinds) and n != LEGACY_LOG))
            raise node.error(f"provider {show(name)} is not defined in {VARIABLE}.extensionProviders "
                             f"(providers of this kind: {known or 'none'})")
        if not isinstance(provider, kinds):
            wanted = " or ".join(_KIND_NAMES[k] for k in kinds)
            raise node.error(f"provider {show(name)} is {_KIND_NAMES[type(provider)]}, expected {wanted}")
        return provider


_KIND_NAMES = {FileLog: "an envoyFileAccessLog", Tracer: "a tracing provider", Prometheus: "a metrics provider"}
BUILT_IN: dict[str, Provider] = {"envoy": FileLog("envoy", STDOUT, text=ISTIO_TEXT_FORMAT),
                                 "prometheus": Prometheus("prometheus")}


def _doc() -> Document:
    return Document("MeshConfig", VARIABLE, "default", {}, "inventory", 0)


class _VariableNode(Node):
    """Errors name the variable (``inventory: vmesh_mesh_config.extensionProviders[0].zipkin.port: ...``)."""

    def error(self, message: str) -> MeshError:
        return MeshError(message, file="inventory", field=f"{VARIABLE}.{self.path}" if self.path else VARIABLE)


def percent(node: Node, default: float | None = None) -> float | None:
    """A percentage 0-100 (an integer or a number with decimals); ``default`` when absent."""
    if node.value is None:
        return default
    if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
        raise node.error(f"expected a percentage 0-100, got {show(node.value)}")
    if not 0 <= node.value <= 100:
        raise node.error(f"expected a percentage 0-100, got {node.value}")
    return float(node.value)


def _service(node: Node, registry: Registry) -> str:
    """``[namespace/]host`` of a collector: a service of the mesh (the inventory or a ServiceEntry)."""
    text = node.string(required=True)
    namespace, _, host = text.rpartition("/")
    fqdn = registry.fqdn(host, namespace or "default")
    if fqdn not in registry.services:
        raise node.error(f"{show(text)} is not a service of the mesh: serve it from an inventory host "
                         "(vmesh_service) or declare it with a ServiceEntry")
    return fqdn


def _port(node: Node, registry: Registry, fqdn: str) -> int:
    port = node.integer(required=True, minimum=1, maximum=65535)
    ports = [p.number for p in registry.services[fqdn].ports]
    if port not in ports:
        raise node.error(f"{fqdn} has no port {port} (its ports: {', '.join(map(str, ports))})")
    return port


def _file_log(name: str, node: Node) -> FileLog:
    spec = node.mapping(("path", "logFormat", "omitEmptyValues"))
    path = spec.get("path").string(default="") or STDOUT
    if not _PATH.match(path) or "/../" in path + "/" or path.endswith("/"):
        raise spec.get("path").error(f"expected an absolute file path such as /var/log/vmesh/access.log or "
                                     f"/dev/stdout, got {show(path)}")
    fmt = spec.get("logFormat").mapping(("text", "labels"))
    omit = spec.get("omitEmptyValues").boolean()
    if fmt.get("text").present and fmt.get("labels").present:
        raise fmt.error("set text or labels, not both")
    if fmt.get("labels").present:
        labels = fmt.get("labels")
        labels._expect(dict)
        items = tuple((str(k), v) for k, v in labels.value.items()) or tuple(ISTIO_JSON_FORMAT.items())
        return FileLog(name, path, json=items, omit_empty=omit)
    text = fmt.get("text").string(default=None)
    if text is not None and not text.endswith("\n"):
        text += "\n"
    return FileLog(name, path, text=text or ISTIO_TEXT_FORMAT, omit_empty=omit)


def _tracer(name: str, kind: str, node: Node, registry: Registry) -> Tracer:
    if kind == "zipkin":
        spec = node.mapping(("service", "port", "maxTagLength", "enable64bitTraceId", "path", "traceContextOption",
                             "timeout"), ("headers",))
        option = spec.get("traceContextOption").string(default="USE_B3")
        if option not in CONTEXT_OPTIONS:
            raise spec.get("traceContextOption").error(f"expected one of {', '.join(CONTEXT_OPTIONS)}, "
                                                       f"got {show(option)}")
        path, grpc = spec.get("path").string(default="/api/v2/spans"), False
        trace_128 = not spec.get("enable64bitTraceId").boolean()
    else:
        spec = node.mapping(("service", "port", "maxTagLength", "http", "grpc"),
                            ("resourceDetectors", "dynatraceSampler", "serviceAttributeEnrichment"))
        if spec.get("http").present and spec.get("grpc").present:
            raise spec.error("set http or grpc, not both")
        http = spec.get("http").mapping(("path", "timeout"), ("headers",))
        spec.get("grpc").mapping(("timeout",), ("initialMetadata",))
        grpc = not spec.get("http").present
        path = "" if grpc else http.get("path").string(default="/v1/traces")
        option, trace_128 = "", True
    if path and not _PATH.match(path):
        raise spec.get("path").error(f"expected an absolute URL path such as /api/v2/spans, got {show(path)}")
    fqdn = _service(spec.get("service"), registry)
    port = _port(spec.get("port"), registry, fqdn)
    if grpc and registry.services[fqdn].port(port).protocol not in ("grpc", "http2"):
        raise spec.get("port").error(f"OpenTelemetry over gRPC needs an HTTP/2 port; {fqdn} port {port} is "
                                     f"{registry.services[fqdn].port(port).protocol} (set the port's protocol to grpc, "
                                     "or use http)")
    timeout_node = (spec.get("timeout") if kind == "zipkin" else
                    (spec.get("grpc") if grpc else spec.get("http")).get("timeout"))
    return Tracer(name, kind, fqdn, port, path, grpc, spec.get("maxTagLength").integer(default=0, minimum=0),
                  trace_128, option or "USE_B3", duration_ns(timeout_node, minimum_ns=1_000_000))


_PROVIDER_KINDS = ("envoyFileAccessLog", "zipkin", "opentelemetry", "prometheus")
_UNSUPPORTED = ("envoyExtAuthzHttp", "envoyExtAuthzGrpc", "stackdriver", "skywalking", "datadog", "lightstep",
                "envoyHttpAls", "envoyTcpAls", "envoyOtelAls", "sds")


def parse(value: Any, registry: Registry) -> MeshConfig:
    """``vmesh_mesh_config`` as the inventory gives it (None: Istio's defaults)."""
    top = _VariableNode(_doc(), "", value).mapping(
        ("extensionProviders", "defaultProviders", "accessLogFile", "accessLogEncoding", "accessLogFormat",
         "enableTracing", "defaultConfig"))
    providers: dict[str, Provider] = dict(BUILT_IN)
    for item in top.get("extensionProviders").items():
        spec = item.mapping(("name",) + _PROVIDER_KINDS, _UNSUPPORTED)
        name = spec.get("name").string(required=True)
        if not _NAME.match(name):
            raise spec.get("name").error(f"expected a name of letters, digits, '-', '_' and '.', got {show(name)}")
        if name in providers and name not in BUILT_IN:
            raise spec.get("name").error(f"provider {show(name)} is defined twice")
        kinds = [k for k in _PROVIDER_KINDS if spec.get(k).present]
        if len(kinds) != 1:
            raise spec.error(f"expected exactly one of {', '.join(_PROVIDER_KINDS)}, got "
                             f"{', '.join(kinds) or 'none'}")
        kind = kinds[0]
        if kind == "envoyFileAccessLog":
            providers[name] = _file_log(name, spec.get(kind))
        elif kind == "prometheus":
            spec.get(kind).mapping(())
            providers[name] = Prometheus(name)
        else:
            providers[name] = _tracer(name, kind, spec.get(kind), registry)
    defaults = top.get("defaultProviders").mapping(("tracing", "metrics", "accessLogging"))
    config = MeshConfig(providers)
    chosen: dict[str, tuple[str, ...]] = {}
    for field, kind in (("tracing", Tracer), ("metrics", Prometheus), ("accessLogging", FileLog)):
        names = []
        for item in defaults.get(field).items():
            name = item.string(required=True)
            config.provider(item, name, kind)
            names.append(name)
        chosen[field] = tuple(names)
    if not defaults.get("metrics").present:
        chosen["metrics"] = ("prometheus",)
    if len(chosen["tracing"]) > 1:
        raise defaults.get("tracing").error("Istio supports one tracing provider per proxy; name one")
    log_file = top.get("accessLogFile").string(default="")
    encoding = top.get("accessLogEncoding").string(default="TEXT")
    if encoding not in ("TEXT", "JSON"):
        raise top.get("accessLogEncoding").error(f"expected TEXT or JSON, got {show(encoding)}")
    log_format = top.get("accessLogFormat").string(default="")
    if log_file:
        legacy = {"path": log_file}
        if encoding == "JSON":
            if log_format:
                raise top.get("accessLogFormat").error("with accessLogEncoding JSON vmesh takes Istio's JSON format; "
                                                       "for other keys define an envoyFileAccessLog provider with "
                                                       "logFormat.labels")
            legacy["logFormat"] = {"labels": {}}
        elif log_format:
            legacy["logFormat"] = {"text": log_format}
        providers[LEGACY_LOG] = _file_log(LEGACY_LOG, _VariableNode(_doc(), "accessLogFile", legacy))
        chosen["accessLogging"] += (LEGACY_LOG,)
    tracing = top.get("defaultConfig").mapping(("tracing",)).get("tracing").mapping(("sampling",))
    return MeshConfig(providers, chosen["tracing"], chosen["metrics"], chosen["accessLogging"],
                      top.get("enableTracing").boolean(default=True),
                      percent(tracing.get("sampling"), DEFAULT_SAMPLING))
