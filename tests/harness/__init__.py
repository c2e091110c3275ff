"""What the tests share: the paths of this checkout and small helpers every group uses.

The tests are grouped by what they need: ``tests/unit`` (neither root nor VMs: the compiler, the CLI, modules on
this machine, Envoy on loopback), ``tests/netns`` (root and network namespaces: real iptables, real Envoy;
marker ``netns``), ``tests/vm`` (the podman test VMs; marker ``vm``). They import what they share from here as
``from harness import ...`` (pyproject.toml's pytest ``pythonpath`` puts ``tests/`` on the path), never from each
other. The modules:

- ``harness.mesh``: a Bookinfo-shaped inventory as plain host variables, and helpers to compile it;
- ``harness.netmesh`` and ``harness.netmesh_fixtures``: a multi-host mesh in network namespaces (real Envoy,
  the real redirect) and its pytest fixtures;
- ``harness.config_push``: the vmesh.mesh.envoy_config module run on this machine, and configs for it;
- ``harness.preflight``: the preflight playbook run on this machine;
- ``harness.certs``: a test CA and certificates for the apps and gateways of the traffic tests;
- ``harness.prometheus`` and ``harness.jaeger``: Prometheus and Jaeger in a host of a NetMesh;
- ``harness.pki``: the PKI modules, the CA server and the renewal agent run on this machine (tests/pki);
- ``harness/apps/``: the programs the tests run (backends, clients), standard library only, run by path with
  the system ``python3`` as on a VM.

The data the tests read (Istio documents) is in ``tests/data`` (:data:`DATA`).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

#: The checkout: the vmesh.mesh collection and the compiler's source.
ROOT = Path(__file__).resolve().parents[2]
#: The virtualenv's programs (ansible-playbook, vmesh).
BIN = Path(sys.executable).parent
#: Istio documents the tests read, shared by every group.
DATA = ROOT / "tests" / "data"
#: The programs the tests run by path.
APPS = Path(__file__).resolve().parent / "apps"
#: What runs on the VM's side runs with the system python3, like on a real VM (not the virtualenv's).
TARGET_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
