"""Istio's Telemetry kind and meshConfig's providers (vmesh_mesh_config) in the compiled config: which access
loggers, tracer and metrics each side of a proxy gets, by scope, and what bad input is told. (Real traffic:
tests/netns/test_telemetry_kind.py.)"""

from __future__ import annotations

import json

import pytest

from harness.mesh import bookinfo_hosts, build, outbound_vhost, resources
from vmesh import envoy
from vmesh.compile import render_host
from vmesh.compile import telemetry as vmesh_telemetry  # telemetry() here builds documents
from vmesh.errors import MeshError

ZIPKIN_HOST = {"vmesh_service": "zipkin", "vmesh_namespace": "monitoring", "vmesh_labels": {"app": "zipkin"},
               "vmesh_ports": [{"port": 9411, "protocol": "http"}, {"port": 4317, "protocol": "grpc"}],
               "ansible_host": "10.0.0.99"}
PROVIDERS = [
    {"name": "zipkin", "zipkin": {"service": "zipkin.monitoring.svc.cluster.local", "port": 9411}},
    {"name": "otel", "opentelemetry": {"service": "monitoring/zipkin.monitoring.svc.cluster.local", "port": 4317}},
    {"name": "json-file", "envoyFileAccessLog": {"path": "/var/log/vmesh/access.json", "logFormat": {"labels": {}}}},
    {"name": "short", "envoyFileAccessLog": {"path": "/dev/stdout", "logFormat": {"text": "%RESPONSE_CODE%"}}},
]


def hosts_with(mesh_config, **extra) -> dict:
    hosts = bookinfo_hosts()
    hosts["zipkin"] = dict(ZIPKIN_HOST)
    for host in hosts.values():
        host["vmesh_mesh_config"] = mesh_config
        host.update(extra)
    return hosts


def telemetry(name: str, namespace: str, spec: str) -> str:
    return (f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}}}"
            f"\nspec:\n{spec}")


def hcms(files: dict[str, str], listener: str) -> list[dict]:
    found = []
    for item in resources(files, "lds.json"):
        if item["name"] == listener:
            for chain in item["filter_chains"]:
                found += [f["typed_config"] for f in chain["filters"] if "http_connection_manager" in f["name"]]
    return found


def loggers(hcm: dict) -> list[str]:
    return [log["name"] for log in hcm.get("access_log", [])]


def test_by_default_only_metrics_are_recorded():
    files = render_host(build(hosts=hosts_with({"extensionProviders": PROVIDERS})), "reviews-v1").files
    for listener in ("virtualOutbound", "virtualInbound"):
        for hcm in hcms(files, listener):
            assert loggers(hcm) == ["envoy.access_loggers.stats"]
            assert "tracing" not in hcm


def test_scopes_turn_access_logs_on_and_off_the_most_specific_last():
    mesh_wide = telemetry("mesh", "istio-system", "  accessLogging: [{providers: [{name: json-file}]}]\n")
    reviews_off = telemetry("reviews", "default", "  selector: {matchLabels: {app: reviews}}\n"
                                                  "  accessLogging: [{disabled: true, match: {mode: SERVER}}]\n")
    hosts = hosts_with({"extensionProviders": PROVIDERS, "defaultProviders": {"accessLogging": ["json-file"]}})
    for host in hosts.values():
        host["vmesh_labels"] = {**host.get("vmesh_labels", {}), "app": host.get("vmesh_service", "x")}
    mesh = build(mesh_wide, reviews_off, hosts=hosts)
    reviews = render_host(mesh, "reviews-v1").files
    ratings = render_host(mesh, "ratings-v1").files
    # reviews: its server side is off, its client side still logs; ratings logs on both sides
    assert all(loggers(h) == ["envoy.access_loggers.stats"] for h in hcms(reviews, "virtualInbound"))
    outbound = hcms(reviews, "virtualOutbound")[0]
    assert loggers(outbound) == ["envoy.access_loggers.file", "envoy.access_loggers.stats"]
    log = outbound["access_log"][0]["typed_config"]
    assert log["path"] == "/var/log/vmesh/access.json"
    assert log["log_format"]["json_format"]["response_code"] == "%RESPONSE_CODE%"  # Istio's JSON keys
    assert all("envoy.access_loggers.file" in loggers(h) for h in hcms(ratings, "virtualInbound"))


