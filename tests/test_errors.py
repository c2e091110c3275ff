"""Bad input: a clear error naming file, document and field; never a traceback, never a silent no-op."""

from __future__ import annotations

import pytest

from conftest import bookinfo_hosts, build
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
    ("malformed yaml", "kind: VirtualService\nmetadata: {name: [x\n", "mesh/doc0.yaml: malformed YAML: line"),
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
     "spec.http[0].match[0].headers.x.regex: invalid regex '(?=a)b': RE2 (used by Istio and Envoy) has no lookahead"),
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
]


@pytest.mark.parametrize("override,expected", [c[1:] for c in INVENTORY_CASES], ids=[c[0] for c in INVENTORY_CASES])
def test_bad_inventory(override, expected):
    hosts = bookinfo_hosts()
    hosts["reviews-v1"].update(override)
    with pytest.raises(MeshError) as info:
        build(hosts=hosts)
    assert expected in str(info.value)
