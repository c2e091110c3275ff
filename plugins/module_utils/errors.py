# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""The one base of the errors the host-side helpers raise (files, PEM, the certificate policy, certificates).

Each layer raises its own subclass, with a one-line message that names the file or the field; the Ansible modules
and the programs that run on the VMs (the renewal agent, the CA server) catch :class:`HostError` at their edge and
turn it into ``fail_json`` or a journal line. Standard library only: shipped to the VMs (vmesh.mesh.node_source).
"""

from __future__ import annotations


class HostError(Exception):
    """Base of every error of plugins/module_utils that runs on a host; the message is one line for a human."""
