"""The test VM images: Debian bookworm made with debootstrap, imported into podman."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vmesh.lab.podman import LabError, last_line, require_root, run, podman, say
from vmesh.lab.inventory import ADMIN_USER


IMAGE = "localhost/vmesh-testvm:bookworm"


SUITE = "bookworm"


DEFAULT_MIRROR = "http://deb.debian.org/debian"


# libnss-myhostname: a VM resolves its own host name (sudo warns "unable to resolve host" otherwise). Real
# Debian VMs get that from a "127.0.1.1 <name>" line in /etc/hosts; here /etc/hosts is left to vmesh's block.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "libnss-myhostname",
    "python3",
    "openssh-server",
    "iptables",
    "iproute2",
    "sudo",
    "ca-certificates",
    "curl",
)


# The minimal image: exactly the prerequisites docs/tasks/own-vms.md lists for a user's own VMs (and sshd), nothing else;
# its VMs keep podman's bind-mounted /etc/hosts, as system containers (LXC, podman) used as VMs have it.
MINIMAL_IMAGE = "localhost/vmesh-testvm-minimal:bookworm"


MINIMAL_PACKAGES = ("systemd", "systemd-sysv", "python3", "openssh-server", "iptables", "openssl", "sudo")


@dataclass(frozen=True)
class Flavour:
    """A kind of lab VM: its image, the packages debootstrap puts in it, and how /etc/hosts is provided."""

    image: str
    packages: tuple[str, ...]
    # True: /etc/hosts is the image's own plain file (`--no-hosts`); False: podman bind-mounts its own, which
    # cannot be renamed over (vmesh then writes its block in place).
    plain_hosts_file: bool
    summary: str


FULL = Flavour(IMAGE, PACKAGES, True, "systemd, sshd, python3, iptables, sudo, curl")


MINIMAL = Flavour(MINIMAL_IMAGE, MINIMAL_PACKAGES, False, "only the prerequisites of docs/tasks/own-vms.md")


SSHD_CONFIG = """\
# vmesh test VM: key logins only, as on a cloud VM.
PasswordAuthentication no
KbdInteractiveAuthentication no
"""


# Host keys are made on first boot, so that VMs from one image do not share them (and survive a restart).
SSH_HOST_KEYS_DROPIN = """\
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""


ETC_HOSTS = """\
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
"""


CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C"}


def image_id(image: str) -> str | None:
    result = podman("image", "inspect", "--format", "{{.Id}}", image, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def _debootstrap_cmd() -> str:
    for candidate in (shutil.which("debootstrap"), "/usr/sbin/debootstrap"):
        if candidate and Path(candidate).exists():
            return candidate
    raise LabError("debootstrap not found; install it with `apt-get install debootstrap`")


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (a failed debootstrap may leave /proc mounted in the rootfs)."""
    root_text = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])  # \040 is a space
        if point == root_text or point.startswith(root_text + "/"):
            points.append(point)
    return sorted(points, reverse=True)


def _remove_rootfs(root: Path) -> None:
    """Remove a temporary rootfs, never following a mount into the host's /proc or /sys."""
    for point in _mounts_under(root):
        run(["umount", "--lazy", point], check=False)
    if _mounts_under(root):
        raise LabError(f"{root}: still has mounts; unmount them and remove it by hand")
    shutil.rmtree(root, ignore_errors=False)


def customise_rootfs(root: Path) -> None:
    """Turn a debootstrapped rootfs into a test VM image (root-owned files, run as root)."""

    def chroot(*argv: str) -> None:
        run(["chroot", str(root), *argv], env=CHROOT_ENV)

    def write(relative: str, text: str, mode: int = 0o644) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    # An empty machine-id: systemd makes a fresh one at first boot, so VMs from one image differ.
    write("etc/machine-id", "", 0o444)
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # podman provides the host name and resolv.conf; /etc/hosts is this plain file under `--no-hosts`, else
    # podman's bind mount.
    (root / "etc/hostname").unlink(missing_ok=True)
    write("etc/hosts", ETC_HOSTS)

    # The admin user Ansible logs in as; '*': no password, but not a locked account.
    chroot("useradd", "--create-home", "--shell", "/bin/bash", "--user-group", "--password", "*", ADMIN_USER)
    write(f"etc/sudoers.d/{ADMIN_USER}", f"{ADMIN_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440)
    chroot("visudo", "--check", "--quiet", "--file", f"/etc/sudoers.d/{ADMIN_USER}")
    uid, gid = _passwd_ids(root, ADMIN_USER)
    ssh_dir = root / "home" / ADMIN_USER / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, uid, gid)

    # sshd: enabled at boot, own host keys per VM, keys only.
    for old_key in (root / "etc/ssh").glob("ssh_host_*"):
        old_key.unlink()
    write("etc/systemd/system/ssh.service.d/vmesh-host-keys.conf", SSH_HOST_KEYS_DROPIN)
    write("etc/ssh/sshd_config.d/vmesh-lab.conf", SSHD_CONFIG)
    chroot("systemctl", "enable", "ssh.service")

    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise LabError(f"user {user} missing from the image's /etc/passwd")


def build_image(cache_dir: Path, rebuild: bool, mirror: str, flavour: Flavour = FULL) -> None:
    require_root()
    image = flavour.image
    old_id = image_id(image)
    if old_id and not rebuild:
        say(f"image {image} exists (use --rebuild to build it again)")
        return
    debootstrap = _debootstrap_cmd()
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = cache_dir / "image-build.log"
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir))
    try:
        say(f"debootstrap {SUITE} ({mirror}) into {root}; about a minute, log in {log}")
        with log.open("w") as out:
            argv = [debootstrap, "--variant=minbase", "--include=" + ",".join(flavour.packages), SUITE, str(root),
                    mirror]
            out.write("$ " + shlex.join(argv) + "\n")
            out.flush()
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "LC_ALL": "C"})
        if result.returncode != 0:
            raise LabError(f"debootstrap failed (exit status {result.returncode}); see {log}")
        say("customising the root file system (admin user, sshd, machine-id)")
        customise_rootfs(root)
        say(f"importing into podman as {image}")
        _import(root, flavour)
    finally:
        say(f"removing {root}")
        _remove_rootfs(root)
    if old_id and old_id != image_id(image):
        # The replaced image goes if no container uses it any more.
        podman("image", "rm", old_id, check=False)
    say(f"built {image} in {time.monotonic() - started:.0f} s")


def _import(root: Path, flavour: Flavour) -> None:
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        result = subprocess.run(
            ["podman", "import", "--quiet",
             "--change", 'CMD ["/sbin/init"]',
             "--change", "STOPSIGNAL SIGRTMIN+3",
             "--change", f"LABEL vmesh.testvm={SUITE}",
             "--message", f"vmesh test VM: Debian {SUITE}, {flavour.summary}, and {ADMIN_USER}",
             "-", flavour.image],
            stdin=tar.stdout, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar_err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
        tar.wait()
    if tar.returncode != 0:
        tail = tar_err.strip().splitlines()
        raise LabError(f"tar of the root file system failed: {tail[-1] if tail else tar.returncode}")
    if result.returncode != 0:
        raise LabError(f"podman import failed: {last_line(result)}")

