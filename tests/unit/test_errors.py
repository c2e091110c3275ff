"""Bad input: a clear error naming file, document and field; never a traceback, never a silent no-op."""

from __future__ import annotations

import json

import pytest

from harness.mesh import bookinfo_hosts, build, outbound_vhost
from vmesh.errors import MeshError

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - {body}
"""


def vs(body: str) -> str:
    return VS.format(body=body)


CASES = [
    ("malformed yaml", "kind: VirtualService\nmetadata: {name: [x\n", "mesh/doc0.yaml: document 1 (line 1): malformed YAML: line 3, column 1"),
    ("unknown kind", "apiVersion: networking.istio.io/v1\nkind: VirtualServise\nmetadata: {name: x}\n",
     "VirtualServise/x: kind: unknown kind"),
    ("wrong api version", "apiVersion: networking.istio.io/v9\nkind: VirtualService\nmetadata: {name: x}\n",
     "VirtualService/x: apiVersion: 'networking.istio.io/v9' is not an API version of VirtualService"),
    ("missing name", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {}\n",
     "mesh/doc0.yaml: VirtualService in document 1 (line 1): metadata.name: missing name"),
    ("weights", vs("route: [{destination: {host: reviews, subset: v1}, weight: 80},"
                   " {destination: {host: reviews, subset: v2}, weight: 10}]"),
     "mesh/doc0.yaml: VirtualService/reviews: spec.http[0].route: weights sum to 90, expected 100"),
    ("unknown subset", vs("route: [{destination: {host: reviews, subset: v9}}]"),
     "VirtualService/reviews: spec.http[0].route[0].destination.subset: subset 'v9' is not defined in "
     "DestinationRule/reviews"),
    ("unknown destination host", vs("route: [{destination: {host: reveiws}}]"),
     "VirtualService/reviews: spec.http[0].route[0].destination.host: host 'reveiws' "
     "(reveiws.default.svc.cluster.local) is not a service in the inventory"),
    ("unknown port", vs("route: [{destination: {host: reviews, port: {number: 9081}}}]"),
     "destination.port.number: service reviews.default.svc.cluster.local has no port 9081"),
    ("invalid regex", vs("match: [{uri: {regex: '/a[b'}}]\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].match[0].uri.regex: invalid regex '/a[b'"),
    ("re2 has no lookahead", vs("match: [{headers: {x: {regex: '(?=a)b'}}}]\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].match[0].headers.x.regex: invalid regex '(?=a)b': invalid perl operator: (?= (Istio and Envoy "
     "read RE2 syntax"),
    ("invalid duration", vs("timeout: 10 seconds\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].timeout: invalid duration '10 seconds'"),
    ("typo in a field", vs("rout: [{destination: {host: reviews}}]"),
     "spec.http[0].rout: unknown field; did you mean 'route'?"),
    ("unsupported field", vs("delegate: {name: reviews}\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].delegate: delegate is not supported by vmesh yet"),
    ("upper-case header", vs("match: [{headers: {End-User: {exact: jason}}}]\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].match[0].headers.End-User: header name 'End-User' must be lower case"),
    ("two match kinds", vs("match: [{uri: {exact: /a, prefix: /b}}]\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].match[0].uri: set only one of exact, prefix, regex"),
    ("vs host not in inventory", VS.replace("hosts: [reviews]", "hosts: [reviewz]").format(body="route: []"),
     "VirtualService/reviews: spec.hosts[0]: host 'reviewz'"),
    ("unknown retry condition", vs("retries: {attempts: 2, retryOn: 'sometimes'}\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].retries.retryOn: unknown retry condition 'sometimes'"),
    ("dr host", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec: {host: nope}\n",
     "DestinationRule/x: spec.host: host 'nope'"),
    ("duplicate subset", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\n"
                         "spec: {host: ratings, subsets: [{name: a}, {name: a}]}\n",
     "spec.subsets[1].name: subset 'a' is defined twice"),
    ("unsupported kind", "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: we}\n",
     "WorkloadEntry/we: kind: WorkloadEntry is not supported by vmesh yet"),
    ("wrong type", vs("route: {destination: {host: reviews}}"), "spec.http[0].route: expected a list, got a mapping"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_document(text, expected):
    with pytest.raises(MeshError) as info:
        build(text)
    assert expected in str(info.value)


def test_two_virtual_services_for_one_host_conflict():
    one = vs("route: [{destination: {host: reviews, subset: v1}}]")
    two = one.replace("name: reviews}", "name: reviews-again}")
    with pytest.raises(MeshError, match=r"doc1.yaml: VirtualService/reviews-again: spec.hosts: host "
                                        r"reviews.default.svc.cluster.local is already routed by VirtualService/reviews"):
        build(one, two)


def test_two_destination_rules_for_one_host_conflict():
    extra = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-2}\nspec: {host: reviews}\n"
    with pytest.raises(MeshError, match="DestinationRule/reviews-2: spec.host: DestinationRule/reviews in"):
        build(extra)


def test_same_object_twice():
    one = vs("route: [{destination: {host: reviews}}]")
    with pytest.raises(MeshError, match=r"doc1.yaml: VirtualService/reviews: metadata.name: defined twice; "
                                        r"first in mesh/doc0.yaml line 1"):
        build(one, one)


def test_every_mistake_is_reported_at_once():
    bad1 = vs("route: [{destination: {host: nope}}]")
    bad2 = bad1.replace("name: reviews}", "name: other}").replace("hosts: [reviews]", "hosts: [ratings]")
    with pytest.raises(MeshError) as info:
        build(bad1, bad2)
    assert "VirtualService/reviews" in str(info.value) and "VirtualService/other" in str(info.value)


INVENTORY_CASES = [
    ("bad protocol", {"vmesh_ports": [{"port": 9080, "protocol": "htp"}]},
     "inventory: host reviews-v1: vmesh_ports[0].protocol: expected one of http, http2, grpc, tcp, tls, got 'htp'"),
    ("bad port", {"vmesh_ports": [{"port": 99999, "protocol": "http"}]}, "vmesh_ports[0].port: expected a port number"),
    ("no ports", {"vmesh_ports": []}, "host reviews-v1: vmesh_ports: a service needs a non-empty list of ports"),
    ("bad address", {"ansible_host": "reviews.example"}, "host reviews-v1: vmesh_address: expected an IPv4 address"),
    ("bad service", {"vmesh_service": "Reviews_1"}, "host reviews-v1: vmesh_service: expected a DNS label"),
    ("ports differ", {"vmesh_ports": [{"port": 9081, "protocol": "http"}]},
     "host reviews-v2: vmesh_ports: differs from reviews-v1's ports for the same service reviews"),
    ("mesh-wide differs", {"vmesh_vip_cidr": "240.241.0.0/16"}, "vmesh_vip_cidr: mesh-wide setting differs between hosts"),
    ("unknown port field", {"vmesh_ports": [{"port": 9080, "protocol": "http", "targetPort": 1}]},
     "vmesh_ports[0].targetPort: unknown field"),
    ("probe differs", {"vmesh_probe": {"tcpSocket": {}}},
     "host reviews-v2: vmesh_probe: differs from reviews-v1's probe for the same service reviews"),
    ("probe of two kinds", {"vmesh_probe": {"tcpSocket": {}, "httpGet": {}}},
     "host reviews-v1: vmesh_probe: give exactly one of httpGet, tcpSocket and exec"),
    ("probe unknown field", {"vmesh_probe": {"httpGet": {}, "initialDelaySeconds": 5}},
     "vmesh_probe.initialDelaySeconds: unknown field"),
    ("probe path", {"vmesh_probe": {"httpGet": {"path": "health"}}}, "vmesh_probe.httpGet.path: expected a path"),
    ("probe port", {"vmesh_probe": {"tcpSocket": {"port": 0}}}, "vmesh_probe.tcpSocket.port: expected the app's port"),
    ("probe command", {"vmesh_probe": {"exec": {"command": "pg_isready"}}},
     "vmesh_probe.exec.command: expected a list of strings, the program first by its absolute path"),
    ("probe period", {"vmesh_probe": {"tcpSocket": {}, "periodSeconds": 0}},
     "vmesh_probe.periodSeconds: expected a whole number 1-3600, got 0"),
    ("probe timeout", {"vmesh_probe": {"tcpSocket": {}, "periodSeconds": 2, "timeoutSeconds": 3}},
     "vmesh_probe.timeoutSeconds: 3 is longer than periodSeconds (2)"),
]


@pytest.mark.parametrize("override,expected", [c[1:] for c in INVENTORY_CASES], ids=[c[0] for c in INVENTORY_CASES])
def test_bad_inventory(override, expected):
    hosts = bookinfo_hosts()
    hosts["reviews-v1"].update(override)
    with pytest.raises(MeshError) as info:
        build(hosts=hosts)
    assert expected in str(info.value)


# --- strict reading, as the Kubernetes API server reads (issue E, "Mesh documents: strict") -----------------------

PA = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
{body}
"""
AP = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-all}}
spec:
{body}
"""
GW = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{host}]
"""


