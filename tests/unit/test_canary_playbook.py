"""playbooks/canary.yml on the controller alone: a bad rollout is refused before anything changes, check mode
says what it would do, and an abort with nothing under way does nothing. (Rollouts with traffic: molecule.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import BIN, ROOT


def run_canary(tmp_path: Path, rollouts: dict, *extra: str) -> subprocess.CompletedProcess:
    inventory = tmp_path / "inventory"
    (inventory / "mesh").mkdir(parents=True, exist_ok=True)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "vmesh_service": "app",
             "vmesh_ports": [{"port": 8080, "protocol": "http"}]}
    hosts = {"all": {"vars": {"vmesh_rollouts": rollouts}, "children": {"vmesh": {"hosts": {
        "app-v1": {**local, "ansible_host": "127.0.0.11", "vmesh_labels": {"version": "v1"}},
        "app-v2": {**local, "ansible_host": "127.0.0.12", "vmesh_labels": {"version": "v2"}}}}}}}
    (inventory / "hosts.yml").write_text(json.dumps(hosts))
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory / "hosts.yml"),
                           str(ROOT / "playbooks" / "canary.yml"), "-e", f"vmesh_mesh_dir={inventory / 'mesh'}",
                           "-e", f"vmesh_rollout_dir={tmp_path / 'rollouts'}",
                           # this machine is the host here, not a VM (no systemd as PID 1)
                           "-e", "preflight_check_prerequisites=false", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=180,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))


def test_a_bad_rollout_is_refused_naming_the_setting(tmp_path):
    proc = run_canary(tmp_path, {"app": {"stable": "v1", "canary": "v9"}})
    assert proc.returncode != 0
    assert "vmesh_rollouts.app.canary: no host of app has version: v9 (they have: v1, v2)" in proc.stdout
    assert not (tmp_path / "rollouts").exists()


def test_check_mode_says_what_it_would_do_and_writes_nothing(tmp_path):
    proc = run_canary(tmp_path, {"app": {"stable": "v1", "canary": "v2", "steps": [20, 100]}}, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "app: rolling out v2 against v1: 20%, 100%" in proc.stdout
    assert not (tmp_path / "rollouts").exists()


def test_an_abort_with_nothing_under_way_does_nothing(tmp_path):
    proc = run_canary(tmp_path, {"app": {"stable": "v1", "canary": "v2"}}, "-e", "vmesh_rollout_abort=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "app: no rollout under way, nothing to abort" in proc.stdout
    assert not (tmp_path / "rollouts").exists()
