"""The lab and its inventory: the lab's name, its hosts and addresses, and the lab-hosts.yml it writes."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
import tempfile
from pathlib import Path
import yaml

from vmesh.lab.podman import LabError, run, parse_subnet


ADMIN_USER = "vmesh-admin"


FIRST_ADDRESS = 10


LAB_HOSTS_FILE = "lab-hosts.yml"


KEY_FILE = "id_ed25519"


# Appended to Ansible's own ssh_args: lab VMs get new host keys whenever they are recreated.
ANSIBLE_SSH_COMMON_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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


def _ansible_inventory_cmd() -> str:
    """ansible-inventory of the running environment (the venv vmesh is installed in), else from PATH."""
    beside = Path(sys.executable).parent / "ansible-inventory"
    return str(beside) if beside.exists() else "ansible-inventory"


def _ansible_inventory_list(sources: list[Path], env: dict[str, str] | None = None) -> dict:
    argv = [_ansible_inventory_cmd()]
    for source in sources:
        argv += ["-i", str(source)]
    result = run([*argv, "--list"], env=env, timeout=120)
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
    result = run([cmd, "dump", "--format", "json"], timeout=120)
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


def write_atomically(path: Path, text: str) -> None:
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

