"""The preflight playbook on the controller: a missing certificate or prerequisite is named, and nothing runs
past it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness import BIN, ROOT
from harness.netmesh_fixtures import requires_netns

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


@requires_netns
@pytest.mark.netns
@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="this machine runs systemd: nothing is missing")
def test_a_missing_prerequisite_is_named_and_nothing_runs_past_it(tmp_path):
    """This machine has no systemd as PID 1, as a VM must: the check names it for the host and stops the run
    before the certificate checks, in a network namespace of its own (the capture's rules are tried there)."""
    namespace = f"vmesh-pre-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        present = tmp_path / "shop.crt"
        present.write_text("x\n")
        proc = run_preflight(tmp_path, {"shop-credential": {"cert": str(present), "key": str(present)}},
                             "-e", "ansible_become_method=su",  # root to root; this machine has no sudo
                             prefix=("ip", "netns", "exec", namespace), check_prerequisites=True)
        saved = subprocess.run(["ip", "netns", "exec", namespace, "iptables-save", "-t", "nat"],
                               capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)
    assert proc.returncode != 0
    assert "edge: prerequisites missing: systemd: " in proc.stdout, proc.stdout
    # what this machine has is not named: python3, openssl, iptables and the kernel's nat capture
    for present_here in ("python3:", "openssl:", "iptables:", "kernel nat capture:"):
        assert present_here not in proc.stdout.split("prerequisites missing:")[1].split("\n")[0]
    assert "look for the gateway certificates" not in proc.stdout
    # the kernel check's chain is gone again
    assert "VMESH_PREFLIGHT" not in saved


def test_no_way_to_become_root_is_named(tmp_path):
    """Where become does not give root (here: su to nobody, whose shell refuses logins), the check says so for
    the host instead of reporting what is missing."""
    present = tmp_path / "shop.crt"
    present.write_text("x\n")
    proc = run_preflight(tmp_path, {"shop-credential": {"cert": str(present), "key": str(present)}},
                         "-e", "ansible_become_method=su", "-e", "ansible_become_user=nobody",
                         check_prerequisites=True)
    assert proc.returncode != 0
    assert "edge: could not run the prerequisite check as root: " in proc.stdout, proc.stdout
    assert "the Ansible user needs become, e.g. sudo, on this host" in proc.stdout
    assert "look for the gateway certificates" not in proc.stdout
