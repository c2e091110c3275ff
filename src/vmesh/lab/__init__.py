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

The package, bottom to top: ``podman`` (one runner for every command, containers, networks), ``inventory``
(the lab's name, hosts, addresses and lab-hosts.yml), ``image`` (the test VM images), ``vms`` (starting VMs,
SSH) and ``commands`` (``vmesh lab`` itself).
"""

from __future__ import annotations

from vmesh.lab.commands import build_parser, main
from vmesh.lab.image import IMAGE, MINIMAL_IMAGE
from vmesh.lab.inventory import (
    LAB_HOSTS_FILE, _ignore_lab_hosts_env, assign_ips, assign_ips6, check_lab_hosts_apply, find_cache_dir,
    hosts_from_inventory, inventory_dir, lab_hosts_path, lab_name, mac_address, read_inventory, render_lab_hosts,
)
from vmesh.lab.podman import LabError, container_name
from vmesh.lab.vms import ssh_argv

__all__ = [
    "IMAGE", "LAB_HOSTS_FILE", "MINIMAL_IMAGE", "LabError", "_ignore_lab_hosts_env", "assign_ips", "assign_ips6",
    "build_parser", "check_lab_hosts_apply", "container_name", "find_cache_dir", "hosts_from_inventory",
    "inventory_dir", "lab_hosts_path", "lab_name", "mac_address", "main", "read_inventory", "render_lab_hosts",
    "ssh_argv",
]
