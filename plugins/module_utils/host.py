# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""The host's commands, safely: the one subprocess runner of the collection's host-side code.

Users: certs.py (openssl) and iptables.py (iptables-save, iptables-restore), and through them the Ansible modules,
the renewal agent, the CA server and the boot-time iptables helper. Standard library only: shipped to the VMs
(vmesh.mesh.node_source).

Commands run with an argv list (never a shell), ``LC_ALL=C`` and a deadline; :func:`run` returns (rc, stdout,
stderr) and leaves the exit code to its caller. It raises :class:`CommandError` when the command cannot be run or
does not finish.
"""

from __future__ import annotations

import os
import subprocess

from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError

#: A command that takes longer than this is given up (iptables-restore waits 10 s for the xtables lock).
COMMAND_TIMEOUT = 60


class CommandError(HostError):
    """A command could not be run or did not finish in time."""


# --- commands -------------------------------------------------------------------------------------------------------


def run(argv, data=None, timeout=COMMAND_TIMEOUT, shown=None):
    """(rc, stdout, stderr) of ``argv`` (a list; no shell) with LC_ALL=C, stdin ``data`` (str), within ``timeout``
    seconds. The exit code is not checked. Raises :class:`CommandError` when the program cannot be run or does not
    finish; that message shows the first ``shown`` words of ``argv`` (None: all of them)."""
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, env=env, check=False,
                              timeout=timeout)
    except OSError as exc:
        raise CommandError("cannot run %s: %s" % (argv[0], exc.strerror or exc)) from None
    except subprocess.TimeoutExpired:
        words = argv if shown is None else argv[:shown]
        raise CommandError("%s did not finish within %d s" % (" ".join(words), timeout)) from None
    return proc.returncode, proc.stdout, proc.stderr
