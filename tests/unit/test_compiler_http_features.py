"""VirtualService http features (match kinds, redirect, direct response, rewrite, headers, fault, mirror, CORS)
compiled to Envoy routes; every config is also checked by envoy --mode validate."""

from __future__ import annotations

import pytest

from harness.mesh import bookinfo_hosts, build, outbound_routes
from vmesh.compile import render_all

HEAD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
"""


def routes(body: str, host: str = "productpage-v1", hosts=None) -> list[dict]:
    return outbound_routes(build(HEAD + body, hosts=hosts), host, "reviews")


CASES = {
    "fault delay for jason (ratings-test-delay)": (
        """  - match: [{headers: {end-user: {exact: jason}}}]
    fault: {delay: {fixedDelay: 7s, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
""",
        lambda r: r[0]["typed_per_filter_config"]["envoy.filters.http.fault"]["delay"] == {
            "fixed_delay": "7s", "percentage": {"numerator": 1000000, "denominator": "MILLION"}}),
    "abort 500 at 10%": (
        """  - fault: {abort: {httpStatus: 500, percentage: {value: 10}}}
    route: [{destination: {host: reviews}}]
""",
        lambda r: r[0]["typed_per_filter_config"]["envoy.filters.http.fault"]["abort"] == {
            "http_status": 500, "percentage": {"numerator": 100000, "denominator": "MILLION"}}),
    "grpc abort": (
        """  - fault: {abort: {grpcStatus: UNAVAILABLE}}
    route: [{destination: {host: reviews}}]
""",
        lambda r: r[0]["typed_per_filter_config"]["envoy.filters.http.fault"]["abort"]["grpc_status"] == 14),
    "redirect": (
        """  - match: [{uri: {exact: /v1/getProductRatings}}]
    redirect: {uri: /v1/bookRatings, authority: newratings.default.svc.cluster.local, redirectCode: 302}
""",
        lambda r: r[0]["redirect"] == {"path_redirect": "/v1/bookRatings", "response_code": "FOUND",
                                       "host_redirect": "newratings.default.svc.cluster.local"}),
    "direct response": (
        """  - match: [{uri: {prefix: /down}}]
    directResponse: {status: 503, body: {string: "down for maintenance"}}
""",
        lambda r: r[0]["direct_response"] == {"status": 503, "body": {"inline_string": "down for maintenance"}}),
    "rewrite uri and authority": (
        """  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: reviews.internal}
    route: [{destination: {host: reviews}}]
""",
        lambda r: (r[0]["route"]["prefix_rewrite"], r[0]["route"]["host_rewrite_literal"]) == ("/new", "reviews.internal")),
    "regex rewrite": (
        """  - rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: '\\\\2/instance/\\\\1'}}
    route: [{destination: {host: reviews}}]
""",
        lambda r: r[0]["route"]["regex_rewrite"]["pattern"] == {"regex": "^/service/([^/]+)(/.*)$"}),
    "headers on route and per destination": (
        """  - headers:
      request: {set: {x-route: r}, add: {x-added: a}, remove: [x-secret]}
      response: {set: {x-served: mesh}}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 50
      headers: {response: {set: {x-version: v1}}}
    - destination: {host: reviews, subset: v2}
      weight: 50
      headers: {response: {set: {x-version: v2}}}
""",
        lambda r: r[0]["request_headers_to_add"] == [
            {"header": {"key": "x-route", "value": "r"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            {"header": {"key": "x-added", "value": "a"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}]
        and r[0]["request_headers_to_remove"] == ["x-secret"]
        and r[0]["route"]["weighted_clusters"]["clusters"][1]["response_headers_to_add"] == [
            {"header": {"key": "x-version", "value": "v2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]),
    "mirror 50%": (
        """  - route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 50.0}
