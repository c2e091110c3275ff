"""AuthorizationPolicy: parsing, scope, the RBAC filters it compiles to, and what real Envoy does with them."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import tempfile
import time
from typing import Any

import pytest
import yaml

from harness import free_port
from harness.mesh import bookinfo_hosts
from vmesh import envoy, registry as registry_mod
from vmesh.compile import rbac
from vmesh.compile.envoy_types import HCM, ROUTER, socket_address, tcp_proxy, typed
from vmesh.documents import load_text
from vmesh.errors import MeshError
from vmesh.istio import authorizationpolicy as authz
from vmesh.registry import Port

FILE = "mesh/authz.yaml"
HTTP_PORT = Port(9080, "http", "http", 8080)  # clients call 9080, the application listens on 8080
TCP_PORT = Port(9000, "tcp", "tcp-9000", 9000)
TRUST_DOMAIN = "example.org"
ANY = {"any": True}


def text(spec: Any, name: str = "p", namespace: str = "default", version: str = "v1") -> str:
    return yaml.safe_dump({"apiVersion": f"security.istio.io/{version}", "kind": "AuthorizationPolicy",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def policy(spec: Any, name: str = "p", namespace: str = "default", version: str = "v1") -> authz.AuthorizationPolicy:
    (doc,) = load_text(text(spec, name, namespace, version), FILE)
    return authz.parse(doc)


def rules_of(filters: list[dict]) -> list[tuple[str, dict]]:
    """(Envoy action, policies) of each filter, in filter order."""
    return [(f["typed_config"]["rules"]["action"], f["typed_config"]["rules"]["policies"]) for f in filters]


def name(policy_name: str, rule: int = 0, namespace: str = "default") -> str:
    return f"ns[{namespace}]-policy[{policy_name}]-rule[{rule}]"


# --- parse --------------------------------------------------------------------------------------------------

def test_parse_reads_v1_and_v1beta1_with_istio_defaults():
    for version in ("v1", "v1beta1"):
        p = policy({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/productpage"]}}],
                               "to": [{"operation": {"methods": ["GET"], "notPorts": ["15000"]}}],
                               "when": [{"key": "request.headers[X-User]", "notValues": ["bot*"]}]}]},
                   version=version)
        assert p.action == "ALLOW" and p.selector is None
        (rule,) = p.rules
        assert rule.sources == (authz.Source(principals=authz.Match(("cluster.local/ns/default/sa/productpage",))),)
        assert rule.operations == (authz.Operation(methods=authz.Match(("GET",)), ports=authz.Match((), ("15000",))),)
        assert rule.conditions == (authz.Condition("request.headers", authz.Match((), ("bot*",)), "x-user"),)
    assert policy({}).rules == [] and policy(None).rules == []  # allow-nothing, also with `spec:` empty
    assert policy({"selector": {"matchLabels": {"app": "reviews"}}, "action": "AUDIT", "rules": [{}]}).selector == \
        {"app": "reviews"}
    assert policy({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.1", "10.1.2.3/16", "2001:db8::1"]}}]}]}) \
        .rules[0].sources[0].ip_blocks.values == ("10.0.0.1/32", "10.1.0.0/16", "2001:db8::1/128")


def rule_with(**parts: Any) -> dict:
    return {"rules": [parts]}


def source(**fields: Any) -> dict:
    return rule_with(**{"from": [{"source": fields}]})


def operation(**fields: Any) -> dict:
    return rule_with(to=[{"operation": fields}])


def when(*conditions: dict) -> dict:
    return rule_with(when=list(conditions))


PARSE_ERRORS = [
    ("custom", {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]}, "spec.action",
     "CUSTOM (external authorization) is not supported by vmesh"),
    ("bad action", {"action": "allow"}, "spec.action", "expected one of ALLOW, DENY, AUDIT, got 'allow'"),
    ("provider", {"provider": {"name": "ext"}, "rules": [{}]}, "spec.provider", "action CUSTOM"),
    ("targetRef", {"targetRef": {"kind": "Gateway", "name": "gw"}}, "spec.targetRef",
     "vmesh selects workloads by spec.selector"),
    ("targetRefs", {"targetRefs": [{"kind": "Service", "name": "reviews"}]}, "spec.targetRefs",
     "vmesh selects workloads by spec.selector"),
    ("unknown spec field", {"rule": [{}]}, "spec.rule", "unknown field; did you mean 'rules'?"),
    ("deny without rules", {"action": "DENY"}, "spec.rules", "a DENY policy without rules never denies anything"),
    ("selector wildcard", {"selector": {"matchLabels": {"app": "rev*"}}}, "spec.selector.matchLabels.app",
     "wildcards are not supported"),
    ("null rule", {"rules": [None]}, "spec.rules[0]", "write {} for a rule that matches every request"),
    ("empty from", rule_with(**{"from": []}), "spec.rules[0].from", "must not be empty"),
    ("from without source", rule_with(**{"from": [{}]}), "spec.rules[0].from[0].source", "required"),
    ("empty source", source(), "spec.rules[0].from[0].source", "must not be empty"),
    ("source typo", source(principal=["x"]), "spec.rules[0].from[0].source.principal",
     "unknown field; did you mean 'principals'?"),
    ("jwt principals", source(requestPrincipals=["iss/sub"]), "spec.rules[0].from[0].source.requestPrincipals",
     "needs RequestAuthentication (JWT), which vmesh does not support"),
    ("service accounts", source(serviceAccounts=["default/productpage"]),
     "spec.rules[0].from[0].source.serviceAccounts", "not supported by vmesh yet; use principals"),
    ("bad ip", source(ipBlocks=["10.0.0.1", "10.0.0.300"]), "spec.rules[0].from[0].source.ipBlocks[1]",
     "invalid IP address or CIDR range '10.0.0.300'"),
    ("bad cidr", source(notRemoteIpBlocks=["10.0.0.0/33"]), "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
     "invalid IP address or CIDR range '10.0.0.0/33'"),
    ("star in the middle", source(principals=["cluster.local/ns/*/sa/x"]),
     "spec.rules[0].from[0].source.principals[0]", "'*' may stand alone"),
    ("empty value", source(principals=[""]), "spec.rules[0].from[0].source.principals[0]", "must not be empty"),
    ("to without operation", rule_with(to=[{}]), "spec.rules[0].to[0].operation", "required"),
    ("empty operation", operation(), "spec.rules[0].to[0].operation", "must not be empty"),
    ("path template", operation(paths=["/ok", "/api/{*}/x"]), "spec.rules[0].to[0].operation.paths[1]",
     "path templates ({*}, {**}) are not supported by vmesh yet"),
    ("port as integer", operation(ports=[8080]), "spec.rules[0].to[0].operation.ports[0]",
     'write ports as strings, e.g. "8080"'),
    ("port out of range", operation(notPorts=["70000"]), "spec.rules[0].to[0].operation.notPorts[0]",
     "expected a port number 1-65535, got '70000'"),
    ("methods not a list", operation(methods="GET"), "spec.rules[0].to[0].operation.methods", "expected a list"),
    ("when without values", when({"key": "source.ip"}), "spec.rules[0].when[0]",
     "set values or notValues (or both) for source.ip"),
    ("when jwt", when({"key": "request.auth.claims[iss]", "values": ["x"]}), "spec.rules[0].when[0].key",
     "request.auth.claims[iss] needs RequestAuthentication (JWT)"),
    ("when experimental", when({"key": "experimental.envoy.filters.a.b[c]", "values": ["x"]}),
     "spec.rules[0].when[0].key", "experimental attributes are not supported by vmesh"),
    ("when unknown key", when({"key": "source.user", "values": ["x"]}), "spec.rules[0].when[0].key",
     "unknown attribute 'source.user'"),
    ("when bad header", when({"key": "request.headers[]", "values": ["x"]}), "spec.rules[0].when[0].key",
     "expected a header name in the brackets"),
    ("when bad ip", when({"key": "destination.ip", "notValues": ["nope"]}), "spec.rules[0].when[0].notValues[0]",
     "invalid IP address or CIDR range 'nope'"),
    ("when bad port", when({"key": "destination.port", "values": ["http"]}), "spec.rules[0].when[0].values[0]",
     "expected a port number 1-65535, got 'http'"),
    ("when unknown field", when({"key": "source.ip", "value": ["10.0.0.1"]}), "spec.rules[0].when[0].value",
     "unknown field; did you mean 'values'?"),
]


@pytest.mark.parametrize("spec,field,message", [c[1:] for c in PARSE_ERRORS], ids=[c[0] for c in PARSE_ERRORS])
def test_parse_errors_name_file_document_and_field(spec, field, message):
    with pytest.raises(MeshError) as err:
        policy(spec, name="bad")
    assert str(err.value).startswith(f"{FILE}: AuthorizationPolicy/bad: {field}: "), str(err.value)
    assert message in str(err.value)


def test_parse_error_names_the_namespace_of_the_document():
    with pytest.raises(MeshError, match=r"^mesh/authz.yaml: AuthorizationPolicy/prod/bad: spec.action: "):
        policy({"action": "CUSTOM"}, name="bad", namespace="prod")


# --- scope --------------------------------------------------------------------------------------------------

SCOPE = [
    # (policy namespace, selector, workload namespace, workload labels, applies)
    ("istio-system", None, "default", {}, True),
    ("istio-system", None, "prod", {"app": "x"}, True),
    ("istio-system", {"version": "v1"}, "prod", {"version": "v1", "app": "x"}, True),
    ("istio-system", {"version": "v1"}, "prod", {"version": "v2"}, False),
    ("default", None, "default", {"app": "reviews"}, True),
    ("default", None, "prod", {}, False),
    ("default", {"app": "reviews"}, "default", {"app": "reviews", "version": "v1"}, True),
    ("default", {"app": "reviews"}, "default", {"app": "ratings"}, False),
    ("default", {"app": "reviews"}, "prod", {"app": "reviews"}, False),
    ("default", {"app": "reviews", "version": "v2"}, "default", {"app": "reviews"}, False),
]


@pytest.mark.parametrize("policy_ns,selector,namespace,labels,applies", SCOPE)
def test_scope(policy_ns, selector, namespace, labels, applies):
    spec = {"selector": {"matchLabels": selector}} if selector else {}
    assert policy(spec, namespace=policy_ns).applies_to(namespace, labels) is applies


def test_for_workload_picks_and_orders_by_namespace_and_name():
    policies = [policy({}, "b"), policy({}, "z", "istio-system"), policy({}, "a"), policy({}, "x", "prod"),
                policy({"selector": {"matchLabels": {"version": "v2"}}}, "only-v2")]
    workloads = registry_mod.build(bookinfo_hosts()).workloads
    picked = {host: [f"{p.doc.namespace}/{p.doc.name}" for p in authz.for_workload(policies, w.namespace, w.labels)]
              for host, w in workloads.items()}
    assert picked["reviews-v2"] == ["default/a", "default/b", "default/only-v2", "istio-system/z"]
    assert picked["reviews-v1"] == ["default/a", "default/b", "istio-system/z"]
    assert authz.ROOT_NAMESPACE == "istio-system"


# --- compiled filters ---------------------------------------------------------------------------------------

DENY_ADMIN = ({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}, "deny-admin")
ALLOW_GET = ({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}, "allow-get")
METHOD_GET = {"header": {"name": ":method", "string_match": {"exact": "GET"}}}


def principal(matcher: dict) -> dict:
    return {"authenticated": {"principal_name": matcher}}


COMPILED = [
    # (id, [(spec, name)], expected HTTP filters, expected TCP filters), each as [(Envoy action, policies)]
    ("no policy", [], [], []),
    ("allow nothing", [({}, "allow-nothing")], [("ALLOW", {})], [("ALLOW", {})]),
    ("allow all", [({"rules": [{}]}, "allow-all")],
     [("ALLOW", {name("allow-all"): {"permissions": [ANY], "principals": [ANY]}})],
     [("ALLOW", {name("allow-all"): {"permissions": [ANY], "principals": [ANY]}})]),
    ("deny path, allow GET", [DENY_ADMIN, ALLOW_GET],
     [("DENY", {name("deny-admin"): {"permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
                                     "principals": [ANY]}}),
      ("ALLOW", {name("allow-get"): {"permissions": [METHOD_GET], "principals": [ANY]}})],
     # TCP sees no paths or methods: the DENY rule loses its path and denies every connection, the ALLOW rule
     # never matches (Istio's reading: the stricter one either way)
     [("DENY", {name("deny-admin"): {"permissions": [ANY], "principals": [ANY]}}),
      ("ALLOW", {})]),
    ("audit goes first and never blocks", [ALLOW_GET, ({"action": "AUDIT", "rules": [
        {"to": [{"operation": {"methods": ["DELETE"]}}]}]}, "audit-delete")],
     [("LOG", {name("audit-delete"): {"permissions": [
         {"header": {"name": ":method", "string_match": {"exact": "DELETE"}}}], "principals": [ANY]}}),
      ("ALLOW", {name("allow-get"): {"permissions": [METHOD_GET], "principals": [ANY]}})],
     [("LOG", {name("audit-delete"): {"permissions": [ANY], "principals": [ANY]}}), ("ALLOW", {})]),
    ("sources", [({"rules": [{"from": [
        {"source": {"principals": ["cluster.local/ns/default/sa/productpage", "*/sa/reviews"],
                    "notPrincipals": ["other.td/ns/x/*"]}},
        {"source": {"namespaces": ["prod-*"], "notNamespaces": ["dev"]}},
        {"source": {"ipBlocks": ["10.0.0.1"], "notIpBlocks": ["10.1.0.0/16"], "remoteIpBlocks": ["2001:db8::/32"]}},
        {"source": {"principals": ["*"]}}]}]}, "sources")],
     [("ALLOW", {name("sources"): {"permissions": [ANY], "principals": [
         {"and_ids": {"ids": [principal({"safe_regex": {"regex": ".*/ns/prod-.*/.*"}}),
                              {"not_id": principal({"safe_regex": {"regex": ".*/ns/dev/.*"}})}]}},
         {"and_ids": {"ids": [
             {"or_ids": {"ids": [principal({"exact": "spiffe://example.org/ns/default/sa/productpage"}),
                                 principal({"safe_regex": {"regex": "spiffe://.*/sa/reviews"}})]}},
             {"not_id": principal({"prefix": "spiffe://other.td/ns/x/"})}]}},
         {"and_ids": {"ids": [{"remote_ip": {"address_prefix": "2001:db8::", "prefix_len": 32}},
                              {"direct_remote_ip": {"address_prefix": "10.0.0.1", "prefix_len": 32}},
                              {"not_id": {"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}}]}},
         principal({"safe_regex": {"regex": ".+"}})]}})],
     None),
    ("operations", [({"rules": [{"to": [{"operation": {
        "hosts": ["*.example.com", "Example.com"], "notHosts": ["*"], "methods": ["GET", "HEAD"],
        "paths": ["/api/*", "*.html", "/exact", "*"], "notPaths": ["/api/admin*"]}}]}]}, "ops")],
     [("ALLOW", {name("ops"): {"permissions": [{"and_rules": {"rules": [
         {"or_rules": {"rules": [
             {"header": {"name": ":authority", "string_match": {"exact": "Example.com", "ignore_case": True}}},
             {"header": {"name": ":authority", "string_match": {"suffix": ".example.com", "ignore_case": True}}}]}},
         {"not_rule": {"header": {"name": ":authority", "present_match": True}}},
         {"or_rules": {"rules": [METHOD_GET, {"header": {"name": ":method", "string_match": {"exact": "HEAD"}}}]}},
         {"or_rules": {"rules": [{"url_path": {"path": {"exact": "/exact"}}},
                                 {"url_path": {"path": {"prefix": "/api/"}}},
                                 {"url_path": {"path": {"safe_regex": {"regex": ".+"}}}},
                                 {"url_path": {"path": {"suffix": ".html"}}}]}},
         {"not_rule": {"url_path": {"path": {"prefix": "/api/admin"}}}}]}}], "principals": [ANY]}})],
     [("ALLOW", {})]),
    ("ports are decided per port", [({"rules": [
        {"to": [{"operation": {"ports": ["9080"], "methods": ["GET"]}},  # the service port: kept
                {"operation": {"ports": ["8080"]}},  # the application's port: kept
                {"operation": {"ports": ["1234"], "methods": ["POST"]}},  # another port: never here
                {"operation": {"notPorts": ["8080"]}}]},  # never here either
        {"to": [{"operation": {"ports": ["1234"]}}]},  # no entry left: the whole rule never matches here
        {"to": [{"operation": {"notPorts": ["1234"]}}]}]}, "ports")],
     [("ALLOW", {name("ports", 0): {"permissions": [ANY, METHOD_GET], "principals": [ANY]},
                 name("ports", 2): {"permissions": [ANY], "principals": [ANY]}})],
     # on the TCP port 9000 only the notPorts entries are about it
     [("ALLOW", {name("ports", 0): {"permissions": [ANY], "principals": [ANY]},
                 name("ports", 2): {"permissions": [ANY], "principals": [ANY]}})]),
    ("conditions", [({"action": "DENY", "rules": [
        {"from": [{"source": {"namespaces": ["dev"]}}, {"source": {"ipBlocks": ["10.0.0.0/8"]}}],
         "to": [{"operation": {"methods": ["POST"]}}, {"operation": {"paths": ["/admin"]}}],
         "when": [{"key": "request.headers[X-Env]", "values": ["test*"], "notValues": ["*prod"]},
                  {"key": "source.ip", "notValues": ["10.9.0.0/16"]},
                  {"key": "remote.ip", "values": ["192.168.1.1"]},
                  {"key": "source.namespace", "notValues": ["kube-*"]},
                  {"key": "source.principal", "values": ["cluster.local/ns/default/sa/tester"]},
                  {"key": "destination.ip", "values": ["10.213.0.12"]},
                  {"key": "connection.sni", "values": ["*.internal"]},
                  {"key": "destination.port", "values": ["8080", "9000"]}]},
        {"when": [{"key": "destination.port", "notValues": ["9080", "9000"]}]}]}, "conds")],
     [("DENY", {name("conds"): {
         "permissions": [
             {"and_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": "POST"}}},
                                      {"destination_ip": {"address_prefix": "10.213.0.12", "prefix_len": 32}},
                                      {"requested_server_name": {"suffix": ".internal"}}]}},
             {"and_rules": {"rules": [{"url_path": {"path": {"exact": "/admin"}}},
                                      {"destination_ip": {"address_prefix": "10.213.0.12", "prefix_len": 32}},
                                      {"requested_server_name": {"suffix": ".internal"}}]}}],
         "principals": [{"and_ids": {"ids": [
             ids,
             {"header": {"name": "x-env", "string_match": {"prefix": "test"}}},
             {"not_id": {"header": {"name": "x-env", "string_match": {"suffix": "prod"}}}},
             {"not_id": {"direct_remote_ip": {"address_prefix": "10.9.0.0", "prefix_len": 16}}},
             {"remote_ip": {"address_prefix": "192.168.1.1", "prefix_len": 32}},
             {"not_id": principal({"safe_regex": {"regex": ".*/ns/kube-.*/.*"}})},
             principal({"exact": "spiffe://example.org/ns/default/sa/tester"})]}}
             for ids in (principal({"safe_regex": {"regex": ".*/ns/dev/.*"}}),
                         {"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}})]}})],
     # TCP: the header condition and the HTTP operations fall away, the DENY still applies to its sources
     [("DENY", {name("conds"): {
         "permissions": [{"and_rules": {"rules": [
             {"destination_ip": {"address_prefix": "10.213.0.12", "prefix_len": 32}},
             {"requested_server_name": {"suffix": ".internal"}}]}}],
         "principals": [{"and_ids": {"ids": [
             ids,
             {"not_id": {"direct_remote_ip": {"address_prefix": "10.9.0.0", "prefix_len": 16}}},
             {"remote_ip": {"address_prefix": "192.168.1.1", "prefix_len": 32}},
             {"not_id": principal({"safe_regex": {"regex": ".*/ns/kube-.*/.*"}})},
             principal({"exact": "spiffe://example.org/ns/default/sa/tester"})]}}
             for ids in (principal({"safe_regex": {"regex": ".*/ns/dev/.*"}}),
                         {"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}})]}})]),
    ("allow rule with a header condition never matches on TCP", [({"rules": [
        {"when": [{"key": "request.headers[x-user]", "values": ["*"]}]},
        {"from": [{"source": {"namespaces": ["a"]}}]}]}, "hdr")],
     [("ALLOW", {name("hdr", 0): {"permissions": [ANY],
                                  "principals": [{"header": {"name": "x-user", "present_match": True}}]},
                 name("hdr", 1): {"permissions": [ANY],
                                  "principals": [principal({"safe_regex": {"regex": ".*/ns/a/.*"}})]}})],
     [("ALLOW", {name("hdr", 1): {"permissions": [ANY],
                                  "principals": [principal({"safe_regex": {"regex": ".*/ns/a/.*"}})]}})]),
    ("allow all but deny other namespaces", [({"rules": [{}]}, "a"), ({"action": "DENY", "rules": [
        {"from": [{"source": {"notNamespaces": ["default"]}}]}]}, "b")],
     [("DENY", {name("b"): {"permissions": [ANY],
                            "principals": [{"not_id": principal({"safe_regex": {"regex": ".*/ns/default/.*"}})}]}}),
      ("ALLOW", {name("a"): {"permissions": [ANY], "principals": [ANY]}})],
     None),
]


def compile_case(docs: list[tuple[dict, str]]) -> tuple[list[dict], list[dict]]:
    policies = [policy(spec, policy_name) for spec, policy_name in docs]
    return (rbac.http_filters(policies, HTTP_PORT, TRUST_DOMAIN),
            rbac.network_filters(policies, TCP_PORT, TRUST_DOMAIN))


@pytest.mark.parametrize("docs,http_rules,tcp_rules", [c[1:] for c in COMPILED], ids=[c[0] for c in COMPILED])
def test_compiled_filters(docs, http_rules, tcp_rules):
    http_filters, tcp_filters = compile_case(docs)
    assert rules_of(http_filters) == http_rules
    if tcp_rules is not None:
        assert rules_of(tcp_filters) == tcp_rules
    for f in http_filters:
        assert f["name"] == "envoy.filters.http.rbac"
        assert f["typed_config"]["@type"] == "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
        assert set(f["typed_config"]) == {"@type", "rules", "rules_stat_prefix"}  # enforced, no shadow rules
    for f in tcp_filters:
        assert f["name"] == "envoy.filters.network.rbac"
        assert f["typed_config"]["stat_prefix"].startswith("tcp.inbound_9000.")


def test_output_is_deterministic_and_ignores_the_order_of_values():
    spec = {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/x", "cluster.local/ns/b/sa/y"]}}],
                       "to": [{"operation": {"methods": ["GET", "POST"], "paths": ["/a", "/b*"]}}]}]}
    swapped = {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/b/sa/y", "cluster.local/ns/a/sa/x"]}}],
                          "to": [{"operation": {"paths": ["/b*", "/a"], "methods": ["POST", "GET"]}}]}]}
    first = json.dumps(compile_case([(spec, "p"), DENY_ADMIN]), sort_keys=True)
    assert first == json.dumps(compile_case([(spec, "p"), DENY_ADMIN]), sort_keys=True)
    assert first == json.dumps(compile_case([DENY_ADMIN, (swapped, "p")]), sort_keys=True)


# --- every compiled filter set passes envoy --mode validate ---------------------------------------------------

def http_listener(listener: str, port: int, filters: list[dict]) -> dict:
    route_config = {"name": listener, "virtual_hosts": [{"name": listener, "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]}
    hcm = typed("envoy.filters.network.http_connection_manager", HCM, stat_prefix=listener,
                route_config=route_config, http_filters=filters + [typed("envoy.filters.http.router", ROUTER)])
    return {"name": listener, "address": socket_address("127.0.0.1", port), "filter_chains": [{"filters": [hcm]}]}


def bootstrap(http_filters: list[dict], tcp_filters: list[dict], http_port: int = 10080,
              tcp_port: int = 10090) -> dict:
    backend = {"name": "backend", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": socket_address("127.0.0.1", 9)}}]}]}}
    tcp = {"name": "tcp", "address": socket_address("127.0.0.1", tcp_port),
           "filter_chains": [{"filters": tcp_filters + [tcp_proxy("tcp", "backend")]}]}
    return {"static_resources": {"listeners": [http_listener("http", http_port, http_filters), tcp],
                                 "clusters": [backend]}}


KITCHEN_SINK = ({"action": "DENY", "rules": [{
    "from": [{"source": {"principals": ["*", "cluster.local/ns/a/sa/b", "*/sa/c", "td/ns/*"],
                         "notPrincipals": ["x*"], "namespaces": ["*", "a-*-b"], "notNamespaces": ["c"],
                         "ipBlocks": ["10.0.0.1", "fd00::/8"], "notIpBlocks": ["10.0.0.0/24"],
                         "remoteIpBlocks": ["192.168.0.0/16"], "notRemoteIpBlocks": ["192.168.1.1"]}}],
    "to": [{"operation": {"hosts": ["*", "a.b", "*.c", "d*"], "notHosts": ["e"], "ports": ["9080", "9000"],
                          "notPorts": ["1"], "methods": ["*", "GET"], "notMethods": ["P*"],
                          "paths": ["*", "/x", "/y*", "*.z"], "notPaths": ["/q"]}}],
    "when": [{"key": "request.headers[x-a]", "values": ["*", "a", "b*", "*c"], "notValues": ["d"]},
             {"key": "source.ip", "values": ["10.0.0.0/8"], "notValues": ["10.1.1.1"]},
             {"key": "remote.ip", "values": ["::1"]},
             {"key": "source.namespace", "values": ["n*"], "notValues": ["m"]},
             {"key": "source.principal", "values": ["*"], "notValues": ["cluster.local/ns/a/sa/b"]},
             {"key": "destination.ip", "values": ["10.0.0.0/8"], "notValues": ["10.0.0.1"]},
             {"key": "destination.port", "values": ["9080", "9000"]},
             {"key": "connection.sni", "values": ["*", "a*", "*b", "c"], "notValues": ["d"]}]}]}, "sink")


@pytest.mark.parametrize("docs", [c[1] for c in COMPILED], ids=[c[0] for c in COMPILED])
def test_every_filter_set_passes_envoy_validate(docs, envoy_validate):
    http_filters, tcp_filters = compile_case(docs)
    envoy_validate(json.dumps(bootstrap(http_filters, tcp_filters), sort_keys=True))


def test_every_field_at_once_passes_envoy_validate(envoy_validate):
    http_filters, tcp_filters = compile_case([KITCHEN_SINK, ALLOW_GET, ({"action": "AUDIT", "rules": [{}]}, "audit")])
    assert [action for action, _ in rules_of(http_filters)] == ["LOG", "DENY", "ALLOW"]
    assert [action for action, _ in rules_of(tcp_filters)] == ["LOG", "DENY", "ALLOW"]
    assert rules_of(http_filters)[1][1] and rules_of(tcp_filters)[1][1]  # the DENY rule holds on both ports
    envoy_validate(json.dumps(bootstrap(http_filters, tcp_filters), sort_keys=True))


def test_validate_catches_a_broken_filter():
    """The check above would see a wrong field name: Envoy refuses unknown fields."""
    http_filters, tcp_filters = compile_case([ALLOW_GET])
    http_filters[0]["typed_config"]["rules"]["policies"][name("allow-get")]["permissions"][0]["header"]["exact"] = "x"
    ok, message = envoy.validate(json.dumps(bootstrap(http_filters, tcp_filters)), envoy.binary())
    assert not ok and "exact" in message


# --- behaviour: real requests through real Envoy ------------------------------------------------------------

def request(port: int, method: str, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=b"x" if method == "POST" else None)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_until_serving(proc: subprocess.Popen, port: int, log: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log, encoding="utf-8") as fh:
                pytest.fail(f"envoy exited with {proc.returncode}: {fh.read()[-3000:]}")
        try:
            request(port, "GET", "/ready-probe")
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail("envoy did not start serving within 30s")


def test_real_envoy_enforces_deny_then_allow():
    http_filters, _ = compile_case([DENY_ADMIN, ALLOW_GET])
    nothing, _ = compile_case([({}, "allow-nothing")])
    port, closed_port, tcp_port = free_port(), free_port(), free_port()
    config = bootstrap(http_filters, [], port, tcp_port)
    config["static_resources"]["listeners"].append(http_listener("nothing", closed_port, nothing))
    with tempfile.TemporaryDirectory(prefix="vmesh-authz-") as tmp:
        path, log = os.path.join(tmp, "envoy.json"), os.path.join(tmp, "envoy.log")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen([envoy.binary(), "-c", path, "--use-dynamic-base-id", "-l", "warning",
                                     "--drain-time-s", "0"], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(proc, port, log)
            assert request(port, "GET", "/ok") == (200, "ok")
            assert request(port, "POST", "/ok") == (403, "RBAC: access denied")
            assert request(port, "GET", "/admin/x") == (403, "RBAC: access denied")
            assert request(port, "GET", "/ok?next=/admin") == (200, "ok")  # url_path ignores the query
            assert request(closed_port, "GET", "/ok") == (403, "RBAC: access denied")  # allow-nothing
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
