# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""A vmesh program's files on its host, converged in one call (the module vmesh.mesh.host_files): its system user,
directories, files, leftovers of earlier versions, and systemd units.

Everything here belongs to root (host.owner()) and root's group; directories are checked and files written as
host.py does it (never through a link, atomically). Checks come first: every directory above a path, every entry
in the way and the user's ids are looked at before the first change, so a refusal leaves the host as it was.

A large file (the Envoy binary) is not passed in the module's arguments: it is named by its SHA-256 and size, and
the controller sends it only when the host's copy differs (:func:`files` returns it under ``needed``); the copy
sent is hashed while it is copied into place, and used only when that hash is the one expected.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import os
import pwd
import stat
import tempfile

from ansible_collections.vmesh.mesh.plugins.module_utils import host
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError

#: systemd reads unit files from here: a change under it needs a daemon-reload.
UNIT_DIR = "/etc/systemd/system/"
#: A file whose content is passed in the arguments is at most this large; larger ones go by checksum.
MAX_CONTENT_BYTES = host.MAX_FILE_BYTES
#: Diffs show text files up to this size.
MAX_DIFF_BYTES = 64 * 1024
#: Python's byte-code caches: left alone by a sweep (the interpreter rewrites them).
KEEP_NAMES = frozenset(["__pycache__"])
CHUNK = 1 << 20


class HostFilesError(HostError):
    """A file, directory or user cannot be converged as asked; the message names it."""


def _mode(value, what):
    try:
        mode = int(str(value), 8)
    except ValueError:
        raise HostFilesError("%s: mode %r is not an octal mode" % (what, value)) from None
    if not 0 <= mode <= 0o7777:
        raise HostFilesError("%s: mode %r is not a file mode" % (what, value))
    return mode


def _absolute(path, what):
    path = str(path)
    if not os.path.isabs(path) or os.path.normpath(path) != path.rstrip("/") or path == "/":
        raise HostFilesError("%s: %r is not a normalized absolute path below /" % (what, path))
    return path


# --- the system user ---------------------------------------------------------------------------------------------


def system_user(name, uid, comment, check_mode=False, run=host.run):
    """Whether the system user ``name`` with ``uid`` and its own group ``name`` with gid ``uid`` is (or would be)
    made. An existing user or group with another id is refused, never changed: files and iptables rules name the
    id, and changing it under a running proxy would open the capture."""
    try:
        group = grp.getgrnam(name)
    except KeyError:
        group = None
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        user = None
    if group is not None and group.gr_gid != uid:
        raise HostFilesError("group %s exists with gid %d, not %d; refused (change it or proxy_uid by hand)"
                             % (name, group.gr_gid, uid))
    if user is not None and (user.pw_uid, user.pw_gid) != (uid, uid):
        raise HostFilesError("user %s exists with uid %d and gid %d, not %d; refused (change it or proxy_uid by "
                             "hand)" % (name, user.pw_uid, user.pw_gid, uid))
    for taken, what in ((_name_of_gid(uid), "gid"), (_name_of_uid(uid), "uid")):
        if taken not in (None, name):
            raise HostFilesError("%s %d is taken by %s; refused (choose another proxy_uid)" % (what, uid, taken))
    if check_mode or (group and user):
        return group is None or user is None
    if group is None:
        _run(run, ["groupadd", "--system", "--gid", str(uid), name])
    if user is None:
        _run(run, ["useradd", "--system", "--uid", str(uid), "--gid", str(uid), "--shell", "/usr/sbin/nologin",
                   "--home-dir", "/nonexistent", "--no-create-home", "--comment", str(comment), name])
    return True


