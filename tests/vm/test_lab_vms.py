"""The lab with real test VMs (root and podman): up, ssh, Ansible through lab-hosts.yml, restart, down."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import BIN
from vmesh import lab

# A network and subnet of their own, so that a developer's lab on vmesh-lab is left alone.
NETWORK = "vmesh-labtest"
SUBNET = "10.213.99.0/24"
HOSTS = ("labtest-a", "labtest-b")


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, check=True)


def _ip_of(container: str) -> str:
    return _podman(
        "container", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container
    ).stdout.strip()


def _lab_names() -> list[str]:
    names = _podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    return [n for n in names if n.startswith("vmesh-lab-labtest-")]


@pytest.fixture
def image():
    if subprocess.run(["podman", "image", "exists", lab.IMAGE]).returncode != 0:
        if not (shutil.which("debootstrap") or Path("/usr/sbin/debootstrap").exists()):
            pytest.skip(f"no image {lab.IMAGE} and no debootstrap to build it")
        assert lab.main(["image"]) == 0
    return lab.IMAGE


@pytest.mark.vm
@pytest.mark.skipif(not shutil.which("podman") or os.geteuid() != 0, reason="needs root and podman")
def test_lab_up_restart_down(tmp_path, image):
    inv = tmp_path / "labtest"
    inv.mkdir()
    # Listed out of order on purpose: addresses follow the sorted names.
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n    app:\n      hosts:\n        labtest-b:\n        labtest-a:\n"
    )
    common = ["--cache-dir", str(tmp_path / "cache")]

    def ssh(host: str, command: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "vmesh.lab", *common, "ssh", "--inventory", str(inv), host, command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    try:
        assert lab.main([*common, "up", "--inventory", str(inv), "--network", NETWORK, "--subnet", SUBNET]) == 0
        lab_hosts = yaml.safe_load((inv / "lab-hosts.yml").read_text())
        ips = {host: v["ansible_host"] for host, v in lab_hosts["all"]["hosts"].items()}
        assert ips == {"labtest-a": "10.213.99.10", "labtest-b": "10.213.99.11"}
        key = Path(lab_hosts["all"]["vars"]["ansible_ssh_private_key_file"])
        assert key == (tmp_path / "cache" / "id_ed25519").resolve()
        assert key.stat().st_mode & 0o777 == 0o600

        for host in HOSTS:
            result = ssh(host, "sudo -n id -u && hostname")
            assert result.returncode == 0, result.stderr
            assert result.stdout.split() == ["0", host]
            assert result.stderr == ""  # no "sudo: unable to resolve host"
        for source, target in (("labtest-a", "labtest-b"), ("labtest-b", "labtest-a")):
            code = f"import socket; socket.create_connection(({ips[target]!r}, 22), timeout=5).close()"
            result = ssh(source, "python3 -c " + shlex.quote(code))
            assert result.returncode == 0, f"{source} -> {target}: {result.stderr}"

        # Ansible itself finds the VMs through lab-hosts.yml and becomes root there.
        # Output to a file, not a pipe: ansible.cfg's ControlPersist ssh masters keep a pipe open for 60 s.
        ansible = BIN / "ansible"
        with (tmp_path / "ansible.out").open("w+") as out:
            result = subprocess.run(
                [str(ansible), "all", "-i", str(inv), "-o", "-m", "ansible.builtin.command", "-a", "id -u"],
                stdout=out, stderr=subprocess.STDOUT, text=True, timeout=120,
                env={**os.environ, "ANSIBLE_DEPRECATION_WARNINGS": "false"},
            )  # fmt: skip
            out.seek(0)
            output = out.read()
        assert result.returncode == 0, output
        for host in HOSTS:
            assert f"{host} | CHANGED | rc=0 | (stdout) 0" in output, output

        started = _podman("container", "inspect", "--format", "{{.State.StartedAt}}", "vmesh-lab-labtest-b").stdout
        assert lab.main([*common, "restart", "--inventory", str(inv), "labtest-b"]) == 0
        after = _podman("container", "inspect", "--format", "{{.State.StartedAt}}", "vmesh-lab-labtest-b").stdout
        assert after != started
        assert _ip_of("vmesh-lab-labtest-b") == ips["labtest-b"]
        mac = _podman("exec", "vmesh-lab-labtest-b", "cat", "/sys/class/net/eth0/address").stdout.strip()
        assert mac == lab.mac_address(ips["labtest-b"])
        result = ssh("labtest-b", "sudo -n true")
        assert result.returncode == 0, result.stderr
    finally:
        assert lab.main([*common, "down", "--inventory", str(inv), "--network", NETWORK]) == 0

    assert _lab_names() == []
    assert not (inv / "lab-hosts.yml").exists()
    assert subprocess.run(["podman", "network", "exists", NETWORK]).returncode != 0
    assert lab.main([*common, "down", "--inventory", str(inv), "--network", NETWORK]) == 0  # idempotent
