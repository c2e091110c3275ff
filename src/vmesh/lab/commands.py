"""`vmesh lab` and its commands: image, up, down, status, restart, ssh."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vmesh.lab.podman import (
    DEFAULT_NETWORK, DEFAULT_SUBNET, LabError, require_root, container_addresses, container_name,
    ensure_network, list_containers, planned_subnet, podman, remove_containers, remove_network_if_unused, say,
)
from vmesh.lab.inventory import (
    KEY_FILE, write_atomically, assign_ips, assign_ips6, check_lab_hosts_apply, find_cache_dir, lab_hosts_path,
    lab_name, read_inventory, render_lab_hosts,
)
from vmesh.lab.image import DEFAULT_MIRROR, FULL, IMAGE, MINIMAL, MINIMAL_IMAGE, MINIMAL_PACKAGES, image_id, build_image
from vmesh.lab.vms import systemd_state, authorize_key, ensure_key, ssh_argv, start_vm, wait_ready


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
    require_root()
    started = time.monotonic()
    inventory: Path = args.inventory
    lab = lab_name(inventory)
    hosts = read_inventory(inventory)
    flavour = MINIMAL if args.minimal else FULL
    if image_id(flavour.image) is None:
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
    write_atomically(target, render_lab_hosts(lab, args.network, ips, key_file, ips6))
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
    require_root()
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
    require_root()
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
        systemd = systemd_state(name) if container and container.state == "running" else "-"
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
    require_root()
    key_file = _existing_key(args.cache_dir)
    _lab_vms(args.inventory, args.hosts)
    names = [container_name(h) for h in args.hosts]
    say(f"restarting {' '.join(names)}")
    podman("restart", *names, timeout=120)
    say(f"waiting for systemd and SSH on {len(names)} VM(s)")
    wait_ready(_lab_vms(args.inventory, args.hosts), key_file)
    say(f"restarted {' '.join(args.hosts)}")


def cmd_ssh(args: argparse.Namespace) -> None:
    require_root()
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
