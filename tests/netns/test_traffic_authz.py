"""AuthorizationPolicy with real sidecars: who may call whom, checked from the right and the wrong hosts.

Bookinfo-shaped hosts, each with its own service account (its SPIFFE identity) and an echo server, plus
``outside``, a machine without a sidecar (plaintext, no identity).
"""

from __future__ import annotations

import pytest

from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

_HTTP = [{"port": 9080, "protocol": "http"}]
HOSTS = {
    "productpage-v1": {"vmesh_service": "productpage", "vmesh_service_account": "bookinfo-productpage",
                       "vmesh_ports": _HTTP},
    "reviews-v1": {"vmesh_service": "reviews", "vmesh_service_account": "bookinfo-reviews",
                   "vmesh_labels": {"version": "v1"}, "vmesh_ports": _HTTP},
    "ratings-v1": {"vmesh_service": "ratings", "vmesh_service_account": "bookinfo-ratings",
                   "vmesh_ports": _HTTP + [{"port": 9000, "protocol": "tcp"}]},
    "details-v1": {"vmesh_service": "details", "vmesh_service_account": "bookinfo-details", "vmesh_ports": _HTTP},
    "outside": {"netmesh_outside": True},
}

REVIEWS_GET_FROM_PRODUCTPAGE = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}
    to:
    - operation: {methods: ["GET"]}
"""
REVIEWS_DENY_ADMIN = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin*"]}
"""
RATINGS_ONLY_REVIEWS = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/bookinfo-reviews"]}
"""
DETAILS_ALLOW_NOTHING = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
"""
MESH_AUDIT = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{}]
"""
DENY_OUTSIDE_IP = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-outside, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  action: DENY
  rules:
  - from:
    - source: {ipBlocks: ["%s/32"]}
"""
WHEN_HEADER = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-header, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  rules:
  - when:
    - key: request.headers[x-token]
      values: ["open-sesame"]
"""


def docs(*texts: str) -> list[tuple[str, str]]:
    return [(f"mesh/authz{i}.yaml", text) for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def mesh(netmesh_module):
    mesh = netmesh_module(HOSTS, docs(REVIEWS_GET_FROM_PRODUCTPAGE, REVIEWS_DENY_ADMIN, RATINGS_ONLY_REVIEWS,
                                      DETAILS_ALLOW_NOTHING, MESH_AUDIT))
    for host in ("productpage-v1", "reviews-v1", "ratings-v1", "details-v1"):
        mesh.start_echo(host)
    mesh.start_echo("ratings-v1", 9000, tcp=True)
    return mesh


def denied(response) -> bool:
    return response.status == 403 and response.text == "RBAC: access denied"


def test_productpage_may_get_reviews_and_nothing_else(mesh):
    assert mesh.request("productpage-v1", "http://reviews:9080/reviews/0").status == 200
    assert denied(mesh.request("productpage-v1", "http://reviews:9080/reviews/0", method="POST", body="{}"))
    assert denied(mesh.request("details-v1", "http://reviews:9080/reviews/0"))
    assert denied(mesh.request("ratings-v1", "http://reviews:9080/reviews/0"))
    assert denied(mesh.request("outside", f"http://{mesh.address('reviews-v1')}:9080/reviews/0"))


def test_a_deny_on_a_path_wins_over_the_allow(mesh):
    assert denied(mesh.request("productpage-v1", "http://reviews:9080/admin/users"))
    # path normalization: a detour through /reviews/.. is still /admin
    assert denied(mesh.request("productpage-v1", "http://reviews:9080/reviews/../admin/users"))
    assert mesh.request("productpage-v1", "http://reviews:9080/administrators-guide").status == 403
    assert mesh.request("productpage-v1", "http://reviews:9080/reviews/admin").status == 200


def test_ratings_refuses_everyone_but_reviews(mesh):
    assert mesh.request("reviews-v1", "http://ratings:9080/ratings/0").status == 200
    assert denied(mesh.request("productpage-v1", "http://ratings:9080/ratings/0"))
    assert denied(mesh.request("details-v1", "http://ratings:9080/ratings/0"))
    assert denied(mesh.request("outside", f"http://{mesh.address('ratings-v1')}:9080/ratings/0"))
    # the same policy on ratings' TCP port: others' connections are closed without an answer
    assert mesh.tcp("reviews-v1", "ratings", 9000, "hi").startswith(b"host=ratings-v1")
    assert mesh.tcp("productpage-v1", "ratings", 9000, "hi") == b""


def test_an_empty_policy_allows_nothing(mesh):
    for caller in ("productpage-v1", "reviews-v1"):
        assert denied(mesh.request(caller, "http://details:9080/details/0"))


def test_audit_blocks_nothing_and_unselected_workloads_stay_open(mesh):
    # the mesh-wide AUDIT policy applies to productpage, which has no ALLOW or DENY policy
    assert mesh.request("reviews-v1", "http://productpage:9080/").status == 200
    assert mesh.request("outside", f"http://{mesh.address('productpage-v1')}:9080/").status == 200


def test_source_ip_and_request_headers(mesh):
    mesh.push(docs(DENY_OUTSIDE_IP % mesh.address("outside")))
    try:
        assert denied(mesh.request("outside", f"http://{mesh.address('productpage-v1')}:9080/"))
        assert mesh.request("reviews-v1", "http://productpage:9080/").status == 200
        mesh.push(docs(WHEN_HEADER))
        assert denied(mesh.request("reviews-v1", "http://productpage:9080/"))
        assert mesh.request("reviews-v1", "http://productpage:9080/", headers={"x-token": "open-sesame"}).status == 200
    finally:
        mesh.push(docs(REVIEWS_GET_FROM_PRODUCTPAGE, REVIEWS_DENY_ADMIN, RATINGS_ONLY_REVIEWS, DETAILS_ALLOW_NOTHING,
                       MESH_AUDIT))