def _name_of_gid(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _name_of_uid(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _run(run, argv):
    rc, out, err = run(argv)
    if rc != 0:
        raise HostFilesError("%s failed (rc %d): %s" % (" ".join(argv), rc, (err or out).strip()))


# --- directories and files -----------------------------------------------------------------------------------------


def check(directories, files, absent):
    """Raise before anything changes when a path is not absolute and normal, a directory's parents could be changed
    by another user, or something other than a directory (or a regular file) is in the way."""
    for entry in directories:
        path = _absolute(entry["path"], "directory")
        _mode(entry.get("mode", "0755"), path)
        host.check_parents(path)
        st = host.lstat_or_none(path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise HostFilesError("%s is %s, not a directory; refused (remove it and run again)" % (path, host.kind(st)))
    for entry in files:
        path = _absolute(entry["dest"], "file")
        _mode(entry.get("mode", "0644"), path)
        if (entry.get("content") is None) == (entry.get("sha256") is None):
            raise HostFilesError("%s: give its content or its sha256 and size, not both" % path)
        host.check_parents(path)
        st = host.lstat_or_none(path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise HostFilesError("%s is %s, not a regular file; refused (remove it and run again)"
                                 % (path, host.kind(st)))
    for path in absent:
        host.check_parents(_absolute(path, "absent"))


def directories(entries, check_mode=False):
    """The directories made or fixed (root's, with each entry's mode), parents first."""
    uid = host.owner()
    changed = []
    for entry in sorted(entries, key=lambda e: e["path"].count("/")):
        if host.converge_dir(entry["path"], _mode(entry.get("mode", "0755"), entry["path"]), uid, 0, check_mode):
            changed.append(entry["path"])
    return changed


def content_of(entry):
    """The bytes an entry with ``content`` holds: text, or base64 with ``encoding: base64``."""
    if entry.get("encoding") == "base64":
        try:
            return base64.b64decode(entry["content"], validate=True)
        except ValueError:
            raise HostFilesError("%s: content is not base64" % entry["dest"]) from None
    return str(entry["content"]).encode("utf-8")


def sha256_stream(read):
    """(hex SHA-256, size) of what ``read(n)`` gives until it gives nothing: a file's content, read in chunks."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: read(CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_of(path):
    """(hex SHA-256, size) of the regular file ``path`` (never through a link), or (None, None) without one."""
    fd, _st = host.open_regular(path, missing_ok=True)
    if fd is None:
        return None, None
    try:
        return sha256_stream(lambda size: os.read(fd, size))
    except OSError as exc:
        raise HostFilesError("%s: %s" % (path, exc.strerror)) from None
    finally:
        os.close(fd)


def files(entries, staged=None, check_mode=False):
    """Converge each file; returns (changed, needed, diffs). An entry holds ``dest``, ``mode`` and either
    ``content`` or ``sha256`` and ``size``. A file given by checksum whose copy on the host differs is taken from
    ``staged[dest]`` (a file the controller sent) when there is one, else listed in ``needed`` and left alone."""
    staged = staged or {}
    uid = host.owner()
    changed, needed, diffs = [], [], []
    for entry in entries:
        path, mode = entry["dest"], _mode(entry.get("mode", "0644"), entry["dest"])
        if entry.get("content") is not None:
            data = content_of(entry)
            if len(data) > MAX_CONTENT_BYTES:
                raise HostFilesError("%s: content of %d bytes; larger files go by checksum" % (path, len(data)))
            was, before = host.converge_file(path, data, mode, uid, 0, check_mode, limit=MAX_CONTENT_BYTES)
            if was:
                changed.append(path)
                diffs.append(_diff(path, before, data))
            continue
        digest, size = sha256_of(path)
        if digest == entry["sha256"] and size == int(entry["size"]):
            if host.fix_attributes(path, mode, uid, 0) if not check_mode else _attributes_differ(path, mode, uid):
                changed.append(path)
            continue
        changed.append(path)
        diffs.append({"before_header": path, "after_header": path,
                      "before": "(sha256 %s)\n" % digest if digest else "", "after": "(sha256 %s)\n" % entry["sha256"]})
        if check_mode:
            continue
        if path not in staged:
            needed.append(path)
            continue
        _install_staged(staged[path], path, entry["sha256"], int(entry["size"]), mode, uid)
    return changed, needed, diffs


def _attributes_differ(path, mode, uid):
    st = os.lstat(path)
    return (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (mode, uid, 0)


def _install_staged(source, path, sha256, size, mode, uid):
    """Copy the file the controller sent (``source``) to ``path`` atomically, hashing what is copied: it takes the
    name only when that hash and size are the ones expected, so the copy that lands is the one checked."""
    fd, st = host.open_regular(source)
    directory = os.path.dirname(path)
    try:
        out, tmp = tempfile.mkstemp(prefix=".vmesh-", suffix=".tmp", dir=directory)
    except OSError as exc:
        os.close(fd)
        raise HostFilesError("%s: %s" % (path, exc.strerror)) from None
    digest, copied = hashlib.sha256(), 0
    try:
        with os.fdopen(out, "wb") as handle:
            os.fchown(handle.fileno(), uid, 0)
            os.fchmod(handle.fileno(), mode)
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                copied += len(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        if (digest.hexdigest(), copied) != (sha256, size):
            raise HostFilesError("%s: the copy sent has sha256 %s and %d bytes, not %s and %d; refused"
                                 % (path, digest.hexdigest(), copied, sha256, size))
        os.rename(tmp, path)
    except OSError as exc:
        raise HostFilesError("%s: %s" % (path, exc.strerror)) from None
    finally:
        os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _diff(path, before, after):
    def shown(data):
        if data is None:
            return ""
        if len(data) > MAX_DIFF_BYTES:
            return "(%d bytes)\n" % len(data)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "(binary, %d bytes)\n" % len(data)
    return {"before_header": path, "after_header": path, "before": shown(before), "after": shown(after)}


def sweep(directory, keep, check_mode=False):
    """The entries of ``directory`` removed (or, in check mode, to remove) because they are not in ``keep``
    (names); a byte-code cache stays. Nothing in the directory is followed: a link or a folder is removed as such."""
    st = host.lstat_or_none(directory)
    if st is None:
        return []
    if not host.is_ours(st):
        raise HostFilesError("%s is not a directory of root's that only root can write; refused" % directory)
    removed = []
    for name in sorted(os.listdir(directory)):
        if name in keep or name in KEEP_NAMES:
            continue
        path = os.path.join(directory, name)
        removed.append(path)
        if not check_mode:
            host.remove_tree(path)
    return removed


def remove(paths, check_mode=False):
    """The paths removed (or to remove) of those given that exist; nothing is followed."""
    removed = [path for path in paths if host.lstat_or_none(path) is not None]
    if not check_mode:
        for path in removed:
            host.remove_tree(path)
    return removed


# --- systemd -------------------------------------------------------------------------------------------------------


def units_changed(paths):
    """Whether a change among ``paths`` needs systemd to read its unit files again."""
    return any(path.startswith(UNIT_DIR) for path in paths)


def services(entries, changed_paths, daemon_reload, check_mode=False, run=host.run):
    """Converge systemd units: a daemon-reload when ``daemon_reload`` (a unit file changed), then each entry's
    ``enabled`` and ``state`` (started or, when a path in its ``restart_on`` changed, restarted). An enabled unit
    whose own file changed is enabled again, so that a new [Install] section takes effect. Returns the actions
    taken (or, in check mode, to take), such as "enable vmesh-renew.timer"."""
    actions = []
    if daemon_reload:
        actions.append("daemon-reload")
        if not check_mode:
            _run(run, ["systemctl", "daemon-reload"])
    for entry in entries:
        name = entry["name"]
        if entry.get("enabled") and _systemctl_says(run, "is-enabled", name) != "enabled":
            actions.append("enable %s" % name)
            if not check_mode:
                _run(run, ["systemctl", "enable", "--quiet", name])
        elif entry.get("enabled") and UNIT_DIR + name in changed_paths:
            actions.append("reenable %s" % name)
            if not check_mode:
                _run(run, ["systemctl", "reenable", "--quiet", name])
        if entry.get("state") != "started":
            continue
        active = _systemctl_says(run, "is-active", name) == "active"
        if not active:
            actions.append("start %s" % name)
            if not check_mode:
                _run(run, ["systemctl", "start", name])
        elif set(entry.get("restart_on") or []) & set(changed_paths):
            actions.append("restart %s" % name)
            if not check_mode:
                _run(run, ["systemctl", "restart", name])
    return actions


def runner_of(module):
    """A ``run(argv)`` for :func:`services` through an AnsibleModule's run_command (LC_ALL=C)."""
    def run(argv):
        return module.run_command(argv, environ_update={"LC_ALL": "C"})
    return run


def _systemctl_says(run, verb, name):
    """systemctl's one-word answer to is-enabled or is-active (its exit code only says "not")."""
    _rc, out, _err = run(["systemctl", verb, name])
    return out.strip().splitlines()[0] if out.strip() else ""


def argument_spec():
    """The options of the vmesh.mesh.host_files module (documented there), with what its action plugin adds."""
    return dict(
        user=dict(type="dict", options=dict(name=dict(type="str", required=True),
                                            uid=dict(type="int", required=True),
                                            comment=dict(type="str", default="vmesh"))),
        directories=dict(type="list", elements="dict", default=[],
                         options=dict(path=dict(type="path", required=True), mode=dict(type="str", default="0755"))),
        files=dict(type="list", elements="dict", default=[],
                   options=dict(dest=dict(type="path", required=True), content=dict(type="str"),
                                encoding=dict(type="str", choices=["utf-8", "base64"], default="utf-8"),
                                sha256=dict(type="str"), size=dict(type="int"),
                                mode=dict(type="str", default="0644"))),
        sweep=dict(type="list", elements="path", default=[]),
        absent=dict(type="list", elements="path", default=[]),
        daemon_reload=dict(type="bool", default=True),
        services=dict(type="list", elements="dict", default=[],
                      options=dict(name=dict(type="str", required=True), enabled=dict(type="bool", default=True),
                                   state=dict(type="str", choices=["started", "none"], default="started"),
                                   restart_on=dict(type="list", elements="path", default=[]))),
        staged=dict(type="dict", default={}),
        changed_before=dict(type="list", elements="path", default=[]),
    )


def converge(module):
    """The module's work on its validated ``module.params``: checks, then the changes, then systemd."""
    p = module.params
    check_mode = module.check_mode
    check(p["directories"], p["files"], p["absent"] + p["sweep"])
    user = p["user"]
    user_changed = bool(user) and system_user(user["name"], user["uid"], user["comment"], check_mode)
    changed = directories(p["directories"], check_mode)
    written, needed, diffs = files(p["files"], p["staged"], check_mode)
    changed += written
    keep = {}
    for path in [f["dest"] for f in p["files"]] + [d["path"] for d in p["directories"]]:
        keep.setdefault(path.rsplit("/", 1)[0], set()).add(path.rsplit("/", 1)[1])
    for directory in p["sweep"]:
        changed += sweep(directory, keep.get(directory.rstrip("/"), set()), check_mode)
    changed += remove(p["absent"], check_mode)
    result = {"changed": user_changed or bool(changed), "changed_files": changed, "user_changed": user_changed,
              "needed": needed, "services_changed": []}
    if module._diff:
        result["diff"] = diffs
    if needed:  # the controller sends these, then calls again: the units wait for every file
        return result
    every = changed + p["changed_before"]
    actions = services(p["services"], every, p["daemon_reload"] and units_changed(every), check_mode,
                       run=runner_of(module))
    result["services_changed"] = actions
    result["changed"] = result["changed"] or bool(actions)
    return result
