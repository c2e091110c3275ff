"""The PKI tests' fixtures: the CA the ca_server role makes, the CA server running on 127.0.0.1, a node
registered on it. Module-scoped: each test file gets its own."""

from __future__ import annotations

import re

import pytest

from harness.pki import IDENTITY, Node, Pki, ca_server, ca_server_tasks, new_key, ok, play, register, server_cli
from harness.pki import write_server_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca, state = base / "ca", base / "state"
    state.mkdir(mode=0o700)
    (state / "nodes").mkdir(mode=0o700)
    config = write_server_config(base / "server.json", state)
    results = [ok(r) for r in play(base, ca_server_tasks(ca, state, config))]
    assert results[3]["issued"] is True and results[3]["reasons"] == ["missing"]
    tls = server_cli(config, "tls")
    assert tls.returncode == 0 and tls.stdout == "issued: missing\n", tls.stderr
    return Pki(base=base, ca=ca, state=state, config=config, bundle=state / "root-cert.pem")


@pytest.fixture(scope="module")
def server(pki):
    with ca_server(pki) as running:
        yield running


@pytest.fixture
def node(pki, request) -> Node:
    """A node registered on the shared server for IDENTITY, named after the test (requests per node are capped)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:60]
    key = pki.base / f"{name}.key"
    register(pki.state, name, IDENTITY, new_key(key))
    return Node(name=name, key=key, identity=IDENTITY)