def test_the_envoy_provider_and_vmesh_access_log_write_istios_text_format_to_the_journal():
    files = render_host(build(hosts=hosts_with(None, vmesh_access_log=True)), "reviews-v1").files
    (hcm, *_) = hcms(files, "virtualInbound")
    log = hcm["access_log"][0]
    assert log["name"] == "envoy.access_loggers.stdout"
    text = log["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    assert text.startswith('[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"')
    assert text.endswith("%ROUTE_NAME%\n")
    # a custom text format gets its newline
    custom = telemetry("mesh", "istio-system", "  accessLogging: [{providers: [{name: short}]}]\n")
    files = render_host(build(custom, hosts=hosts_with({"extensionProviders": PROVIDERS})), "reviews-v1").files
    log = hcms(files, "virtualInbound")[0]["access_log"][0]["typed_config"]
    assert log["log_format"]["text_format_source"]["inline_string"] == "%RESPONSE_CODE%\n"


def test_tracing_sends_to_the_collector_cluster_with_istios_names_and_sampling():
    tracing = telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: zipkin}], "
                                                "randomSamplingPercentage: 100}]\n")
    half = telemetry("ratings", "default", "  selector: {matchLabels: {app: ratings}}\n"
                                           "  tracing: [{randomSamplingPercentage: 50}]\n")
    # reviews sees only ratings: the collector is not among the services it sees, its cluster is there anyway
    sidecar = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews}
spec:
  workloadSelector: {labels: {app: reviews}}
  egress: [{hosts: [./ratings.default.svc.cluster.local]}]
"""
    hosts = hosts_with({"extensionProviders": PROVIDERS})
    for host in hosts.values():
        host["vmesh_labels"] = {**host.get("vmesh_labels", {}), "app": host.get("vmesh_service", "x")}
    mesh = build(tracing, half, sidecar, hosts=hosts)
    files = render_host(mesh, "reviews-v1").files
    (inbound, *_) = hcms(files, "virtualInbound")
    config = inbound["tracing"]
    assert config["random_sampling"] == {"value": 100.0}
    assert config["operation"] == "reviews.default.svc.cluster.local:9080/*"
    zipkin = config["provider"]["typed_config"]
    cluster = "outbound|9411||zipkin.monitoring.svc.cluster.local"
    assert zipkin["collector_service"]["http_uri"]["cluster"] == cluster
    assert cluster in {c["name"] for c in resources(files, "cds.json")}
    assert "zipkin.monitoring" not in files["lds.json"].split('"tracing"')[0]  # no listener for it
    assert json.loads(files["envoy.json"])["node"]["cluster"] == "reviews.default"  # the spans' service name
    tags = {t["tag"]: t["literal"]["value"] for t in config["custom_tags"]}
    assert tags["istio.canonical_service"] == "reviews" and tags["istio.namespace"] == "default"
    # outbound, the route names the span (the connection manager's operation would override it)
    assert "operation" not in hcms(files, "virtualOutbound")[0]["tracing"]
    assert outbound_vhost(files, "ratings.default.svc.cluster.local")["routes"][0]["decorator"] == {
        "operation": "ratings.default.svc.cluster.local:9080/*"}
    # the most specific Telemetry's sampling wins, the provider is inherited
    ratings = hcms(render_host(mesh, "ratings-v1").files, "virtualInbound")[0]["tracing"]
    assert ratings["random_sampling"] == {"value": 50.0} and "provider" in ratings
    # every host's config is one Envoy takes
    for host in ("reviews-v1", "ratings-v1", "zipkin"):
        ok, message = envoy.validate(envoy.static_bundle(render_host(mesh, host).files), stub_missing=True)
        assert ok, message


def test_opentelemetry_over_grpc_and_sampling_from_the_mesh_default():
    hosts = hosts_with({"extensionProviders": PROVIDERS, "defaultProviders": {"tracing": ["otel"]},
                        "defaultConfig": {"tracing": {"sampling": 10}}})
    files = render_host(build(hosts=hosts), "ratings-v1").files
    config = hcms(files, "virtualInbound")[0]["tracing"]
    assert config["random_sampling"] == {"value": 10.0}
    otel = config["provider"]["typed_config"]
    assert otel["grpc_service"]["envoy_grpc"]["cluster_name"] == "outbound|4317||zipkin.monitoring.svc.cluster.local"
    assert otel["service_name"] == "ratings.default"
    ok, message = envoy.validate(envoy.static_bundle(files), stub_missing=True)
    assert ok, message


def test_metrics_overrides_drop_the_histograms_no_metric_needs():
    sizes_off = telemetry("mesh", "istio-system", """  metrics:
  - overrides:
    - match: {metric: REQUEST_SIZE}
      disabled: true
    - match: {metric: RESPONSE_SIZE, mode: CLIENT}
      disabled: true
