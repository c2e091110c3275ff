"""Podman for the lab: one runner for every command, the lab's containers and networks, and its errors."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


CONTAINER_PREFIX = "vmesh-lab-"


LABEL_LAB = "vmesh.lab"


LABEL_HOST = "vmesh.lab.host"


LABEL_NETWORK = "vmesh.lab.network"


DEFAULT_NETWORK = "vmesh-lab"


DEFAULT_SUBNET = "10.213.0.0/24"


class LabError(Exception):
    """A lab operation failed; main() prints the message on one line, without a traceback."""


def container_name(host: str) -> str:
    return CONTAINER_PREFIX + host


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(subnet)
    except ValueError as e:
        raise LabError(f"subnet {subnet!r}: {e}") from e
    if not isinstance(network, ipaddress.IPv4Network):
        raise LabError(f"subnet {subnet}: only IPv4 subnets are supported")
    return network


def run(
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
        raise LabError(f"{_describe(argv)} failed: {last_line(result)}")
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


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def podman(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return run(["podman", "--runtime", "runc", *args], **kwargs)


def say(message: str) -> None:
    print(message, flush=True)


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root: rootful podman, so that this machine reaches the VMs' addresses")


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

