"""The vmesh.mesh collection as a user gets it: built with ansible-galaxy, installed into a clean directory, and
used from a playbook repository of the user's own, with no checkout and no ansible.cfg of ours beside it.
(molecule/own-vms runs the installed collection's site.yml on test VMs the same way.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from harness import BIN, ROOT
MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py"))
FILTERS = sorted(p.stem for p in (ROOT / "plugins" / "filter").glob("*.yml"))
LOOKUPS = sorted(p.stem for p in (ROOT / "plugins" / "lookup").glob("*.py"))
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file())
PLAYBOOKS = sorted(p.stem for p in (ROOT / "playbooks").glob("*.yml"))

VIRTUAL_SERVICE = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {host: web, port: {number: 8080}}
"""
BAD_VIRTUAL_SERVICE = VIRTUAL_SERVICE.replace("  - route:", "  - timeout: fast\n    route:")


class UserRepo:
    """A user's playbook repository: their inventory, their mesh documents, their playbook, their ansible.cfg."""

    def __init__(self, base: Path, collections: Path):
        self.dir = base / "ops"
        self.collections = collections
        (self.dir / "inventory" / "mesh").mkdir(parents=True)
        hosts = {"all": {"children": {"vmesh": {"hosts": {"web-1": {
            "ansible_connection": "local", "ansible_host": "127.0.0.1", "ansible_python_interpreter": sys.executable,
            "vmesh_service": "web", "vmesh_ports": [{"port": 8080, "protocol": "http"}]}}}}}}
        (self.dir / "inventory" / "hosts.yml").write_text(yaml.safe_dump(hosts))
        (self.dir / "ansible.cfg").write_text(
            "[defaults]\n"
            f"collections_path = {collections}\n"
            "inventory = inventory\n"
            "inventory_ignore_patterns = ^(mesh|ca|rollouts)$\n")
        # The user's own playbook: vmesh's checks, then whatever the team adds.
        (self.dir / "checks.yml").write_text(
            "---\n- name: The mesh's checks, before anything changes\n"
            "  ansible.builtin.import_playbook: vmesh.mesh.preflight\n")

    def env(self) -> dict:
        """No ANSIBLE_* of the caller's (the checkout's ansible.cfg included): only the user's own settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        # Nor a collection found on Python's path: only the one installed here may answer.
        return dict(env, ANSIBLE_CONFIG=str(self.dir / "ansible.cfg"), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
                    ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")

    def run(self, *argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=self.dir, env=self.env(), capture_output=True,
                              text=True, timeout=timeout)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", str(ROOT), "--output-path", str(dist)],
                          capture_output=True, text=True, timeout=300, cwd=dist)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = dist.glob("vmesh-mesh-*.tar.gz")
    return tarball


@pytest.fixture(scope="module")
def user(artifact, tmp_path_factory) -> UserRepo:
    base = tmp_path_factory.mktemp("user")
    user = UserRepo(base, base / "collections")
    # In the user's environment: with the checkout's ansible.cfg (make exports ANSIBLE_CONFIG), ansible-galaxy
    # would find the checkout's own link to the collection and install nothing.
    proc = user.run("ansible-galaxy", "collection", "install", str(artifact), "-p", str(user.collections),
                    timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (user.collections / "ansible_collections" / "vmesh" / "mesh" / "MANIFEST.json").is_file(), proc.stdout
    return user


def test_the_artifact_holds_the_collection_and_nothing_else(artifact):
    with tarfile.open(artifact) as tar:
        names = set(tar.getnames())
    manifest = json.loads(tarfile.open(artifact).extractfile("MANIFEST.json").read())
    assert manifest["collection_info"]["namespace"] == "vmesh" and manifest["collection_info"]["name"] == "mesh"
    for name in ("meta/runtime.yml", "plugins/doc_fragments/pki.py", "plugins/lookup/node_source.py",
                 "playbooks/site.yml", "playbooks/uninstall.yml", "requirements.txt"):
        assert name in names, name
    assert {f"plugins/modules/{m}.py" for m in MODULES} <= names
    assert {f"roles/{r}/tasks/main.yml" for r in ROLES} <= names
    # The compiler comes from pip; tests, demo material and the checkout's link are not shipped.
    for prefix in ("src/", "tests/", "examples/", "molecule/", ".collections", "scripts/", ".venv"):
        assert not any(n.startswith(prefix) for n in names), prefix
    assert not any(n.endswith((".pyc", "lab-hosts.yml", ".tar.gz")) or "__pycache__" in n for n in names)


def test_every_module_filter_lookup_and_role_is_documented(user):
    listed = {}
    for kind in ("module", "filter", "lookup", "role"):
        proc = user.run("ansible-doc", "-t", kind, "-l", "vmesh.mesh", "-j")
        assert proc.returncode == 0, proc.stderr
        listed[kind] = sorted(name.removeprefix("vmesh.mesh.") for name in json.loads(proc.stdout))
    assert listed == {"module": MODULES, "filter": FILTERS, "lookup": LOOKUPS, "role": ROLES}
    assert ROLES and "bookinfo" not in ROLES  # a demo app, under examples/, not a product role
    for kind, names in listed.items():
        for name in names:
            proc = user.run("ansible-doc", "-t", kind, "-j", f"vmesh.mesh.{name}")
            assert proc.returncode == 0 and "ERROR" not in proc.stderr, (kind, name, proc.stderr)
            (doc,) = json.loads(proc.stdout).values()
            if kind == "role":
                assert doc["entry_points"]["main"]["short_description"], name
                assert str(user.collections) in doc["path"], name
            else:
                assert doc["doc"]["short_description"], (kind, name)
                # found in the installed collection, not in the checkout
                assert doc["doc"]["filename"].startswith(str(user.collections)), (kind, name, doc["doc"]["filename"])


def test_every_playbook_is_addressed_by_fqcn(user):
    for playbook in PLAYBOOKS:
        proc = user.run("ansible-playbook", "--syntax-check", f"vmesh.mesh.{playbook}")
        assert proc.returncode == 0, (playbook, proc.stdout + proc.stderr)


def test_a_user_playbook_runs_the_installed_preflight(user):
    (user.dir / "inventory" / "mesh" / "web.yaml").write_text(VIRTUAL_SERVICE)
    proc = user.run("ansible-playbook", "checks.yml", "-e", "preflight_check_prerequisites=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed=0" in proc.stdout and "web-1" in proc.stdout


def test_a_user_mistake_is_named_through_the_installed_collection(user):
    (user.dir / "inventory" / "mesh" / "web.yaml").write_text(BAD_VIRTUAL_SERVICE)
    proc = user.run("ansible-playbook", "checks.yml", "-e", "preflight_check_prerequisites=false")
    assert proc.returncode != 0
    assert "mesh/web.yaml: VirtualService/web: spec.http[0].timeout: invalid duration 'fast'" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
