"""The preflight playbook on the controller: a missing certificate, or no way to become root, is named, and
nothing runs past it. (A missing prerequisite, in a network namespace: tests/netns/test_preflight_prerequisites.py.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import ROOT
from harness.preflight import run_preflight


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


def test_gateway_certificates_expected_on_the_host_are_looked_for_there(tmp_path):
    """A credentialName not given in vmesh_credentials needs tls.crt and tls.key on the host: a missing one is
    named, and with both there the preflight passes (looked for as root: su, this machine has no sudo)."""
    folder = tmp_path / "credentials" / "shop-credential"
    folder.mkdir(parents=True)
    (folder / "tls.crt").write_text("x\n")
    as_root = ("-e", f"vmesh_credentials_dir={tmp_path / 'credentials'}", "-e", "ansible_become_method=su")
    proc = run_preflight(tmp_path / "one", {}, *as_root)
    assert proc.returncode != 0
    named = proc.stdout.split("a Gateway's credentialName needs these files on the host")[1].split("\n")[0]
    assert str(folder / "tls.key") in named and "tls.crt" not in named, proc.stdout
    (folder / "tls.key").write_text("x\n")
    proc = run_preflight(tmp_path / "two", {}, *as_root)
    assert proc.returncode == 0, proc.stdout + proc.stderr


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


def test_too_few_inotify_instances_for_the_hosts_config_are_named():
    """Envoy watches each file of its config with an inotify instance of its own: the check names a limit below
    what the host's config needs (the preflight passes twice its watched files, and a few more)."""
    script = ROOT / "roles" / "preflight" / "files" / "vmesh-prerequisites.sh"
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())

    # not as root: the script then leaves the host's iptables alone (as root it tries the capture's rules)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []

    def check(need: int) -> list[str]:
        out = subprocess.run([*nobody, "sh", str(script), "mesh", str(need)], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        return [line for line in out.splitlines() if "inotify" in line]

    assert check(limit + 1) == [
        f"missing\t-\tinotify instances: fs.inotify.max_user_instances is {limit} and this host's Envoy needs "
        f"{limit + 1} (one per file of its config, twice over during a hot restart): raise it (sysctl -w "
        f"fs.inotify.max_user_instances={limit + 1}, and a file in /etc/sysctl.d/ for the next boot), or narrow "
        "what the host sees with a Sidecar"]
    assert check(limit) == []
