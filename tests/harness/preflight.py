"""The preflight playbook (playbooks/preflight.yml) run on this machine, against a gateway host of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import BIN, ROOT

GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["shop.example.test"]
    tls: {mode: SIMPLE, credentialName: shop-credential}
"""


def run_preflight(tmp_path: Path, credentials: dict, *extra: str, prefix: tuple[str, ...] = (),
                  check_prerequisites: bool = False) -> subprocess.CompletedProcess:
    """preflight.yml against this machine (local connection); its prerequisite check is off unless asked for:
    the machine running the tests is no VM (no systemd as PID 1)."""
    inventory = tmp_path / "inventory"
    (inventory / "mesh").mkdir(parents=True)
    (inventory / "mesh" / "gateway.yaml").write_text(GATEWAY)
    hosts = {"all": {"children": {"vmesh": {"hosts": {"edge": {
        "ansible_connection": "local", "ansible_host": "127.0.0.1", "ansible_python_interpreter": sys.executable,
        "vmesh_labels": {"istio": "ingressgateway"}, "vmesh_credentials": credentials}}}}}}
    (inventory / "hosts.yml").write_text(json.dumps(hosts))
    return subprocess.run([*prefix, str(BIN / "ansible-playbook"), "-i", str(inventory / "hosts.yml"),
                           str(ROOT / "playbooks" / "preflight.yml"), "-e", f"vmesh_mesh_dir={inventory / 'mesh'}",
                           "-e", f"preflight_check_prerequisites={check_prerequisites}", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
