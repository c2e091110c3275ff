"""The preflight playbook's prerequisite check on this machine, in a network namespace of its own: a missing
prerequisite is named, and nothing runs past it."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from harness.netmesh_fixtures import requires_netns
from harness.preflight import run_preflight


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
