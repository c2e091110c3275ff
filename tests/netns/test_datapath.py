"""Bookinfo through real sidecars and the real redirect, in network namespaces (tests/harness/netmesh.py).

Seven "VMs": the six Bookinfo hosts, each running its Bookinfo stand-in as uid 1000, and a pure client with no
service. Everything is asserted as a user would see it: which version answered, status codes, the page, and
Envoy's own counters as the evidence that the calls went through the sidecars.
"""

from __future__ import annotations

import collections

import pytest

from harness import DATA
from harness.mesh import bookinfo_hosts, destination_rules
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

REVIEWS_URL = "http://reviews:9080/reviews/0"
REVIEWS_HOSTS = {"v1": "reviews-v1", "v2": "reviews-v2", "v3": "reviews-v3"}
CLIENT_CLUSTER = "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_total"
INBOUND_CLUSTER = "cluster.inbound|9080||.upstream_rq_total"
ALL_V1 = ("mesh/virtual-service-all-v1.yaml", (DATA / "bookinfo" / "virtual-service-all-v1.yaml").read_text())


@pytest.fixture(scope="module")
def mesh(netmesh_module):
    hosts = bookinfo_hosts()
    hosts["client"] = {}  # no vmesh_service: a pure client, like a batch VM or a developer's box
    mesh = netmesh_module(hosts, [destination_rules()])
    for host in hosts:
        if host != "client":
            mesh.start_bookinfo(host)
    return mesh


def _counter(mesh, host: str, name: str) -> int:
    return mesh.stats(host, name).get(name, 0)


def _inbound(mesh) -> dict[str, int]:
    return {version: _counter(mesh, host, INBOUND_CLUSTER) for version, host in REVIEWS_HOSTS.items()}


def test_reviews_is_balanced_over_three_versions_through_both_sidecars(mesh):
    client_before = _counter(mesh, "productpage-v1", CLIENT_CLUSTER)
    inbound_before = _inbound(mesh)

    answers = mesh.sample("productpage-v1", REVIEWS_URL, 60)

    assert {status for status, _ in answers} == {200}, answers
    versions = collections.Counter({version: n for (_, version), n in answers.items()})
    assert sum(versions.values()) == 60 and set(versions) == {"v1", "v2", "v3"}, answers
    assert all(n >= 10 for n in versions.values()), answers
    # The client's sidecar sent every call; each reviews host's sidecar received exactly the calls its app answered.
    assert _counter(mesh, "productpage-v1", CLIENT_CLUSTER) - client_before == 60
    inbound_after = _inbound(mesh)
    assert {v: inbound_after[v] - inbound_before[v] for v in REVIEWS_HOSTS} == dict(versions)


def test_push_routes_everything_to_v1_without_restarting_envoy(mesh):
    pids = {host: mesh.envoy_pid(host) for host in mesh.hosts}
    uptime_before = mesh.uptime("productpage-v1")
    try:
        changed = mesh.push([destination_rules(), ALL_V1])
        assert "rds_9080.json" in changed["productpage-v1"]
        assert "lds.json" not in changed["productpage-v1"]

        answers = mesh.sample("productpage-v1", REVIEWS_URL, 60)

        assert answers == {(200, "v1"): 60}
        assert mesh.uptime("productpage-v1") >= uptime_before
        assert {host: mesh.envoy_pid(host) for host in mesh.hosts} == pids  # the same processes, still running
        assert mesh.stats("productpage-v1", "server.hot_restart_epoch")["server.hot_restart_epoch"] == 0
    finally:
        mesh.push([destination_rules()])
    # and back: round robin again, still the same Envoys
    back = mesh.sample("productpage-v1", REVIEWS_URL, 30)
    assert {version for _, version in back} == {"v1", "v2", "v3"}, back
    assert {host: mesh.envoy_pid(host) for host in mesh.hosts} == pids


def test_productpage_shows_reviews_to_another_host(mesh):
    page = mesh.request("client", "http://productpage:9080/productpage")

    assert page.status == 200, page
    assert "Book Details" in page.text and "William Shakespeare" in page.text  # details answered productpage
    assert "Reviews served by: reviews-v" in page.text, page
    assert "x-envoy-upstream-service-time" in page.headers  # the answer came through the client's sidecar


def test_a_host_without_a_service_calls_reviews_through_its_sidecar(mesh):
    before = _counter(mesh, "client", CLIENT_CLUSTER)

    one = mesh.request("client", REVIEWS_URL)
    answers = mesh.sample("client", REVIEWS_URL, 30)

    assert one.status == 200 and one.headers["x-bookinfo-service"] == "reviews", one
    assert "x-envoy-upstream-service-time" in one.headers, one
    assert {status for status, _ in answers} == {200}, answers
    assert {version for _, version in answers} == {"v1", "v2", "v3"}, answers
    assert _counter(mesh, "client", CLIENT_CLUSTER) - before == 31


def test_the_proxy_users_own_connections_are_not_captured_again(mesh):
    """Envoy (uid 1337) reaches the peer VM directly; only its peer's inbound capture applies."""
    reviews_v2 = f"http://{mesh.address('reviews-v2')}:9080/reviews/0"
    outbound = "listener.0.0.0.0_15001.downstream_cx_total"
    client_before = _counter(mesh, "client", outbound)
    inbound_before = _counter(mesh, "reviews-v2", INBOUND_CLUSTER)

    direct = mesh.request("client", reviews_v2, uid=1337)

    assert direct.status == 200 and direct.headers["x-bookinfo-version"] == "v2", direct
    assert _counter(mesh, "client", outbound) == client_before  # the client's sidecar never saw it
    assert _counter(mesh, "reviews-v2", INBOUND_CLUSTER) == inbound_before + 1  # the peer's inbound capture did

    # The same call from an ordinary user is captured by the client's sidecar (and passed through to reviews-v2).
    captured = mesh.request("client", reviews_v2)
    assert captured.status == 200 and captured.headers["x-bookinfo-version"] == "v2", captured
    assert _counter(mesh, "client", outbound) == client_before + 1

    # A service VIP exists only inside the sidecars: uid 1337 calling it is not redirected, so nobody answers.
    with pytest.raises(ConnectionError):
        mesh.tcp("client", mesh.resolve("client", "reviews"), 9080, b"", timeout=1, uid=1337)

