# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""A sidecar's compiled config on its VM, converged in one module call: the Envoy config directory (validated,
staged, switched make-before-break: envoy_files.py), the Gateway certificates given on the controller, and the
service names in the hosts file.

Users: the ``vmesh.mesh.envoy_config`` module (the config directory alone) and ``vmesh.mesh.sidecar_config``
(all three). Standard library and the collection's host.py and envoy_files.py only: shipped to the VMs. Each part
decides first (what changes, the diff) and writes only outside check mode; failures raise :class:`HostError`
subclasses, a one-line message that names the path.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import stat
import tempfile

from ansible_collections.vmesh.mesh.plugins.module_utils import host, host_files
from ansible_collections.vmesh.mesh.plugins.module_utils.envoy_files import ConfigDirError, Envoy, kind, locked
from ansible_collections.vmesh.mesh.plugins.module_utils.envoy_files import plan as plan_push, push, read_current
from ansible_collections.vmesh.mesh.plugins.module_utils.envoy_static import BundleError, bundle
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError

#: How long a push waits for another one to finish, beyond that one's own waits on Envoy.
LOCK_TIMEOUT = 60
#: The argument spec of the config directory's options, shared by the envoy_config and sidecar_config modules
#: (documented in the doc fragment vmesh.mesh.config_dir).
CONFIG_DIR_ARGS = dict(
    dest=dict(type="path", required=True),
    files=dict(type="dict", required=True),
    envoy=dict(type="path", required=True),
    bootstrap=dict(type="str", default="envoy.json"),
    mode=dict(type="raw", default="0644"),
    reload_timeout=dict(type="float", default=30),
)
#: The hosts file's block, as ansible.builtin.blockinfile wrote it before (so a host set up then is adopted).
HOSTS_MARKER = "# %s vmesh services (managed by Ansible; removed by playbooks/uninstall.yml)"
#: A Gateway credential's files: the name in the module's input, the file on the host and its mode.
CREDENTIAL_FILES = (("cert", "tls.crt", 0o644), ("key", "tls.key", 0o640), ("ca", "ca.crt", 0o644))
#: What a credential folder expected on the host (not given on the controller) must hold.
CREDENTIAL_NEEDED = ("tls.crt", "tls.key")
#: A credentialName as a folder name: one path component, no leading dot.
CREDENTIAL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")


class SidecarError(HostError):
    """A part of the sidecar's config cannot be converged; the message names the path or the input."""


# --- the Envoy config directory -------------------------------------------------------------------------------


