"""The lab: local test VMs for an inventory, one podman container per host, booting systemd, reached over SSH.

Each inventory host ``H`` becomes a rootful podman container ``vmesh-lab-H`` (hostname ``H``) running the
``localhost/vmesh-testvm:bookworm`` image: Debian bookworm with systemd as PID 1, sshd, python3, iptables and
sudo, and an admin user ``vmesh-admin`` with passwordless sudo -- what a freshly provisioned cloud VM looks
like. Ansible reaches the containers over SSH exactly as it reaches real VMs; nothing in the playbooks knows.

``vmesh lab up --inventory examples/bookinfo/inventory`` starts the VMs and writes ``lab-hosts.yml`` there
(``ansible_host`` per host, the lab's user, key and ``become``). Ansible merges that file with the user's own
inventory files in the directory, so ``ansible-playbook`` then targets the lab without further flags.
``vmesh lab down`` removes the containers and the file again.

Naming, and what two labs may share:

* The lab's name is the name of the inventory directory (``bookinfo``; for an inventory file, the directory
  that holds it). Containers carry the label ``vmesh.lab=<lab>``, and ``up``/``down`` act on that label, so two
  labs can coexist -- on *different* networks (``--network``/``--subnet``), since addresses start at .10 on
  every network and ``up`` refuses addresses that another container on the network holds.
* Container names are ``vmesh-lab-<host>`` whatever the lab: host names are assumed unique on one machine.
  ``up`` replaces a container of that name even if another lab started it.
* Addresses are assigned by sorted host name from .10 of the subnet, so a restarted container, or the same
  inventory brought up again, keeps its address. Adding or removing hosts may shift the others on the next
  ``up``; ``up`` rewrites ``lab-hosts.yml`` accordingly.
* The SSH key is ``<cache dir>/id_ed25519``, generated once. The cache dir defaults to ``.cache/lab`` in the
  checkout you run from (the nearest parent directory holding ``pyproject.toml``), so run all ``vmesh lab``
  commands of one lab from the same checkout, or pass the same ``--cache-dir``.

Everything runs as root with rootful podman: the host must reach the containers' addresses directly, as
Ansible does. ``crun`` fails on the machines we test on, so every podman call uses ``--runtime runc``.

This module is plain Python (no ``import ansible``); it reads inventories through the ``ansible-inventory``
command of the running Python environment.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

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
# The minimal image: exactly the prerequisites the README lists for a user's own VMs (and sshd), nothing else;
# its VMs keep podman's bind-mounted /etc/hosts, as system containers (LXC, podman) used as VMs have it.
MINIMAL_IMAGE = "localhost/vmesh-testvm-minimal:bookworm"
MINIMAL_PACKAGES = ("systemd", "systemd-sysv", "python3", "openssh-server", "iptables", "openssl", "sudo")
ADMIN_USER = "vmesh-admin"

CONTAINER_PREFIX = "vmesh-lab-"
LABEL_LAB = "vmesh.lab"
LABEL_HOST = "vmesh.lab.host"
LABEL_NETWORK = "vmesh.lab.network"
DEFAULT_NETWORK = "vmesh-lab"
DEFAULT_SUBNET = "10.213.0.0/24"
FIRST_ADDRESS = 10
LAB_HOSTS_FILE = "lab-hosts.yml"
KEY_FILE = "id_ed25519"
WAIT_SECONDS = 60.0

SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
)  # fmt: skip
# Appended to Ansible's own ssh_args: lab VMs get new host keys whenever they are recreated.
ANSIBLE_SSH_COMMON_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"

# Run options of every lab VM (after `podman --runtime runc run -d`); name, network and labels are added.
VM_RUN_OPTIONS = (
    "--systemd=always",
    "--ulimit", "nofile=20000:20000",
    "--ulimit", "nproc=4096:4096",
    "--cap-add", "NET_ADMIN",
    "--cap-add", "NET_RAW",
)  # fmt: skip


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
MINIMAL = Flavour(MINIMAL_IMAGE, MINIMAL_PACKAGES, False, "only the README's prerequisites")

HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class LabError(Exception):
    """A lab operation failed; main() prints the message on one line, without a traceback."""


# ---------------------------------------------------------------------------------------------------------
# Pure parts: no processes, no files (unit-tested).


def find_cache_dir(cwd: Path) -> Path:
    """``<checkout>/.cache/lab`` for the nearest parent of ``cwd`` holding pyproject.toml, else ~/.cache."""
    for directory in (cwd, *cwd.parents):
        if (directory / "pyproject.toml").is_file():
            return directory / ".cache" / "lab"
    return Path.home() / ".cache" / "vmesh" / "lab"


def inventory_dir(inventory: Path) -> Path:
    """The directory an inventory lives in: itself, or the directory holding an inventory file.

    A path that no longer exists (``down`` after the inventory was deleted) is taken for a directory unless
    it has a file suffix, so that a deleted ``examples/own-vms`` still names the lab ``own-vms``.
    """
    if inventory.is_dir() or (not inventory.exists() and not inventory.suffix):
        return inventory
    return inventory.parent


def lab_name(inventory: Path) -> str:
    """The lab's name: the name of the inventory directory (``examples/own-vms`` -> ``own-vms``), or of the
    directory above it when it is called ``inventory`` (``examples/bookinfo/inventory`` -> ``bookinfo``)."""
    folder = inventory_dir(inventory).resolve()
    if folder.name == "inventory":
        folder = folder.parent
    return folder.name or "root"


def lab_hosts_path(inventory: Path) -> Path:
    return inventory_dir(inventory) / LAB_HOSTS_FILE


def container_name(host: str) -> str:
    return CONTAINER_PREFIX + host


def hosts_from_inventory(data: dict) -> list[str]:
    """All hosts of an ``ansible-inventory --list`` document, sorted.

    Hosts appear under ``_meta.hostvars`` (if they have variables) and in the ``hosts`` of their groups.
    """
    if not isinstance(data, dict):
        raise LabError("ansible-inventory --list: expected a JSON object")
    hosts: set[str] = set((data.get("_meta") or {}).get("hostvars") or {})
    for group, body in data.items():
        if group != "_meta" and isinstance(body, dict):
            hosts.update(body.get("hosts") or [])
    for host in hosts:
        if not HOST_NAME.match(host):
            raise LabError(f"host {host!r}: not usable as a container and host name (letters, digits, '.-_')")
    return sorted(hosts)


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(subnet)
    except ValueError as e:
        raise LabError(f"subnet {subnet!r}: {e}") from e
    if not isinstance(network, ipaddress.IPv4Network):
        raise LabError(f"subnet {subnet}: only IPv4 subnets are supported")
    return network


def assign_ips(hosts: list[str], subnet: str) -> dict[str, str]:
    """Fixed addresses: hosts sorted by name get .10, .11, ... of ``subnet``, whatever order they came in."""
    network = parse_subnet(subnet)
    ordered = sorted(set(hosts))
    last = network.num_addresses - 2  # the broadcast address is not usable
    if FIRST_ADDRESS + len(ordered) - 1 > last:
        raise LabError(
            f"subnet {subnet}: room for {max(0, last - FIRST_ADDRESS + 1)} hosts from .{FIRST_ADDRESS}, "
            f"the inventory has {len(ordered)}"
        )
    return {host: str(network.network_address + FIRST_ADDRESS + i) for i, host in enumerate(ordered)}


def assign_ips6(hosts: list[str], subnet6: str) -> dict[str, str]:
    """IPv6 addresses in ``subnet6`` by the same rule as :func:`assign_ips`: sorted names from ::a (10)."""
    try:
        network = ipaddress.ip_network(subnet6)
    except ValueError as e:
        raise LabError(f"subnet6 {subnet6!r}: {e}") from e
    if not isinstance(network, ipaddress.IPv6Network) or network.prefixlen > 120:
        raise LabError(f"subnet6 {subnet6}: an IPv6 network of /120 or larger is needed")
    return {host: str(network.network_address + FIRST_ADDRESS + i) for i, host in enumerate(sorted(set(hosts)))}


def mac_address(ip: str) -> str:
    """A fixed MAC address for a lab VM's IP (locally administered, 02:76:6d = "vm", then the IP's last 3 bytes).

    A VM keeps its MAC across reboots, and so must a lab VM: with a new MAC each start, this machine's ARP
    cache keeps sending to the old one for up to 45 s after a restart and SSH times out meanwhile.
    """
    last = ipaddress.IPv4Address(ip).packed[1:]
    return ":".join(f"{b:02x}" for b in (0x02, 0x76, 0x6D, *last))


def render_lab_hosts(lab: str, network: str, ips: dict[str, str], key_file: Path,
                     ips6: dict[str, str] | None = None) -> str:
    """The text of lab-hosts.yml: where each host of the lab is and how to log in (deterministic).

    With IPv6 on the lab's network each host also gets ``lab_ipv6_address`` (for tests; vmesh does not read it).
    """
    hosts = {host: {"ansible_host": ips[host]} for host in sorted(ips)}
    for host, ip6 in (ips6 or {}).items():
        hosts[host]["lab_ipv6_address"] = ip6
    document = {
        "all": {
            "hosts": hosts,
            "vars": {
                "ansible_user": ADMIN_USER,
                "ansible_ssh_private_key_file": str(key_file),
                "ansible_become": True,
                "ansible_ssh_common_args": ANSIBLE_SSH_COMMON_ARGS,
            },
        }
    }
    header = (
        "# Generated by `vmesh lab up`; removed by `vmesh lab down`. Do not edit.\n"
        f"# Lab {lab!r}: the hosts of this inventory as local test VMs (podman network {network}).\n"
    )
    return header + yaml.safe_dump(document, sort_keys=True, default_flow_style=False)


def ssh_argv(key_file: Path, ip: str, command: list[str]) -> list[str]:
    """ssh to a lab VM as the admin user with the lab key; ``command`` is passed to ssh as given."""
    return ["ssh", *SSH_OPTIONS, "-o", "IdentitiesOnly=yes", "-i", str(key_file), "-l", ADMIN_USER, ip, *command]


# ---------------------------------------------------------------------------------------------------------
# Processes.


def _run(
    argv: list[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (captured, C.UTF-8 locale); with ``check``, a failure becomes a one-line LabError."""
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", **(env or {})}  # Ansible insists on UTF-8
    try:
        result = subprocess.run(
            [str(a) for a in argv], input=input, capture_output=True, text=True, timeout=timeout, env=full_env
        )
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]}: command not found") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{_describe(argv)}: no answer after {timeout:.0f} s") from e
    if check and result.returncode != 0:
        raise LabError(f"{_describe(argv)} failed: {_last_line(result)}")
    return result