""",
        lambda r: r[0]["route"]["request_mirror_policies"] == [{
            "cluster": "outbound|9080|v2|reviews.default.svc.cluster.local",
            "runtime_fraction": {"default_value": {"numerator": 500000, "denominator": "MILLION"}}}]),
    "cors": (
        """  - corsPolicy:
      allowOrigins: [{exact: "https://example.com"}, {regex: "https://.*\\\\.example\\\\.org"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      maxAge: 24h
      allowCredentials: false
    route: [{destination: {host: reviews}}]
""",
        lambda r: (lambda c: c["allow_methods"] == "GET,POST" and c["max_age"] == "86400"
                   and c["allow_origin_string_match"][0] == {"exact": "https://example.com"})(
            r[0]["typed_per_filter_config"]["envoy.filters.http.cors"])),
    "method, authority, query, without headers, ignore case": (
        """  - match:
    - method: {exact: POST}
      authority: {prefix: reviews}
      queryParams: {debug: {exact: "1"}, trace: {}}
      withoutHeaders: {x-skip: {}}
      uri: {prefix: /Reviews}
      ignoreUriCase: true
    route: [{destination: {host: reviews, subset: v2}}]
""",
        lambda r: r[0]["match"] == {
            "prefix": "/Reviews", "case_sensitive": False,
            "headers": [{"name": ":method", "string_match": {"exact": "POST"}},
                        {"name": ":authority", "string_match": {"prefix": "reviews"}},
                        {"name": "x-skip", "present_match": True, "invert_match": True}],
            "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}},
                                 {"name": "trace", "present_match": True}]}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_http_feature(name, envoy_validate):
    body, check = CASES[name]
    assert check(routes(body)), routes(body)
    for config in render_all(build(HEAD + body)).values():
        envoy_validate(config.validation)


def test_source_labels_decide_per_calling_host():
    body = """  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""
    hosts = bookinfo_hosts()
    hosts["productpage-v1"]["vmesh_labels"] = {"app": "productpage", "version": "v1"}
    from_productpage = routes(body, "productpage-v1", hosts)
    from_details = routes(body, "details-v1", hosts)
    assert [r["route"]["cluster"].split("|")[2] for r in from_productpage] == ["v2", "v1"]
    assert [r["route"]["cluster"].split("|")[2] for r in from_details] == ["v1"]


def test_port_match_applies_to_that_port_only():
    hosts = bookinfo_hosts()
    for name in ("reviews-v1", "reviews-v2", "reviews-v3"):
        hosts[name]["vmesh_ports"] = [{"port": 9080, "protocol": "http"}, {"port": 9090, "protocol": "http"}]
    body = """  - match: [{port: 9090}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""
    mesh = build(HEAD + body, hosts=hosts)
    assert [r["route"]["cluster"] for r in outbound_routes(mesh, "productpage-v1", "reviews", 9090)] == [
        "outbound|9090|v3|reviews.default.svc.cluster.local", "outbound|9090|v1|reviews.default.svc.cluster.local"]
    assert [r["route"]["cluster"] for r in outbound_routes(mesh, "productpage-v1", "reviews", 9080)] == [
        "outbound|9080|v1|reviews.default.svc.cluster.local"]


ERRORS = {
    "two actions": ("  - redirect: {uri: /x}\n    route: [{destination: {host: reviews}}]\n",
                    "spec.http[0]: set exactly one of route, redirect, directResponse (got route, redirect)"),
    "bad redirect code": ("  - redirect: {uri: /x, redirectCode: 305}\n", "spec.http[0].redirect.redirectCode: expected one of"),
    "fault without delay or abort": ("  - fault: {}\n    route: [{destination: {host: reviews}}]\n",
                                     "spec.http[0].fault: set delay or abort"),
    "percentage over 100": ("  - fault: {abort: {httpStatus: 500, percentage: {value: 120}}}\n"
                            "    route: [{destination: {host: reviews}}]\n",
                            "spec.http[0].fault.abort.percentage.value: expected a percentage from 0 to 100"),
    "unknown grpc status": ("  - fault: {abort: {grpcStatus: NOPE}}\n    route: [{destination: {host: reviews}}]\n",
                            "spec.http[0].fault.abort.grpcStatus: unknown gRPC status 'NOPE'"),
    "mirror to unknown subset": ("  - route: [{destination: {host: reviews}}]\n    mirror: {host: reviews, subset: v7}\n",
                                 "spec.http[0].mirror.subset: subset 'v7' is not defined"),
    "rewrite with redirect": ("  - redirect: {uri: /x}\n    rewrite: {uri: /y}\n",
                              "spec.http[0].rewrite: rewrite needs route"),
    "direct response status": ("  - directResponse: {status: 99}\n",
                               "spec.http[0].directResponse.status: must be at least 200"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_http_feature_errors(name):
    from vmesh.errors import MeshError

    body, expected = ERRORS[name]
    with pytest.raises(MeshError) as info:
        build(HEAD + body)
    assert expected in str(info.value)
