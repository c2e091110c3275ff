"""pytest fixtures for :mod:`netmesh`: a started mesh of network namespaces, stopped after the test (or module).

Use them with ``from harness.netmesh_fixtures import netmesh  # noqa: F401`` (or ``netmesh_module``) and mark
the tests ``pytest.mark.netns``; they skip unless root with ``ip``, ``setpriv`` and iptables::

    pytestmark = [pytest.mark.netns, requires_netns]

    def test_something(netmesh):
        mesh = netmesh({"client": {}, "echo-v1": {...}}, [("mesh/vs.yaml", VS)])
        mesh.start_echo("echo-v1")
        assert mesh.request("client", "http://echo:8080/").status == 200
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Callable, Iterable, Mapping

import pytest

from harness.netmesh import NetMesh, can_run

requires_netns = pytest.mark.skipif(not can_run(), reason="needs root, ip, setpriv, unshare and iptables")

MeshFactory = Callable[..., NetMesh]


def _name(node: Any, index: int) -> str:
    """Deterministic per test (or module), so an interrupted run's leftovers are found and removed by name."""
    slug = re.sub(r"[^a-z0-9]", "", node.name.lower().removeprefix("test_").removesuffix(".py"))[:12]
    worker = re.sub(r"[^a-z0-9]", "", os.environ.get("PYTEST_XDIST_WORKER", "").lower())[:4]  # pytest-xdist
    return f"{slug}{hashlib.sha1(node.nodeid.encode()).hexdigest()[:4]}{worker}{index or ''}"[:24]


def _factory(request: pytest.FixtureRequest, base) -> tuple[MeshFactory, list[NetMesh]]:
    meshes: list[NetMesh] = []

    def make(hosts: Mapping[str, Mapping[str, Any]], sources: Iterable[tuple[str, str]] = (),
             **options: Any) -> NetMesh:
        if not can_run():
            pytest.skip("needs root, ip, setpriv, unshare and iptables")
        index = len(meshes)
        mesh = NetMesh(options.pop("name", None) or _name(request.node, index), hosts, sources,
                       base / f"mesh{index}", **options)
        meshes.append(mesh)
        mesh.start()
        return mesh

    return make, meshes


@pytest.fixture
def netmesh(request, tmp_path) -> Iterable[MeshFactory]:
    """``netmesh(hosts, sources=(), **NetMesh options)`` -> a started :class:`NetMesh`, stopped after the test."""
    make, meshes = _factory(request, tmp_path)
    yield make
    for mesh in reversed(meshes):
        mesh.stop()


@pytest.fixture(scope="module")
def netmesh_module(request, tmp_path_factory) -> Iterable[MeshFactory]:
    """Like ``netmesh``, but the meshes live until the module's last test (start once, test many times)."""
    make, meshes = _factory(request, tmp_path_factory.mktemp("netmesh"))
    yield make
    for mesh in reversed(meshes):
        mesh.stop()
