# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""The redirect into the sidecar, as one step: the rules (iptables.py's :func:`reconcile`) and the file the boot-time
helper applies them again from. ``ensure`` takes an AnsibleModule (or vmesh.mesh.converge's step in its place) and
returns the module's result; the ``vmesh.mesh.redirect`` module and vmesh.mesh.converge call it.
"""

from __future__ import annotations

import os
import stat
import tempfile

from ansible_collections.vmesh.mesh.plugins.module_utils.iptables import CONFIG_KEYS, DEFAULT_EXCLUDE_INBOUND_PORTS, ALL
from ansible_collections.vmesh.mesh.plugins.module_utils.iptables import FILTER6, Iptables, RedirectConfig, RedirectError, reconcile
from ansible_collections.vmesh.mesh.plugins.module_utils.iptables import ipv6_enabled

CONFIG_MODE = 0o644


def argument_spec():
    return dict(
        state=dict(type="str", default="present", choices=["present", "absent"]),
        proxy_uid=dict(type="int", default=1337),
        proxy_gid=dict(type="int"),
        inbound_capture_port=dict(type="int", default=15006),
        outbound_capture_port=dict(type="int", default=15001),
        exclude_inbound_ports=dict(type="list", elements="int", default=list(DEFAULT_EXCLUDE_INBOUND_PORTS)),
        include_inbound_ports=dict(type="raw", default=ALL),
        exclude_outbound_ports=dict(type="list", elements="int", default=[]),
        exclude_outbound_cidrs=dict(type="list", elements="str", default=[]),
        exclude_outbound_endpoints=dict(type="list", elements="str", default=[]),
        include_outbound_cidrs=dict(type="raw", default=ALL),
        ssh_port=dict(type="int", default=22),
        config_path=dict(type="path", default="/etc/vmesh/redirect.json"),
    )


def _read_config_file(path):
    """(bytes, mode) of the config file, or (None, None) if it does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read(), stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise RedirectError("config_path: %s: %s" % (path, exc.strerror)) from None


def _write_config_file(module, path, content):
    """Temp file in the same directory, then atomic_move: the boot unit never sees half a file."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".redirect-", suffix=".json.tmp", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, CONFIG_MODE)
    except OSError as exc:
        raise RedirectError("config_path: %s: %s" % (path, exc.strerror)) from None
    module.atomic_move(tmp, path)
    try:
        # atomic_move copies an existing file's mode and owner onto the new one; ours are explicit.
        os.chmod(path, CONFIG_MODE)
        if os.geteuid() == 0:
            os.chown(path, 0, 0)
    except OSError as exc:
        raise RedirectError("config_path: %s: %s" % (path, exc.strerror)) from None


def ensure(module):
    """Decide (plan rules and config file), then act unless in check mode. Raises RedirectError."""
    params = module.params
    present = params["state"] == "present"
    path = params["config_path"]
    # Validation (including the SSH lock-out check) happens here, before anything is read or changed.
    config = RedirectConfig.from_params({key: params[key] for key in CONFIG_KEYS}) if present else None

    old_content, old_mode = _read_config_file(path)
    if present:
        new_content = config.to_json().encode("utf-8")
        config_changed = old_content != new_content or old_mode != CONFIG_MODE
    else:
        config_changed = old_content is not None

    def run(argv, data=None):
        # rc is checked by module_utils/iptables.py, which raises RedirectError with the command's stderr.
        return module.run_command(argv, data=data, binary_data=True, environ_update={"LC_ALL": "C"},
                                  check_rc=False)

    def binary(name):
        return module.get_bin_path(name, required=True, opt_dirs=["/usr/sbin", "/sbin"])

    iptables = Iptables(run=run, save=binary("iptables-save"), restore=binary("iptables-restore"))
    iptables6 = None
    if ipv6_enabled():
        iptables6 = Iptables(run=run, save=binary("ip6tables-save"), restore=binary("ip6tables-restore"),
                             family=FILTER6)
    result = reconcile(config, iptables, check_mode=module.check_mode, iptables6=iptables6)

    if config_changed and not module.check_mode:
        if present:
            _write_config_file(module, path, new_content)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise RedirectError("config_path: %s: %s" % (path, exc.strerror)) from None

    return dict(
        changed=result.changed or config_changed,
        config_changed=config_changed,
        rules=result.nat.after.lines(),
        rules6=result.guard6.after.lines() if result.guard6 is not None else [],
        diff=result.diff,
    )
