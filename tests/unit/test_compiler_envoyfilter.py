"""EnvoyFilter patches: what is supported is applied where it selects, the rest is refused by name."""

from __future__ import annotations

import json

import pytest

from harness import DATA
from harness.mesh import bookinfo_hosts, build, resources
from vmesh.compile import render_all, render_host
from vmesh.errors import MeshError

LIMIT = (DATA / "ratelimit" / "local-rate-limit.yaml").read_text()


def labelled_hosts():
    hosts = bookinfo_hosts()
    for h in hosts.values():
        h["vmesh_labels"] = {**h["vmesh_labels"], "app": h["vmesh_service"]}
    return hosts


def test_local_rate_limit_patch_lands_on_the_selected_hosts_inbound_side(envoy_validate):
    mesh = build(LIMIT, hosts=labelled_hosts())
    files = render_host(mesh, "reviews-v2").files
    inbound = next(l for l in resources(files, "lds.json") if l["name"] == "virtualInbound")
    http_filters = inbound["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert [f["name"] for f in http_filters] == ["envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]
    (route_config,) = resources(files, "rds_inbound_9080__.json")
    route = route_config["virtual_hosts"][0]["routes"][0]
    assert route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]["token_bucket"]["max_tokens"] == 6
    assert route["route"]["rate_limits"][0]["actions"][0]["header_value_match"]["descriptor_value"] == "reviews-1"
    # outbound side and other services untouched
    assert "local_ratelimit" not in json.dumps(resources(files, "lds.json")[0])
    assert "local_ratelimit" not in render_host(mesh, "productpage-v1").files["lds.json"]
    for config in render_all(mesh).values():
        envoy_validate(config.validation)


@pytest.mark.parametrize("change,expected", [
    (("applyTo: HTTP_FILTER", "applyTo: CLUSTER"), "configPatches[0].applyTo: applyTo CLUSTER is not supported by vmesh yet"),
    (("context: SIDECAR_INBOUND\n      listener", "context: SIDECAR_INBOND\n      listener"),
     "configPatches[0].match.context: context SIDECAR_INBOND is not supported by vmesh yet"),
    (("operation: MERGE", "operation: INSERT_FIRST"), "configPatches[1].patch.operation: INSERT_FIRST on HTTP_ROUTE"),
    (("name: envoy.filters.http.local_ratelimit\n", "nam: envoy.filters.http.local_ratelimit\n"),
     "configPatches[0].patch.value.name: an HTTP filter needs a name"),
])
def test_envoy_filter_errors(change, expected):
    with pytest.raises(MeshError) as info:
        build(LIMIT.replace(*change), hosts=labelled_hosts())
    assert expected in str(info.value)