def _describe(argv: list[str]) -> str:
    """A short name for a command in error messages: `podman run`, `ssh`, ..."""
    program = Path(str(argv[0])).name
    if program != "podman":
        return program
    words = [str(a) for a in argv[3:] if not str(a).startswith("-")]  # after `podman --runtime runc`
    if words and words[0] in ("container", "image", "network"):
        return " ".join(["podman", *words[:2]])
    return " ".join(["podman", *words[:1]])


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def podman(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return _run(["podman", "--runtime", "runc", *args], **kwargs)


def say(message: str) -> None:
    print(message, flush=True)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root: rootful podman, so that this machine reaches the VMs' addresses")


def _ansible_inventory_cmd() -> str:
    """ansible-inventory of the running environment (the venv vmesh is installed in), else from PATH."""
    beside = Path(sys.executable).parent / "ansible-inventory"
    return str(beside) if beside.exists() else "ansible-inventory"


def _ansible_inventory_list(sources: list[Path], env: dict[str, str] | None = None) -> dict:
    argv = [_ansible_inventory_cmd()]
    for source in sources:
        argv += ["-i", str(source)]
    result = _run([*argv, "--list"], env=env, timeout=120)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as e:
        raise LabError(f"ansible-inventory --list: not JSON: {e}") from e


def _ignore_lab_hosts_env() -> dict[str, str]:
    """Environment for ansible-inventory to skip lab-hosts.yml in an inventory directory.

    The user's own inventory decides which hosts the lab has, not a lab-hosts.yml left by an earlier ``up``.
    Setting the ignore patterns replaces the configured ones, so read those first and add ours.
    """
    cmd = str(Path(_ansible_inventory_cmd()).with_name("ansible-config"))
    if not Path(cmd).exists():
        cmd = "ansible-config"
    result = _run([cmd, "dump", "--format", "json"], timeout=120)
    try:
        settings = json.loads(result.stdout)
    except json.JSONDecodeError as e:
        raise LabError(f"ansible-config dump: not JSON: {e}") from e
    patterns: list[str] = []
    for setting in settings if isinstance(settings, list) else []:
        if isinstance(setting, dict) and setting.get("name") == "INVENTORY_IGNORE_PATTERNS":
            patterns = [str(p) for p in setting.get("value") or []]
    patterns.append("^" + re.escape(LAB_HOSTS_FILE) + "$")
    return {"ANSIBLE_INVENTORY_IGNORE_REGEX": ",".join(patterns)}


def read_inventory(inventory: Path) -> list[str]:
    """The hosts of the user's inventory (file or directory), ignoring a generated lab-hosts.yml."""
    if not inventory.exists():
        raise LabError(f"{inventory}: no such inventory file or directory")
    env = None
    if inventory.is_dir() and (inventory / LAB_HOSTS_FILE).exists():
        env = _ignore_lab_hosts_env()
    hosts = hosts_from_inventory(_ansible_inventory_list([inventory], env=env))
    if not hosts:
        raise LabError(f"{inventory}: the inventory lists no hosts")
    return hosts


# ---------------------------------------------------------------------------------------------------------
# Containers and networks.


@dataclass
class Container:
    name: str
    state: str  # podman's: running, exited, created, ...
    lab: str | None
    host: str | None


def list_containers() -> dict[str, Container]:
    """Containers that are the lab's business: named vmesh-lab-* or labelled vmesh.lab, by name."""
    result = podman("ps", "--all", "--format", "json")
    found = {}
    for entry in json.loads(result.stdout or "[]"):
        labels = entry.get("Labels") or {}
        for name in entry.get("Names") or []:
            if name.startswith(CONTAINER_PREFIX) or LABEL_LAB in labels:
                found[name] = Container(name, entry.get("State", "?"), labels.get(LABEL_LAB), labels.get(LABEL_HOST))
    return found


def container_addresses(names: list[str]) -> dict[str, dict[str, str]]:
    """{container: {network: IPv4 address}} for existing containers."""
    if not names:
        return {}
    result = podman("container", "inspect", *names)
    addresses = {}
    for entry in json.loads(result.stdout or "[]"):
        networks = (entry.get("NetworkSettings") or {}).get("Networks") or {}
        addresses[entry["Name"].lstrip("/")] = {
            net: info.get("IPAddress") for net, info in networks.items() if info.get("IPAddress")
        }
    return addresses


def remove_containers(names: list[str]) -> None:
    """Remove containers at once (-t 0: a lab VM is disposable, no need for a clean shutdown)."""
    if names:
        podman("rm", "--force", "--ignore", "--time", "0", *sorted(names), timeout=120)


def network_subnet(name: str) -> str | None:
    """The IPv4 subnet of an existing podman network, or None if there is no such network."""
    if podman("network", "exists", name, check=False).returncode != 0:
        return None
    info = json.loads(podman("network", "inspect", name).stdout)[0]
    for subnet in info.get("subnets") or []:
        if ipaddress.ip_network(subnet["subnet"]).version == 4:
            return subnet["subnet"]
    raise LabError(f"podman network {name} has no IPv4 subnet; choose another one with --network")


def planned_subnet(name: str, subnet: str | None) -> str:
    """The subnet the lab will use: the existing network's, which must match ``--subnet``, or the requested one."""
    existing = network_subnet(name)
    if existing is None:
        return str(parse_subnet(subnet or DEFAULT_SUBNET))
    if subnet is not None and parse_subnet(subnet) != ipaddress.ip_network(existing):
        raise LabError(
            f"podman network {name} exists with subnet {existing}, not {subnet}; "
            f"pick another --network or run `vmesh lab down` on the labs using it"
        )
    return existing


def ensure_network(name: str, subnet: str, subnet6: str | None = None) -> None:
    """Create the network if missing, labelled so that `down` may remove it again. With ``subnet6`` the network
    is dual-stack, and an existing one must have that IPv6 subnet."""
    if podman("network", "exists", name, check=False).returncode != 0:
        extra = ["--subnet", subnet6] if subnet6 else []
        podman("network", "create", "--subnet", subnet, *extra, "--label", f"{LABEL_NETWORK}=true", name)
        say(f"created podman network {name} ({subnet}{', ' + subnet6 if subnet6 else ''})")
        return
    if subnet6:
        info = json.loads(podman("network", "inspect", name).stdout)[0]
        have = {ipaddress.ip_network(s["subnet"]) for s in info.get("subnets") or []}
        if ipaddress.ip_network(subnet6) not in have:
            raise LabError(f"podman network {name} exists without IPv6 subnet {subnet6}; "
                           f"run `vmesh lab down` on the labs using it first")


def remove_network_if_unused(name: str) -> None:
    """Remove a network the lab created, once no container uses it. Other networks are left alone."""
    if podman("network", "exists", name, check=False).returncode != 0:
        return
    info = json.loads(podman("network", "inspect", name).stdout)[0]
    if (info.get("labels") or {}).get(LABEL_NETWORK) != "true":
        return
    users = podman("ps", "--all", "--quiet", "--filter", f"network={name}").stdout.split()
    if users:
        say(f"keeping podman network {name}: {len(users)} other container(s) use it")
        return
    podman("network", "rm", name)
    say(f"removed podman network {name}")


def ensure_key(cache_dir: Path) -> Path:
    """The lab's SSH key, generated once into the cache dir (private key mode 0600)."""
    key = cache_dir / KEY_FILE
    if not key.exists():
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmesh-lab", "-f", key])
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


def _systemd_state(name: str) -> str:
    result = podman("exec", name, "systemctl", "is-system-running", check=False, timeout=30)
    return result.stdout.strip() or _last_line(result)


def wait_ready(targets: dict[str, str], key_file: Path, timeout: float = WAIT_SECONDS) -> None:
    """Wait until each host's systemd is up and its sshd lets the admin user in; ``targets``: host -> IP."""
    deadline = time.monotonic() + timeout
    pending = {host: "systemd: not asked yet" for host in targets}
    while True:
        for host in sorted(pending):
            name = container_name(host)
            if pending[host].startswith("systemd"):
                state = _systemd_state(name)
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
            result = _run(ssh_argv(key_file, targets[host], ["true"]), check=False, timeout=15)
            if result.returncode == 0:
                del pending[host]
            else:
                pending[host] = f"ssh: {_last_line(result)}"
        if not pending:
            return
        if time.monotonic() > deadline:
            waiting = "; ".join(f"{host} ({why})" for host, why in sorted(pending.items()))
            raise LabError(f"gave up after {timeout:.0f} s waiting for {waiting}")
        time.sleep(0.5)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_lab_hosts_apply(inventory: Path, ips: dict[str, str], key_file: Path) -> None:
    """Read the inventory back as Ansible will and check that lab-hosts.yml's settings win for every host.

    Files in an inventory directory load in alphabetical order and host_vars/ or group_vars/ beat inventory
    files, so a user's ``ansible_host`` or ``ansible_user`` could still point Ansible at the real VMs.
    """
    sources = [inventory] if inventory.is_dir() else [inventory, lab_hosts_path(inventory)]
    hostvars = (_ansible_inventory_list(sources).get("_meta") or {}).get("hostvars") or {}
    for host, ip in sorted(ips.items()):
        wanted = {"ansible_host": ip, "ansible_user": ADMIN_USER, "ansible_ssh_private_key_file": str(key_file)}
        for var, value in wanted.items():
            actual = (hostvars.get(host) or {}).get(var)
            if actual != value:
                raise LabError(
                    f"{host}: {var} is {actual!r} for Ansible, not the lab's {value!r}; "
                    f"another inventory file, host_vars/ or group_vars/ overrides {LAB_HOSTS_FILE}"
                )


# ---------------------------------------------------------------------------------------------------------
# The image.

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


def _image_id(image: str) -> str | None:
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
        _run(["umount", "--lazy", point], check=False)
    if _mounts_under(root):
        raise LabError(f"{root}: still has mounts; unmount them and remove it by hand")
    shutil.rmtree(root, ignore_errors=False)


def customise_rootfs(root: Path) -> None:
    """Turn a debootstrapped rootfs into a test VM image (root-owned files, run as root)."""

    def chroot(*argv: str) -> None:
        _run(["chroot", str(root), *argv], env=CHROOT_ENV)

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
    _require_root()
    image = flavour.image
    old_id = _image_id(image)
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
    if old_id and old_id != _image_id(image):
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
        raise LabError(f"podman import failed: {_last_line(result)}")


# ---------------------------------------------------------------------------------------------------------
# Subcommands.


def _lab_vms(inventory: Path, hosts: list[str]) -> dict[str, str]:
    """{host: IP} of this lab's running VMs for ``hosts``; an error names any host without one.

    Looks at the containers' labels only: quicker than reading the inventory, and exactly what `up` made.
    """
    lab = lab_name(inventory)
    existing = list_containers()
    names = [container_name(h) for h in hosts]
    missing = [h for h, n in zip(hosts, names) if n not in existing or existing[n].lab != lab]
    if missing:
        raise LabError(f"no VM for {', '.join(missing)} in lab {lab}; run `vmesh lab up --inventory {inventory}`")
    addresses = container_addresses(names)
    return {h: next(iter(addresses.get(n, {}).values()), "") for h, n in zip(hosts, names)}


def cmd_image(args: argparse.Namespace) -> None:
    build_image(args.cache_dir, args.rebuild, args.mirror, MINIMAL if args.minimal else FULL)


def cmd_up(args: argparse.Namespace) -> None:
    _require_root()
    started = time.monotonic()
    inventory: Path = args.inventory
    lab = lab_name(inventory)
    hosts = read_inventory(inventory)
    flavour = MINIMAL if args.minimal else FULL
    if _image_id(flavour.image) is None:
        build = "vmesh lab image" + (" --minimal" if args.minimal else "")
        raise LabError(f"no image {flavour.image}; build it with `{build}`")
    # Mistakes in the options stop us before anything is removed.
    subnet = planned_subnet(args.network, args.subnet)
    ips = assign_ips(hosts, subnet)
    key_file = ensure_key(args.cache_dir)
    public_key = key_file.with_name(KEY_FILE + ".pub").read_text()

    existing = list_containers()
    stale = [c.name for c in existing.values() if c.name in {container_name(h) for h in hosts} or c.lab == lab]
    if stale:
        say(f"removing old lab VMs: {' '.join(sorted(stale))}")
        remove_containers(stale)
    lab_hosts_path(inventory).unlink(missing_ok=True)

    ips6 = assign_ips6(hosts, args.subnet6) if args.subnet6 else {}
    ensure_network(args.network, subnet, args.subnet6)
    _check_addresses_free(args.network, ips)
    for host in hosts:
        say(f"starting {container_name(host)} at {ips[host]}{' and ' + ips6[host] if ips6 else ''}")
        start_vm(lab, host, ips[host], args.network, flavour, ips6.get(host))
        authorize_key(host, public_key)
    say(f"waiting for systemd and SSH on {len(hosts)} VM(s)")
    wait_ready(ips, key_file)

    target = lab_hosts_path(inventory)
    _write_atomically(target, render_lab_hosts(lab, args.network, ips, key_file, ips6))
    check_lab_hosts_apply(inventory, ips, key_file)
    say(f"lab {lab}: {len(hosts)} VM(s) up in {time.monotonic() - started:.0f} s; wrote {target}")
    if not inventory.is_dir():
        say(f"note: Ansible reads {target.name} with the inventory directory, or with `-i {inventory} -i {target}`")


def _check_addresses_free(network: str, ips: dict[str, str]) -> None:
    """Refuse addresses that a container of another lab holds on the same network."""
    users = podman("ps", "--all", "--format", "{{.Names}}", "--filter", f"network={network}").stdout.split()
    taken = {ip: name for name, nets in container_addresses(users).items() for ip in nets.values()}
    for host, ip in sorted(ips.items()):
        if ip in taken:
            raise LabError(
                f"{host}: address {ip} on network {network} is taken by container {taken[ip]}; "
                f"give this lab its own network with --network NAME --subnet CIDR"
            )


def cmd_down(args: argparse.Namespace) -> None:
    _require_root()
    inventory: Path = args.inventory
    lab = lab_name(inventory)
    try:
        names = {container_name(h) for h in read_inventory(inventory)}
    except LabError as e:
        say(f"warning: {e}; removing the lab's VMs by label only")
        names = set()
    existing = list_containers()
    doomed = sorted(c.name for c in existing.values() if c.name in names or c.lab == lab)
    networks = {args.network}
    for nets in container_addresses(doomed).values():
        networks.update(nets)
    if doomed:
        say(f"removing lab VMs: {' '.join(doomed)}")
        remove_containers(doomed)
    else:
        say(f"lab {lab}: no VMs to remove")
    target = lab_hosts_path(inventory)
    if target.exists():
        target.unlink()
        say(f"removed {target}")
    for network in sorted(networks):
        remove_network_if_unused(network)


def cmd_status(args: argparse.Namespace) -> None:
    _require_root()
    inventory: Path = args.inventory
    lab = lab_name(inventory)
    hosts = read_inventory(inventory)
    existing = list_containers()
    extra = sorted(c.host or c.name for c in existing.values() if c.lab == lab and c.host not in hosts)
    addresses = container_addresses([container_name(h) for h in hosts if container_name(h) in existing])
    rows = [("HOST", "CONTAINER", "IP", "STATE", "SYSTEMD")]
    for host in hosts:
        name = container_name(host)
        container = existing.get(name)
        state = container.state if container else "absent"
        if container and container.lab != lab:
            state += f" (lab {container.lab})"
        systemd = _systemd_state(name) if container and container.state == "running" else "-"
        ip = next(iter(addresses.get(name, {}).values()), "-")
        rows.append((host, name, ip, state, systemd))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        say("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if extra:
        say(f"not in the inventory any more (removed by `vmesh lab up`/`down`): {' '.join(extra)}")


def _existing_key(cache_dir: Path) -> Path:
    key_file = cache_dir.resolve() / KEY_FILE
    if not key_file.exists():
        raise LabError(f"no lab key {key_file}; run `vmesh lab up` from the same checkout or pass --cache-dir")
    return key_file


def cmd_restart(args: argparse.Namespace) -> None:
    _require_root()
    key_file = _existing_key(args.cache_dir)
    _lab_vms(args.inventory, args.hosts)
    names = [container_name(h) for h in args.hosts]
    say(f"restarting {' '.join(names)}")
    podman("restart", *names, timeout=120)
    say(f"waiting for systemd and SSH on {len(names)} VM(s)")
    wait_ready(_lab_vms(args.inventory, args.hosts), key_file)
    say(f"restarted {' '.join(args.hosts)}")


def cmd_ssh(args: argparse.Namespace) -> None:
    _require_root()
    key_file = _existing_key(args.cache_dir)
    ip = _lab_vms(args.inventory, [args.host])[args.host]
    if not ip:
        raise LabError(f"{args.host}: {container_name(args.host)} has no address; is it running?")
    argv = ssh_argv(key_file, ip, args.remote_command)
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        raise LabError(f"ssh: {e.strerror}") from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmesh lab", description="Local test VMs for an inventory: one podman container per host, over SSH."
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the lab keeps its SSH key and builds the image (default: .cache/lab of the checkout "
        "you are in, else ~/.cache/vmesh/lab)",
    )
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    def with_inventory(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("-i", "--inventory", type=Path, required=True, help="inventory directory or file")
        return sub

    image = commands.add_parser("image", help=f"build the test VM image {IMAGE} if missing")
    image.add_argument("--rebuild", action="store_true", help="build it even if it exists")
    image.add_argument("--mirror", default=DEFAULT_MIRROR, help=f"Debian mirror (default {DEFAULT_MIRROR})")
    image.add_argument(
        "--minimal",
        action="store_true",
        help=f"build {MINIMAL_IMAGE} instead: {MINIMAL.summary} ({', '.join(MINIMAL_PACKAGES)})",
    )
    image.set_defaults(func=cmd_image)

    up = with_inventory(commands.add_parser("up", help="(re)create one VM per inventory host, write lab-hosts.yml"))
    up.add_argument("--network", default=DEFAULT_NETWORK, help=f"podman network (default {DEFAULT_NETWORK})")
    up.add_argument("--subnet", default=None, help=f"its subnet if it is created (default {DEFAULT_SUBNET})")
    up.add_argument(
        "--minimal", action="store_true", help=f"VMs of {MINIMAL_IMAGE}, with podman's bind-mounted /etc/hosts"
    )
    up.add_argument(
        "--subnet6", default=None, help="also give the VMs IPv6 addresses in this subnet (a new dual-stack network)"
    )
    up.set_defaults(func=cmd_up)

    down = with_inventory(commands.add_parser("down", help="remove the VMs, lab-hosts.yml and the unused network"))
    down.add_argument("--network", default=DEFAULT_NETWORK, help="also remove this network if unused")
    down.set_defaults(func=cmd_down)

    status = with_inventory(commands.add_parser("status", help="show the VMs: host, container, IP, state"))
    status.set_defaults(func=cmd_status)

    restart = with_inventory(commands.add_parser("restart", help="reboot VMs (podman restart), wait for SSH"))
    restart.add_argument("hosts", nargs="+", metavar="HOST")
    restart.set_defaults(func=cmd_restart)

    ssh = with_inventory(commands.add_parser("ssh", help="ssh to a VM as the admin user with the lab key"))
    ssh.add_argument("host", metavar="HOST")
    ssh.add_argument(
        "remote_command", nargs=argparse.REMAINDER, metavar="CMD", help="command to run instead of a shell"
    )
    ssh.set_defaults(func=cmd_ssh)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cache_dir is None:
        args.cache_dir = find_cache_dir(Path.cwd())
    try:
        args.func(args)
    except LabError as e:
        print(f"vmesh lab {args.subcommand}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vmesh lab {args.subcommand}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
