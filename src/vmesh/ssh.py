"""Run vmesh's host programs (``vmesh.remote``) on mesh hosts over SSH, as Ansible would reach them.

A :class:`Target` is read from the inventory's connection variables (``ansible_host``, ``ansible_port``,
``ansible_user``, ``ansible_ssh_private_key_file``, ``ansible_become``); the host key is checked against
``~/.ssh/known_hosts`` unless Ansible is told not to (``ANSIBLE_HOST_KEY_CHECKING=False``, or
``StrictHostKeyChecking=no`` in ``ansible_ssh_common_args``/``ansible_ssh_extra_args``). The program goes in on
stdin of ``python3 -`` (through ``sudo -n`` with become, unless the user is root), its JSON comes back on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, Callable, Iterable, Mapping

from vmesh.errors import MeshError

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
MAX_PARALLEL = 16


@dataclasses.dataclass(frozen=True)
class Target:
    host: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    become: bool = False
    check_host_key: bool = True


def _false(value: Any) -> bool:
    return str(value).strip().lower() in ("false", "no", "0", "off")


def target(host: str, hostvars: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Target:
    """How Ansible reaches ``host``, from its variables."""
    args = " ".join(str(hostvars.get(k, "")) for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    unchecked = _false(environ.get("ANSIBLE_HOST_KEY_CHECKING", "true")) or \
        _false(hostvars.get("ansible_host_key_checking", True)) or "StrictHostKeyChecking=no" in args.replace(" ", "")
    key = hostvars.get("ansible_ssh_private_key_file") or hostvars.get("ansible_private_key_file")
    return Target(host=host, address=str(hostvars.get("ansible_host") or host),
                  port=int(hostvars.get("ansible_port") or 22), user=hostvars.get("ansible_user"),
                  key_file=os.path.expanduser(str(key)) if key else None,
                  become=str(hostvars.get("ansible_become", False)).lower() in ("true", "yes", "1"),
                  check_host_key=not unchecked)


def program(name: str) -> str:
    """The text of ``vmesh/remote/<name>.py``."""
    return resources.files("vmesh.remote").joinpath(f"{name}.py").read_text(encoding="utf-8")


def run(where: Target, script: str, argument: Any) -> Any:
    """Run ``script`` with ``python3 -`` on ``where`` with ``argument`` (JSON) as its one argument; its JSON output.
    Raises MeshError naming the host when it cannot be reached or the program fails."""
    import paramiko  # only the commands that reach hosts need it

    client = paramiko.SSHClient()
    if where.check_host_key:
        client.load_system_host_keys()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # kept in memory only, as Ansible would
    command = "python3 - " + shlex.quote(json.dumps(argument))
    if where.become and where.user not in (None, "root"):
        command = "sudo -n " + command
    try:
        client.connect(where.address, port=where.port, username=where.user, key_filename=where.key_file,
                       timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT, auth_timeout=CONNECT_TIMEOUT)
        stdin, stdout, stderr = client.exec_command(command, timeout=COMMAND_TIMEOUT)
        stdin.write(script)
        stdin.channel.shutdown_write()
        out = stdout.read()
        err = stderr.read()
        status = stdout.channel.recv_exit_status()
    except (paramiko.SSHException, OSError) as exc:
        raise MeshError(f"cannot reach {where.address}:{where.port} over SSH: {exc}", doc=f"host {where.host}") \
            from None
    finally:
        client.close()
    if status != 0:
        raise MeshError(f"the host program failed ({status}): {err.decode(errors='replace').strip()[-500:]}",
                        doc=f"host {where.host}")
    try:
        return json.loads(out)
    except ValueError:
        raise MeshError("the host program's output is not JSON", doc=f"host {where.host}") from None


def run_all(targets: Iterable[Target], call: Callable[[Target], Any]) -> dict[str, Any]:
    """``call(target)`` for every target, in parallel: {host: result, or the MeshError it raised}."""
    targets = list(targets)

    def one(where: Target) -> Any:
        try:
            return call(where)
        except MeshError as exc:
            return exc
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, len(targets)))) as pool:
        return dict(zip((t.host for t in targets), pool.map(one, targets)))