def gw(name: str = "gw", host: str = "bookinfo.example.test") -> str:
    return GW.format(name=name, host=host)


def named(kind: str, name: str, extra: str = "") -> str:
    return f"apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}{extra}}}\n"


ALIAS_BOMB = """apiVersion: networking.istio.io/v1
kind: EnvoyFilter
metadata: {name: lol}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: ADD
      value:
        a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
        b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
        c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
        d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
        e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
        f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
        g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
        h: [*g, *g, *g, *g, *g, *g, *g, *g, *g]
"""

STRICT_CASES = [
    # duplicate keys, at any depth: the last one no longer silently wins
    ("duplicate mtls mode", PA.format(body="  mtls:\n    mode: STRICT\n    mode: DISABLE"),
     "mesh/doc0.yaml: PeerAuthentication/istio-system/default: spec.mtls.mode: line 7, column 5: duplicate key "
     "'mode', first on line 6"),
    ("duplicate action", AP.format(body="  action: DENY\n  rules: [{}]\n  action: ALLOW"),
     "mesh/doc0.yaml: AuthorizationPolicy/deny-all: spec.action: line 7, column 3: duplicate key 'action', first on "
     "line 5"),
    ("duplicate top-level key", named("VirtualService", "reviews") + "kind: VirtualService\n",
     "mesh/doc0.yaml: document 1 (line 1): kind: line 4, column 1: duplicate key 'kind', first on line 2"),
    ("duplicate port key as number and text", PA.format(
        body="  selector: {matchLabels: {app: reviews}}\n  portLevelMtls:\n    9080: {mode: STRICT}\n"
             "    '9080': {mode: DISABLE}"),
     "PeerAuthentication/istio-system/default: spec.portLevelMtls.9080: line 8, column 5: duplicate key '9080'"),
    ("duplicate key deep in a route", vs("route: [{destination: {host: reviews, subset: v1, subset: v2}}]"),
     "VirtualService/reviews: spec.http[0].route[0].destination.subset: line 7, column 55: duplicate key 'subset', "
     "first on line 7"),
    # aliases, anchors and other YAML machinery
    ("alias bomb", ALIAS_BOMB, "mesh/doc0.yaml: EnvoyFilter/lol: spec.configPatches[0].patch.value.a: line 10, "
                               "column 12: YAML anchors (&a) are not accepted in mesh documents"),
    ("recursive alias", named("EnvoyFilter", "loop") + "spec: &loop {configPatches: [*loop]}\n",
     "EnvoyFilter/loop: spec: line 4, column 7: YAML anchors (&loop) are not accepted"),
    ("merge key", vs("route: [{<<: {destination: {host: reviews}}}]"),
     "VirtualService/reviews: spec.http[0].route[0]: line 7, column 14: YAML merge keys (<<) are not accepted"),
    ("python tag", named("VirtualService", "x") + "spec: !!python/object:os.system {}\n",
     "VirtualService/x: spec: line 4, column 7: the YAML tag '!!python/object:os.system' is not accepted"),
    ("binary tag", vs("route: !!binary aGVsbG8="), "VirtualService/reviews: spec.http[0].route: line 7, column 12: "
                                                   "the YAML tag '!!binary' is not accepted"),
    ("mapping as a key", named("VirtualService", "x") + "spec: {? {a: b}: c}\n",
     "VirtualService/x: spec: line 4, column 10: a key must be a string or a number, not a mapping"),
    ("nesting too deep", named("EnvoyFilter", "deep") + "spec: " + "[" * 600 + "]" * 600 + "\n",
     "mesh/doc0.yaml: document 1 (line 1): spec[0][0][0][0][0][0][0][...92 levels more]: line 4, column 106: "
     "nested more than 100 levels deep"),
    ("NUL in the file", named("VirtualService", "re\0views"),
     "mesh/doc0.yaml: VirtualService in document 1 (line 1): metadata.name: line 3, column 20: the character U+0000 "
     "(a control character) is not accepted in YAML"),
    ("escaped control character", named("VirtualService", '"a\\x1bb"'),
     "VirtualService in document 1 (line 1): metadata.name: line 3, column 18: the character U+001B (a control "
     "character) is not accepted"),
    ("NUL in a comment of the second document", vs("route: [{destination: {host: reviews}}]") + "---\n# \0\n",
     "mesh/doc0.yaml: document 2 (line 8): line 9, column 3: the character U+0000 (a control character) is not "
     "accepted in YAML"),
    ("huge number", vs("route: [{destination: {host: reviews}, weight: " + "9" * 5000 + "}]"),
     "VirtualService/reviews: spec.http[0].route[0].weight: line 7, column 52: '99999999999"),
    ("not a number", vs("route: [{destination: {host: reviews}, weight: .nan}]"),
     "spec.http[0].route[0].weight: line 7, column 52: '.nan' is not a number JSON can carry"),
    # names, as Kubernetes and Istio check them
    ("path as a name", named("VirtualService", "../../etc/passwd"),
     "mesh/doc0.yaml: VirtualService in document 1 (line 1): metadata.name: invalid name '../../etc/passwd': must be "
     "a DNS-1123 subdomain"),
    ("quote in a name", named("DestinationRule", '"re\'views"'), "metadata.name: invalid name \"re'views\""),
    ("zero-width space in a name", named("VirtualService", '"reviews\\u200b"'),
     "metadata.name: invalid name 'reviews\\u200b': must be a DNS-1123 subdomain"),
    ("right-to-left override in a name", named("VirtualService", '"weiver\\u202e"'),
     "metadata.name: invalid name 'weiver\\u202e'"),
    ("upper-case name", named("VirtualService", "Reviews"), "invalid name 'Reviews': must be a DNS-1123 subdomain"),
    ("100,000-character name", named("VirtualService", "a" * 100_000),
     "metadata.name: invalid name 'aaaa"),
    ("dotted Gateway name", gw(name="bookinfo.gateway"),
     "Gateway in document 1 (line 1): metadata.name: invalid name 'bookinfo.gateway': must be a DNS-1123 label"),
    ("namespace with a dot", named("VirtualService", "reviews", ", namespace: a.b"),
     "VirtualService/reviews: metadata.namespace: invalid namespace 'a.b': must be a DNS-1123 label"),
    ("64-character namespace", named("VirtualService", "reviews", ", namespace: " + "n" * 64),
     "metadata.namespace: invalid namespace 'nnnn"),
    # hosts, as Istio's validation reads them
    ("gateway short host", gw(host="bookinfo"),
     "Gateway/gw: spec.servers[0].hosts[0]: invalid host 'bookinfo': short names are not allowed here"),
    ("gateway partial wildcard", gw(host="'book*.example.test'"),
     "Gateway/gw: spec.servers[0].hosts[0]: invalid host 'book*.example.test': label 'book*'"),
    ("gateway host namespace", gw(host="'Bad_NS/bookinfo.example.test'"),
     "spec.servers[0].hosts[0]: invalid namespace 'Bad_NS' in host 'Bad_NS/bookinfo.example.test'"),
    ("gateway host with a zero-width space", gw(host='"bookinfo.example.test\\u200b"'),
     "spec.servers[0].hosts[0]: invalid host 'bookinfo.example.test\\u200b'"),
    ("destination host with an underscore", vs("route: [{destination: {host: re_views}}]"),
     "spec.http[0].route[0].destination.host: invalid host 're_views': label 're_views' is not a DNS-1123 label"),
    ("destination rule host", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\n"
                              "spec: {host: 'ratings..default'}\n",
     "DestinationRule/x: spec.host: invalid host 'ratings..default': label ''"),
    ("service entry host", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\n"
                           "spec: {hosts: [api.example.123], ports: [{number: 443, protocol: TLS}]}\n",
     "ServiceEntry/x: spec.hosts[0]: invalid host 'api.example.123': the top-level domain '123' cannot be all digits"),
    ("sidecar egress host", "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: x}\n"
                            "spec: {egress: [{hosts: ['./ratings']}]}\n",
     "Sidecar/x: spec.egress[0].hosts[0]: invalid host 'ratings' in './ratings': short names are not allowed"),
    ("gateway reference", VS.replace("hosts: [reviews]", "hosts: [reviews]\n  gateways: ['Istio_System/gw']")
     .format(body="route: [{destination: {host: reviews}}]"),
     "spec.gateways[0]: invalid namespace in 'Istio_System/gw': must be a DNS-1123 label"),
    # regexes, checked by RE2 as Envoy reads them
    ("regex \\Z", vs("match: [{uri: {regex: '/a\\Z'}}]\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].match[0].uri.regex: invalid regex '/a\\\\Z': invalid escape sequence: \\Z"),
    ("regex backreference", vs("match: [{uri: {regex: '(a)\\1'}}]\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].match[0].uri.regex: invalid regex '(a)\\\\1': invalid escape sequence: \\1"),
    ("regex repeat over 1000", vs("match: [{uri: {regex: 'a{1001}'}}]\n    route: [{destination: {host: reviews}}]"),
     "invalid regex 'a{1001}': invalid repetition size: {1001}"),
    ("regex over Envoy's program size", vs("match: [{uri: {regex: '[a-z]{97}'}}]\n    route: [{destination: "
                                           "{host: reviews}}]"),
     "spec.http[0].match[0].uri.regex: regex '[a-z]{97}' is too complex for Envoy: its RE2 program size is 101, "
     "Envoy takes at most 100"),
    ("regex over Istio's length", vs("match: [{uri: {regex: '" + "a" * 1025 + "'}}]\n    route: [{destination: "
                                     "{host: reviews}}]"),
     "spec.http[0].match[0].uri.regex: regex of 1025 characters is too long: Istio takes at most 1024"),
    ("rewrite regex", vs("match: [{uri: {prefix: /}}]\n    rewrite: {uriRegexRewrite: {match: '(?<=a)b', rewrite: x}}"
                         "\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].rewrite.uriRegexRewrite.match: invalid regex '(?<=a)b'"),
    # durations
    ("negative duration", vs("timeout: -1s\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].timeout: duration '-1s' is negative"),
    ("duration past protobuf's range", vs("timeout: 315576000001s\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].timeout: duration '315576000001s' is too long: Envoy takes at most 315576000000s"),
    ("duration under a millisecond", vs("retries: {attempts: 1, perTryTimeout: 100us}\n    route: [{destination: "
                                        "{host: reviews}}]"),
     "spec.http[0].retries.perTryTimeout: duration '100us' is too short, must be at least 0.001s"),
    ("duration finer than a millisecond", vs("timeout: 1.5ms\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].timeout: duration '1.5ms' is finer than a millisecond"),
    ("duration of 5000 digits", vs("timeout: '" + "1" * 5000 + "s'\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].timeout: invalid duration '1111"),
    ("CORS max age of 0", vs("corsPolicy: {maxAge: 0s}\n    route: [{destination: {host: reviews}}]"),
     "spec.http[0].corsPolicy.maxAge: duration '0s' is too short"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in STRICT_CASES], ids=[c[0] for c in STRICT_CASES])
def test_strict_reading(text, expected):
    with pytest.raises(MeshError) as info:
        build(text)
    assert expected in str(info.value)
    assert len(str(info.value)) < 1000  # a 100,000-character value is cut in the message


ACCEPTED = [
    ("unicode class in a regex", vs("match: [{uri: {regex: '/\\pL+'}}]\n    route: [{destination: {host: reviews}}]")),
    ("regex just under Envoy's program size", vs("match: [{uri: {regex: '[a-z]{96}'}}]\n    route: [{destination: "
                                                 "{host: reviews}}]")),
    ("the longest duration", vs("timeout: 315576000000s\n    route: [{destination: {host: reviews}}]")),
    ("one key in two documents", vs("route: [{destination: {host: reviews}}]") + "---\n" +
     vs("route: [{destination: {host: ratings}}]").replace("reviews", "ratings")),
    ("253-character name", named("VirtualService", ".".join(["a" * 63] * 3 + ["a" * 61])) +
     "spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}\n"),
    ("gateway host as an IP address", gw(host="192.0.2.10")),
    ("gateway host in any namespace", gw(host="'*/bookinfo.example.test'")),
    ("a date stays text", vs("headers: {request: {set: {x-date: 2024-01-01}}}\n    route: [{destination: "
                             "{host: reviews}}]")),
]


@pytest.mark.parametrize("text", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_strict_reading_accepts(text):
    build(text)


def test_a_date_is_passed_on_as_written():
    from vmesh.compile import render_host

    mesh = build(vs("headers: {request: {set: {x-date: 2024-01-01}}}\n    route: [{destination: {host: reviews}}]"))
    vhost = outbound_vhost(render_host(mesh, "productpage-v1").files, "reviews.default.svc.cluster.local")
    added = vhost["routes"][0]["request_headers_to_add"]
    assert added == [{"header": {"key": "x-date", "value": "2024-01-01"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


def test_file_size_limit():
    text = vs("route: [{destination: {host: reviews}}]") + "#" * (2 * 1024 * 1024)
    with pytest.raises(MeshError, match=r"^mesh/doc0.yaml: \d+ characters is more than the 2097152 \(2 MiB\) a mesh "
                                        r"file may have; split it"):
        build(text)


def test_document_size_limit():
    text = named("EnvoyFilter", "big") + "spec: {priority: 1, x: '" + "a" * (1024 * 1024) + "'}\n"
    with pytest.raises(MeshError, match=r"^mesh/doc0.yaml: EnvoyFilter/big: \d+ characters is more than the 1048576 "
                                        r"\(1 MiB\) one object may have"):
        build(text)
