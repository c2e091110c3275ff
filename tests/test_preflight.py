"""The preflight playbook on the controller: a missing certificate is named, and nothing runs past it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

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


def run_preflight(tmp_path: Path, credentials: dict) -> subprocess.CompletedProcess:
    inventory = tmp_path / "inventory"
    (inventory / "mesh").mkdir(parents=True)
    (inventory / "mesh" / "gateway.yaml").write_text(GATEWAY)
    hosts = {"all": {"children": {"vmesh": {"hosts": {"edge": {
        "ansible_connection": "local", "ansible_host": "127.0.0.1", "ansible_python_interpreter": sys.executable,
        "vmesh_labels": {"istio": "ingressgateway"}, "vmesh_credentials": credentials}}}}}}
    (inventory / "hosts.yml").write_text(json.dumps(hosts))
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory / "hosts.yml"),
                           str(ROOT / "playbooks" / "preflight.yml"), "-e", f"vmesh_mesh_dir={inventory / 'mesh'}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))


def test_a_missing_gateway_certificate_is_named(tmp_path):
    present = tmp_path / "shop.crt"
    present.write_text("not checked here\n")
    missing = tmp_path / "nowhere" / "shop.key"
    proc = run_preflight(tmp_path, {"shop-credential": {"cert": str(present), "key": str(missing)}})
    assert proc.returncode != 0
    assert "vmesh_credentials names files that are not on the controller" in proc.stdout
    assert f"shop-credential.key: {missing}" in proc.stdout
    assert str(present) not in proc.stdout.split("not on the controller:")[1].split("\n")[0]
    assert "Unknown error" not in proc.stdout


def test_present_certificates_pass(tmp_path):
    files = {}
    for part in ("cert", "key"):
        path = tmp_path / f"shop.{part}"
        path.write_text("x\n")
        files[part] = str(path)
    proc = run_preflight(tmp_path, {"shop-credential": files})
    assert proc.returncode == 0, proc.stdout + proc.stderr
