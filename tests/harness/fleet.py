"""A fleet of mesh hosts on this machine: an inventory whose hosts all use the local connection, each with a config
directory and hosts file of its own, so the controller's side of a push (compile, build, per-host tasks, the
sidecar_config module with its validation) runs for hundreds of hosts without hundreds of VMs. No Envoy runs: the module writes the files
and finds nothing to confirm them with.

    inventory = make_fleet(tmp_path, hosts=4, services=2)
    proc = run_push(inventory)                       # preflight + push of every host's config
    files = snapshot(tmp_path)                       # {host: {file name: text}}

Used by tests/unit/test_build.py and bench/ansible_scale.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import BIN, ROOT
from harness.certs import make_ca, make_workload

#: The push: the preflight role (compile into the build directory, or take vmesh_build), then each host's files
#: from the build through vmesh.mesh.sidecar_config, as the proxy role's config tasks do (without its restart
#: handler: no systemd here).
PUSH_PLAY = """---
- name: Vmesh | preflight
  ansible.builtin.import_playbook: vmesh.mesh.preflight
- name: Push each host's config from the build
  hosts: vmesh
  gather_facts: false
  tasks:
    - name: Push the compiled config and the service names
      vmesh.mesh.sidecar_config:
        build: "{{ preflight_built }}"
        dest: "{{ vmesh_config_dir }}"
        envoy: "{{ fleet_envoy }}"
        hosts_file: "{{ fleet_hosts_file }}"
"""

NOOP_PLAY = """---
- name: One task on every host
  hosts: vmesh
  gather_facts: false
  tasks:
    - name: Nothing
      ansible.builtin.debug:
        msg: ok
"""


def host_name(index: int) -> str:
    return f"host-{index}"


def make_fleet(root: Path, hosts: int, services: int, docs: dict[str, str] | None = None,
               only: list[str] | None = None) -> Path:
    """``root/inventory`` (returned): ``hosts`` hosts, host i serving svc-(i mod services) on 8080 (HTTP) as
    version v1 or v2, its config directory ``root/hosts/<host>/envoy``; ``docs`` (file name -> YAML) in
    ``root/inventory/mesh``; ``root/etc/<host>/hosts`` is its hosts file. ``only``: the inventory holds just these hosts (a slice of the fleet, as AWX job
    slicing gives one job)."""
    inventory = root / "inventory"
    (inventory / "mesh").mkdir(parents=True, exist_ok=True)
    for name, text in (docs or {}).items():
        (inventory / "mesh" / name).write_text(text)
    certs = root / "certs"
    if not (certs / "key.pem").exists():
        make_workload(certs, make_ca(root / "ca").parent, "spiffe://cluster.local/ns/default/sa/fleet")
    members = {}
    for i in range(hosts):
        name = host_name(i)
        if only is not None and name not in only:
            continue
        service = f"svc-{i % services}"
        hosts_file = root / "etc" / name / "hosts"
        hosts_file.parent.mkdir(parents=True, exist_ok=True)
        if not hosts_file.exists():
            hosts_file.write_text("127.0.0.1 localhost\n")
        members[name] = {
            "ansible_host": f"10.77.{i // 250}.{i % 250 + 1}", "vmesh_service": service,
            "vmesh_labels": {"app": service, "version": f"v{1 + (i // services) % 2}"},
            "vmesh_ports": [{"port": 8080, "protocol": "http", "name": "http"}],
            "vmesh_config_dir": str(root / "hosts" / name / "envoy"), "vmesh_certs_dir": str(certs),
            "fleet_hosts_file": str(hosts_file)}
    common = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
              "fleet_envoy": _envoy()}
    (inventory / "hosts.yml").write_text(json.dumps({"all": {"vars": common, "children": {"vmesh": {
        "hosts": members}}}}, indent=1))
    (root / "push.yml").write_text(PUSH_PLAY)
    (root / "noop.yml").write_text(NOOP_PLAY)
    return inventory


def _envoy() -> str:
    from vmesh import envoy

    return envoy.binary()


def run_push(inventory: Path, *extra: str, play: str = "push.yml", timeout: float = 1800) -> subprocess.CompletedProcess:
    """ansible-playbook with ``play`` (beside the inventory's folder) on the fleet; prerequisites not checked
    (this machine is no VM)."""
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory / "hosts.yml"),
                           str(inventory.parent / play), "-e", "preflight_check_prerequisites=false", *extra],
                          capture_output=True, text=True, cwd=inventory.parent, timeout=timeout,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))


def snapshot(root: Path) -> dict[str, dict[str, str]]:
    """Every host's config files as Envoy would read them: {host: {name: text}}."""
    out = {}
    for folder in sorted((root / "hosts").glob("*/envoy")):
        out[folder.parent.name] = {p.name: p.read_text() for p in sorted(folder.iterdir())
                                   if not p.name.startswith(".")}
    return out
