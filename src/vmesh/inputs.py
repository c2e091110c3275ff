"""Read the CLI's inputs: an Ansible inventory (through ``ansible-inventory``) and a directory of Istio YAML.

The compiler itself never touches files; the CLI gathers plain data here and the filter plugin gets the same
data from Ansible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from vmesh.errors import MeshError

MESH_GROUP = "vmesh"
MESH_SUFFIXES = (".yaml", ".yml")


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise MeshError(f"{name} not found: install ansible-core in this environment")
    return found


def inventory_json(inventory: str) -> dict[str, Any]:
    """``ansible-inventory --list`` of ``inventory``: groups plus ``_meta.hostvars``."""
    if not os.path.exists(inventory):
        raise MeshError("no such file or directory", file=inventory)
    env = dict(os.environ)
    # <inventory>/mesh holds Istio documents, <inventory>/ca the mesh CA and <inventory>/rollouts the canary
    # rollouts' state: none of them is an inventory source.
    env.setdefault("ANSIBLE_INVENTORY_IGNORE_REGEX", "^(mesh|ca|rollouts)$")
    env.setdefault("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
    proc = subprocess.run([_tool("ansible-inventory"), "-i", inventory, "--list"], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise MeshError(f"ansible-inventory failed: {proc.stderr.strip() or proc.stdout.strip()}", file=inventory)
    return json.loads(proc.stdout)


def group_hosts(data: dict[str, Any], group: str) -> list[str]:
    """Hosts of ``group`` and of its child groups, as Ansible resolves them."""
    hosts: list[str] = []
    seen = set()

    def walk(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        entry = data.get(name, {})
        hosts.extend(h for h in entry.get("hosts", []) if h not in hosts)
        for child in entry.get("children", []):
            walk(child)

    walk(group)
    return sorted(hosts)


def mesh_hostvars(inventory: str) -> dict[str, dict[str, Any]]:
    """Variables of the hosts in group ``vmesh``."""
    data = inventory_json(inventory)
    members = group_hosts(data, MESH_GROUP)
    if not members:
        raise MeshError(f"no host is in group {MESH_GROUP!r}: put the mesh's hosts (or their groups) under it",
                        file=inventory)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    return {host: hostvars.get(host, {}) for host in members}


def mesh_variables(hostvars: Mapping[str, Mapping[str, Any]], hosts: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What the compiler reads of each host's variables (its ``vmesh_*`` and ``ansible_host``), from Ansible's
    ``hostvars``: the other variables are never looked at (nor templated)."""
    out = {}
    for host in hosts:
        variables = hostvars[host]
        out[host] = {key: variables[key] for key in variables if key.startswith("vmesh_") or key == "ansible_host"}
    return out


def _inventory_dir(inventory: str) -> str:
    """The directory of an inventory given as a directory or as a file."""
    return inventory if os.path.isdir(inventory) else os.path.dirname(inventory) or "."


def default_mesh_dir(inventory: str) -> str:
    return os.path.join(_inventory_dir(inventory), "mesh")


def default_rollout_dir(inventory: str) -> str:
    return os.path.join(_inventory_dir(inventory), "rollouts")


def rollout_state(path: str | Path) -> dict[str, Any]:
    """One canary rollout's saved state (``<inventory>/rollouts/<service>.json``), or MeshError naming the file."""
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MeshError(f"cannot read the rollout state: {exc}", file=_display(path)) from None
    if not isinstance(state, dict) or not isinstance(state.get("service"), str) or "history" not in state:
        raise MeshError("not a rollout state (the canary playbook writes <inventory>/rollouts/<service>.json)",
                        file=_display(path))
    return state


def rollout_states(rollout_dir: str) -> dict[str, dict[str, Any]]:
    """The canary rollouts' saved states in ``rollout_dir`` ({service: state}); none if it does not exist."""
    paths = sorted(Path(rollout_dir).glob("*.json")) if os.path.isdir(rollout_dir) else []
    return {state["service"]: state for state in map(rollout_state, paths)}


def drained_hosts(rollout_dir: str) -> list[str]:
    """The hosts playbooks/drain.yml took out of service: ``<rollout_dir>/drained/<host>.json``."""
    folder = Path(rollout_dir) / "drained"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def _display(path: Path) -> str:
    relative = os.path.relpath(path)
    return str(path.resolve()) if relative.startswith("..") else relative


def mesh_sources(mesh_dir: str) -> list[tuple[str, str]]:
    """(path, text) of every *.yaml / *.yml below ``mesh_dir`` in sorted path order, or of the file ``mesh_dir``."""
    if os.path.isfile(mesh_dir):
        paths = [Path(mesh_dir)]
    elif os.path.isdir(mesh_dir):
        paths = sorted(p for p in Path(mesh_dir).rglob("*") if p.is_file() and p.suffix in MESH_SUFFIXES)
    else:
        return []
    out = []
    for path in paths:
        try:
            out.append((_display(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise MeshError(f"cannot read: {exc}", file=str(path)) from None
    return out