""")
    all_off = telemetry("ratings", "default", "  selector: {matchLabels: {version: v1}}\n"
                                              "  metrics: [{overrides: [{disabled: true}]}]\n")
    mesh = build(sizes_off, all_off)
    files = render_host(mesh, "reviews-v2").files

    def histograms(hcm):
        stats = [log for log in hcm.get("access_log", []) if log["name"] == "envoy.access_loggers.stats"]
        return [h["stat"]["name"] for s in stats for h in s["typed_config"]["histograms"]]

    assert histograms(hcms(files, "virtualInbound")[0]) == ["d", "r"]
    assert histograms(hcms(files, "virtualOutbound")[0]) == ["d"]
    assert json.loads(files["peers.json"])["metrics"] == [
        "! s off istio_request_bytes", "! s off istio_response_bytes", "! d off istio_request_bytes"]
    # every metric off on the v1 hosts of the default namespace: no stats logger at all
    v1 = render_host(mesh, "ratings-v1").files
    assert all(histograms(h) == [] for h in hcms(v1, "virtualInbound") + hcms(v1, "virtualOutbound"))


def test_validation_writes_no_access_log_file(tmp_path):
    target = tmp_path / "access.json"
    provider = {"name": "file", "envoyFileAccessLog": {"path": str(target)}}
    mesh = build(telemetry("mesh", "istio-system", "  accessLogging: [{providers: [{name: file}]}]\n"),
                 hosts=hosts_with({"extensionProviders": [provider]}))
    bundle = envoy.static_bundle(render_host(mesh, "reviews-v1").files)
    assert str(target) not in bundle and "/dev/null" in bundle
    assert envoy.validate(bundle, stub_missing=True)[0]
    assert not target.exists()


@pytest.mark.parametrize("mesh_config, message", [
    ({"extensionProviders": [{"name": "z", "zipkin": {"service": "jaeger", "port": 9411}}]},
     "inventory: vmesh_mesh_config.extensionProviders[0].zipkin.service: 'jaeger' is not a service of the mesh"),
    ({"extensionProviders": [{"name": "z", "zipkin": {"service": "zipkin.monitoring.svc.cluster.local",
                                                      "port": 9412}}]},
     "vmesh_mesh_config.extensionProviders[0].zipkin.port: zipkin.monitoring.svc.cluster.local has no port 9412"),
    ({"extensionProviders": [{"name": "o", "opentelemetry": {"service": "zipkin.monitoring.svc.cluster.local",
                                                             "port": 9411}}]},
     "OpenTelemetry over gRPC needs an HTTP/2 port"),
    ({"extensionProviders": [{"name": "f", "envoyFileAccessLog": {"path": "relative.log"}}]},
     "vmesh_mesh_config.extensionProviders[0].envoyFileAccessLog.path: expected an absolute file path"),
    ({"extensionProviders": [{"name": "f", "envoyFileAccessLog": {}, "zipkin": {}}]},
     "expected exactly one of envoyFileAccessLog, zipkin, opentelemetry, prometheus"),
    ({"extensionProviders": [{"name": "a", "envoyExtAuthzHttp": {}}]}, "envoyExtAuthzHttp is not supported"),
    ({"defaultProviders": {"tracing": ["nope"]}}, "provider 'nope' is not defined"),
    ({"accessLogEncoding": "XML", "accessLogFile": "/dev/stdout"}, "accessLogEncoding: expected TEXT or JSON"),
    ({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}, "vmesh_mesh_config.outboundTrafficPolicy: unknown field"),
])
def test_bad_mesh_config_is_named(mesh_config, message):
    with pytest.raises(MeshError) as caught:
        build(hosts=hosts_with(mesh_config))
    assert message in str(caught.value)


@pytest.mark.parametrize("spec, message", [
    ("  accessLogging: [{providers: [{name: missing}]}]\n",
     "spec.accessLogging[0].providers[0].name: provider 'missing' is not defined"),
    ("  tracing: [{providers: [{name: json-file}]}]\n",
     "provider 'json-file' is an envoyFileAccessLog, expected a tracing provider"),
    ("  tracing: [{randomSamplingPercentage: 150}]\n", "randomSamplingPercentage: expected a percentage 0-100"),
    ("  metrics: [{overrides: [{match: {metric: REQUESTS}}]}]\n", "match.metric: expected ALL_METRICS or one of"),
    ("  metrics: [{overrides: [{tagOverrides: {x: {value: request.host}}}]}]\n",
     "tagOverrides.x.value: vmesh sets a tag to a quoted literal"),
    ("  accessLogging: [{filter: {expression: 'response.code >= 400'}}]\n", "filter is not supported by vmesh yet"),
    ("  targetRefs: [{kind: Gateway, name: gw}]\n", "targetRefs is not supported by vmesh yet"),
])
def test_bad_telemetry_is_named(spec, message):
    with pytest.raises(MeshError) as caught:
        build(telemetry("mesh", "istio-system", spec), hosts=hosts_with({"extensionProviders": PROVIDERS}))
    assert "mesh/doc0.yaml: Telemetry/istio-system/mesh: " in str(caught.value)
    assert message in str(caught.value)


def test_two_namespace_wide_telemetries_are_refused():
    with pytest.raises(MeshError, match="Telemetry/a in .* is already the namespace default-wide Telemetry"):
        build(telemetry("a", "default", "  tracing: []\n"), telemetry("b", "default", "  tracing: []\n"))


def test_tcp_ports_count_connections_and_bytes_and_log_when_the_connection_ends():
    hosts = {"client": {"vmesh_service_account": "sleep", "ansible_host": "10.0.0.1", "vmesh_access_log": True},
             "db": {"vmesh_service": "db", "vmesh_ports": [{"port": 5432, "protocol": "tcp"}],
                    "ansible_host": "10.0.0.2", "vmesh_access_log": True}}
    no_bytes = telemetry("mesh", "istio-system", "  metrics: [{overrides: [{match: {metric: TCP_SENT_BYTES}, "
                                                 "disabled: true}]}]\n")
    mesh = build(no_bytes, hosts=hosts, with_rules=False)

    def tcp_proxies(files, listener):
        return [f["typed_config"] for item in resources(files, "lds.json") if item["name"] == listener
                for chain in item["filter_chains"] for f in chain["filters"]
                if f["name"] == "envoy.filters.network.tcp_proxy" and f["typed_config"]["cluster"] != "BlackHoleCluster"]

    client, db = render_host(mesh, "client").files, render_host(mesh, "db").files
    for proxy, key in [(p, vmesh_telemetry.TCP_KEY_SOURCE) for p in tcp_proxies(client, "virtualOutbound")] + \
            [(p, vmesh_telemetry.TCP_KEY_DESTINATION) for p in tcp_proxies(db, "virtualInbound")]:
        # a connection has no response code or gRPC status: the key leaves them empty (istio_metrics.lua reads
        # neither)
        keys = {c["stat"]["tags"][0]["value_format"] for log in proxy["access_log"]
                for c in log["typed_config"].get("counters", [])}
        fields = key.split(vmesh_telemetry.SEP)
        assert keys == {key} and fields[1] == fields[3] == "" and "%RESPONSE_FLAGS%" in fields
        logs = {(log["name"], tuple(log["filter"]["log_type_filter"]["types"])): log for log in proxy["access_log"]}
        assert set(logs) == {("envoy.access_loggers.stdout", ("TcpConnectionEnd",)),
                             ("envoy.access_loggers.stats", ("TcpUpstreamConnected",)),
                             ("envoy.access_loggers.stats", ("TcpConnectionEnd",))}
        opened = logs[("envoy.access_loggers.stats", ("TcpUpstreamConnected",))]["typed_config"]["counters"]
        ended = logs[("envoy.access_loggers.stats", ("TcpConnectionEnd",))]["typed_config"]["counters"]
        assert [c["stat"]["name"] for c in opened] == ["o"]
        assert [c["stat"]["name"] for c in ended] == ["c", "x"]  # sent bytes are off
        assert proxy["access_log_options"] == {"flush_access_log_on_connected": True}
    for files in (client, db):
        ok, message = envoy.validate(envoy.static_bundle(files), stub_missing=True)
        assert ok, message


def test_virtualservice_routes_name_their_spans_as_istio_does_when_something_traces():
    """Istio's route operation: the one destination's host:port and the path matched (a prefix with *), else the
    VirtualService's name and the port; only where a tracer may run, so untraced meshes carry no more bytes."""
    split = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /reviews/0}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v3}, weight: 10}
"""
    tracing = telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: zipkin}]}]\n")

    def operations(*docs: str) -> list[str | None]:
        files = render_host(build(*docs, hosts=hosts_with({"extensionProviders": PROVIDERS})), "productpage-v1").files
        vhost = outbound_vhost(files, "reviews.default.svc.cluster.local")
        return [r.get("decorator", {}).get("operation") for r in vhost["routes"]]

    assert operations(split, tracing) == ["reviews.default.svc.cluster.local:9080/reviews/0*", "reviews:9080/*"]
    assert operations(split) == [None, None]
    # without a VirtualService, the default route: host:port/*
    assert operations(tracing) == ["reviews.default.svc.cluster.local:9080/*"]
