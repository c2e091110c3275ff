"""Bookinfo with Istio's destination-rule-all-mtls.yaml under mesh-wide STRICT, in network namespaces.

A module of its own: each Envoy holds an inotify instance per watched xDS file (listeners, clusters, each route
table, each cluster's endpoints, each secret: about 20 in Bookinfo) and all sidecars here run as the proxy's uid,
so two Bookinfo meshes at once need more than the kernel's default 128 per user (fs.inotify.max_user_instances;
scripts/setup.sh raises it to 1024 for the tests and the lab).
"""

from __future__ import annotations

import pytest

from harness import DATA
from harness.mesh import bookinfo_hosts
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]


def _counter(mesh, host: str, name: str) -> int:
    return mesh.stats(host, name).get(name, 0)


ALL_MTLS = ("mesh/destination-rule-all-mtls.yaml", (DATA / "bookinfo" / "destination-rule-all-mtls.yaml").read_text())
STRICT = ("mesh/strict.yaml", """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
""")


def test_bookinfo_with_istios_all_mtls_rules_and_strict_mtls(netmesh_module):
    """Istio's destination-rule-all-mtls.yaml (ISTIO_MUTUAL to every service) with mesh-wide STRICT: the page
    comes together over mTLS on every hop, and a host outside the mesh gets nothing in plaintext."""
    hosts = bookinfo_hosts()
    hosts["outside"] = {"netmesh_outside": True}
    mesh = netmesh_module(hosts, [ALL_MTLS, STRICT])
    for host in bookinfo_hosts():
        mesh.start_bookinfo(host)
    handshakes = "listener.0.0.0.0_15006.ssl.handshake"
    before = {host: _counter(mesh, host, handshakes) for host in bookinfo_hosts()}
    pages = mesh.sample("productpage-v1", "http://productpage:9080/productpage", 12)
    assert {status for status, _ in pages} == {200}, pages
    page = mesh.request("productpage-v1", "http://productpage:9080/productpage?u=normal")
    assert "Book Details" in page.text and "Reviews served by" in page.text, page
    grown = {host for host in bookinfo_hosts() if _counter(mesh, host, handshakes) > before[host]}
    assert grown == set(bookinfo_hosts()), grown  # every server, ratings included, took mTLS
    refused = mesh.request("outside", f"http://{mesh.address('reviews-v1')}:9080/reviews/0")
    assert refused.status == 0, refused
