"""The lab's VMs: started from the image on the lab's network, reached over SSH with the lab's key."""

from __future__ import annotations

import time
from pathlib import Path

from vmesh.lab.podman import LABEL_HOST, LABEL_LAB, LabError, last_line, run, container_name, podman, say
from vmesh.lab.inventory import ADMIN_USER, KEY_FILE, mac_address
from vmesh.lab.image import FULL, Flavour


WAIT_SECONDS = 60.0


SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
)  # fmt: skip


# Run options of every lab VM (after `podman --runtime runc run -d`); name, network and labels are added.
VM_RUN_OPTIONS = (
    "--systemd=always",
    "--ulimit", "nofile=20000:20000",
    "--ulimit", "nproc=4096:4096",
    "--cap-add", "NET_ADMIN",
    "--cap-add", "NET_RAW",
)  # fmt: skip


def ssh_argv(key_file: Path, ip: str, command: list[str]) -> list[str]:
    """ssh to a lab VM as the admin user with the lab key; ``command`` is passed to ssh as given."""
    return ["ssh", *SSH_OPTIONS, "-o", "IdentitiesOnly=yes", "-i", str(key_file), "-l", ADMIN_USER, ip, *command]


def ensure_key(cache_dir: Path) -> Path:
    """The lab's SSH key, generated once into the cache dir (private key mode 0600)."""
    key = cache_dir / KEY_FILE
    if not key.exists():
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmesh-lab", "-f", key])
        say(f"generated the lab's SSH key {key}")
    key.chmod(0o600)
    if not key.with_name(KEY_FILE + ".pub").exists():
        raise LabError(f"{key}.pub is missing; remove {key} to generate a new key pair")
    return key.resolve()


def start_vm(lab: str, host: str, ip: str, network: str, flavour: Flavour = FULL, ip6: str | None = None) -> None:
    podman(
        "run", "--detach", *VM_RUN_OPTIONS,
        *(["--ip6", ip6] if ip6 else []),
        *(["--no-hosts"] if flavour.plain_hosts_file else []),
        "--hostname", host,
        "--name", container_name(host),
        "--label", f"{LABEL_LAB}={lab}",
        "--label", f"{LABEL_HOST}={host}",
        "--network", network,
        "--ip", ip,
        "--mac-address", mac_address(ip),
        flavour.image, "/sbin/init",
        timeout=120,
    )  # fmt: skip


def authorize_key(host: str, public_key: str) -> None:
    """Install the lab key for the admin user inside the container; it persists across restarts.

    Runs as the admin user, so the file gets the right owner, and 0600 through the umask.
    """
    script = 'umask 077 && mkdir -p "$HOME/.ssh" && cat > "$HOME/.ssh/authorized_keys"'
    podman("exec", "--interactive", "--user", ADMIN_USER, container_name(host), "sh", "-c", script, input=public_key)


def systemd_state(name: str) -> str:
    result = podman("exec", name, "systemctl", "is-system-running", check=False, timeout=30)
    return result.stdout.strip() or last_line(result)


def wait_ready(targets: dict[str, str], key_file: Path, timeout: float = WAIT_SECONDS) -> None:
    """Wait until each host's systemd is up and its sshd lets the admin user in; ``targets``: host -> IP."""
    deadline = time.monotonic() + timeout
    pending = {host: "systemd: not asked yet" for host in targets}
    while True:
        for host in sorted(pending):
            name = container_name(host)
            if pending[host].startswith("systemd"):
                state = systemd_state(name)
                if state == "degraded":
                    failed = podman("exec", name, "systemctl", "--failed", "--plain", "--no-legend", check=False)
                    units = " ".join(line.split()[0] for line in failed.stdout.splitlines() if line.split())
                    raise LabError(f"{host}: systemd is degraded, failed units: {units or '?'}")
                if state != "running":
                    if podman("container", "inspect", "--format", "{{.State.Running}}", name).stdout.strip() != "true":
                        raise LabError(f"{host}: container {name} stopped; see `podman logs {name}`")
                    pending[host] = f"systemd: {state}"
                    continue
                pending[host] = "ssh: not asked yet"
            result = run(ssh_argv(key_file, targets[host], ["true"]), check=False, timeout=15)
            if result.returncode == 0:
                del pending[host]
            else:
                pending[host] = f"ssh: {last_line(result)}"
        if not pending:
            return
        if time.monotonic() > deadline:
            waiting = "; ".join(f"{host} ({why})" for host, why in sorted(pending.items()))
            raise LabError(f"gave up after {timeout:.0f} s waiting for {waiting}")
        time.sleep(0.5)