def validate(run_command, envoy, files, bootstrap, dest):
    """Raise ConfigDirError unless ``envoy --mode validate`` accepts the static equivalent of ``files``, which
    must read their files from ``dest``. ``run_command(argv)`` returns (rc, stdout, stderr)."""
    try:
        validation = bundle(files, bootstrap, dest)
    except BundleError as exc:
        raise ConfigDirError("the new config is not whole; the running config is unchanged: %s" % exc) from None
    folder = tempfile.mkdtemp(prefix="vmesh-validate-")
    try:
        check = os.path.join(folder, "validate.json")
        with open(check, "w", encoding="utf-8") as fh:
            fh.write(validation)
        rc, out, err = run_command([envoy, "--mode", "validate", "-c", check, "-l", "critical",
                                    "--use-dynamic-base-id"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if rc != 0:
        raise ConfigDirError("envoy --mode validate refused the new config; the running config is unchanged:\n"
                             + (out + err).strip().replace(check, "<new config>"))


def config_dir_of(module):
    """:func:`config_dir` with the options of CONFIG_DIR_ARGS, check mode, diff, warnings and commands of the
    AnsibleModule ``module``."""
    p = module.params
    return config_dir(p["dest"], p["files"], p["envoy"], p["bootstrap"], p["mode"], p["reload_timeout"],
                      check_mode=module.check_mode, diff=module._diff, warn=module.warn,
                      run_command=lambda argv: module.run_command(argv, environ_update={"LC_ALL": "C"}))


def restart_needed(current, todo, bootstrap):
    """Whether Envoy reads the change only when it starts: its bootstrap, or a secret's file it already read
    (vmesh.compile.envoy_types.secret_source)."""
    return bootstrap in todo.changed or any(
        kind(name, bootstrap) == "sds" and name in current.files for name in todo.changed)


def config_dir(dest, files, envoy, bootstrap, mode, reload_timeout, run_command, warn, check_mode=False,
               diff=False):
    """Make the config directory ``dest`` hold exactly ``files`` (name -> text); see the envoy_config module's
    documentation. Returns its result: changed, changed_files, removed_files, bootstrap_changed, migrated, steps,
    version, previous_version, envoy_confirmed, and with ``diff`` a list of per-file diffs. ``run_command(argv)``
    returns (rc, stdout, stderr); ``warn(text)`` reports a warning."""
    dest = os.path.abspath(dest)
    files = {str(k): str(v) for k, v in files.items()}
    try:
        mode = int(str(mode), 8)
    except ValueError:
        raise ConfigDirError("mode %r: expected an octal mode such as 0644" % mode) from None
    # one push at a time, from reading what is in force to cleaning up (several swaps, each confirmed)
    with locked(dest, LOCK_TIMEOUT + 4 * reload_timeout):
        current = read_current(dest)
        todo = plan_push(current, files, bootstrap, mode)
        result = dict(changed=todo.changed_any, changed_files=todo.changed, removed_files=todo.removed,
                      bootstrap_changed=restart_needed(current, todo, bootstrap), migrated=todo.adopt,
                      steps=[s.label for s in todo.steps], version=current.version,
                      previous_version=current.previous, envoy_confirmed=False)
        if diff:
            result["diff"] = [{"before_header": os.path.join(dest, n), "after_header": os.path.join(dest, n),
                               "before": current.files.get(n, ""), "after": files.get(n, "")}
                              for n in todo.changed + todo.removed]
        if not todo.changed_any or check_mode:
            if todo.steps:
                result["version"] = ""
            return result
        if todo.steps:  # the config in force changes (not only its layout)
            validate(run_command, envoy, files, bootstrap, dest)

        def envoy_for(in_force):
            text = in_force.get(bootstrap)
            return Envoy.running_from(os.path.join(dest, bootstrap), text) if text else None

        outcome = push(dest, current, todo, mode, reload_timeout, envoy_for)
        for warning in outcome.warnings:
            warn(warning)
        result.update(version=outcome.version, previous_version=outcome.previous, envoy_confirmed=outcome.waited)
        return result


# --- the hosts file ---------------------------------------------------------------------------------------------


def hosts_text(before, lines):
    """``before`` (the hosts file's text) with vmesh's block holding ``lines``: the block replaced where it is,
    added at the end where there is none, removed (markers too) when ``lines`` is empty."""
    begin, end = HOSTS_MARKER % "BEGIN", HOSTS_MARKER % "END"
    kept = before.splitlines()
    if begin in kept and end in kept[kept.index(begin):]:
        start = kept.index(begin)
        stop = kept.index(end, start)
        head, tail = kept[:start], kept[stop + 1:]
    else:
        head, tail = kept, []
    block = [begin] + list(lines) + [end] if lines else []
    after = head + block + tail
    return "\n".join(after) + "\n" if after else ""


def _replace(path, data, st):
    """Write ``data`` (text) to the regular file ``path`` (lstat ``st``) with its owner and mode: a new file renamed
    over it, or, where the file is a mount point (/etc/hosts in LXC, podman and other system containers, where the
    rename fails with EBUSY), in place through a descriptor opened without following a link."""
    try:
        host.write_file(path, data.encode("utf-8"), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        return
    except host.FileError:
        if os.stat(os.path.dirname(path)).st_dev == st.st_dev:
            raise
    # a bind mount: a file of another filesystem than its directory's
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SidecarError("%s: %s" % (path, exc.strerror)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SidecarError("%s is not a regular file; refused" % path)
        os.ftruncate(fd, 0)
        view = memoryview(data.encode("utf-8"))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        raise SidecarError("%s: %s" % (path, exc.strerror)) from None
    finally:
        os.close(fd)


def hosts_file(path, lines, check_mode=False):
    """Converge vmesh's block of service names in the hosts file ``path`` (root's, in a directory only root can
    write; never through a link). Returns (changed, before, after)."""
    path = os.path.abspath(path)
    host.check_parents(path)
    data, st = host.read_regular(path, missing_ok=True, ours=True)
    if data is None:
        raise SidecarError("%s: there is no hosts file; refused (vmesh adds its block to the system's own)" % path)
    try:
        before = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SidecarError("%s is not UTF-8 text; refused" % path) from None
    lines = [str(line) for line in lines]
    if any("\n" in line or "\r" in line for line in lines):
        raise SidecarError("%s: a hosts entry holds a line break; refused" % path)
    after = hosts_text(before, lines)
    if after == before:
        return False, before, after
    if not check_mode:
        _replace(path, after, st)
    return True, before, after


# --- the Gateway certificates ------------------------------------------------------------------------------------


def _group_id(group, check_mode):
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if check_mode:  # the proxy's group comes with the install, which check mode has not made
            return None
        raise SidecarError("group %s does not exist: install the proxy first (vmesh.mesh.site)" % group) from None


def credentials(directory, given, expected, group, check_mode=False):
    """Converge the Gateway certificate folders ``directory/<name>`` given on the controller (``given``: name ->
    {cert, key, ca} texts), root's and readable by ``group``; check that each folder in ``expected`` (names
    whose files are put there by other means) holds a certificate and a key. Checks everything before writing
    anything. Returns the paths changed."""
    directory = os.path.abspath(directory)
    for name in list(given) + list(expected):
        if not CREDENTIAL_RE.match(str(name)):
            raise SidecarError("credential %r: not a folder name (letters, digits, '.', '_', '-'); refused" % name)
    for name, parts in given.items():
        if not isinstance(parts, dict) or set(parts) - {"cert", "key", "ca"}:
            raise SidecarError("credential %s: expected {cert, key, ca} texts" % name)
    host.check_parents(os.path.join(directory, "x"))
    missing = []
    for name in expected:
        for filename in CREDENTIAL_NEEDED:
            path = os.path.join(directory, name, filename)
            if host.lstat_or_none(path) is None:
                missing.append(path)
    if missing:
        raise SidecarError("a Gateway's credentialName needs these files on the host (or give them in "
                           "vmesh_credentials): %s" % ", ".join(missing))
    gid = _group_id(group, check_mode) if given else None
    uid = host.owner()
    changed = []
    if given and host.converge_dir(directory, 0o755, uid, 0, check_mode):
        changed.append(directory)
    for name in sorted(given):
        folder = os.path.join(directory, name)
        if host.converge_dir(folder, 0o750, uid, gid, check_mode):
            changed.append(folder)
        for part, filename, mode in CREDENTIAL_FILES:
            if part not in given[name]:
                continue
            path = os.path.join(folder, filename)
            wanted = str(given[name][part]).encode("utf-8")
            if (gid is None and check_mode) or host.converge_file(path, wanted, mode, uid, gid, check_mode)[0]:
                changed.append(path)
    return changed


def argument_spec():
    """The options of the vmesh.mesh.sidecar_config module (documented there), as its action plugin passes them."""
    return dict(
        CONFIG_DIR_ARGS,
        hosts_file=dict(type="path", default="/etc/hosts"),
        hosts_entries=dict(type="list", elements="str", default=[]),
        credential_texts=dict(type="dict", default={}, no_log=True),
        credentials_expected=dict(type="list", elements="str", default=[]),
        credentials_dir=dict(type="path", default="/etc/vmesh/credentials"),
        credentials_group=dict(type="str", default="vmesh-proxy"),
        service=dict(type="str", default=""),
    )


def converge(module):
    """The module's work on its validated ``module.params``: checks, the certificates, the config, the hosts file,
    then the service."""
    p = module.params
    check = module.check_mode
    # checks first: the hosts file is read (not written) and the expected certificates looked for before anything;
    # the hosts file is read again when it is written, last, so an edit made meanwhile is kept
    hosts_file(p["hosts_file"], p["hosts_entries"], check_mode=True)
    written = credentials(p["credentials_dir"], p["credential_texts"], p["credentials_expected"],
                          p["credentials_group"], check_mode=check)
    result = config_dir_of(module)
    hosts_changed, before, after = hosts_file(p["hosts_file"], p["hosts_entries"], check_mode=check)
    started = []
    if p["service"]:
        started = host_files.services([{"name": p["service"], "enabled": True, "state": "started"}], [], False,
                                      check, run=host_files.runner_of(module))
    result.update(changed=result["changed"] or hosts_changed or bool(written) or bool(started),
                  hosts_changed=hosts_changed, credentials_changed=written, service_changed=started)
    if module._diff:
        result["diff"] = result["diff"] + [
            {"before_header": path, "after_header": path, "before": "", "after": "(written; content not shown)\n"}
            for path in written]
        if hosts_changed:
            result["diff"].append({"before_header": p["hosts_file"], "after_header": p["hosts_file"],
                                   "before": before, "after": after})
    return result
