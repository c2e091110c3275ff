# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""The host's commands and files, safely: the one subprocess runner and the one safe-file layer of the
collection's host-side code.

Users: certs.py (workload certificates), envoy_files.py (Envoy's config directory), iptables.py (the redirect),
ca.py (the controller's CA directory), and through them the Ansible modules, the renewal agent, the CA server and
the boot-time iptables helper. Standard library only: shipped to the VMs (vmesh.mesh.node_source).

Commands run with an argv list (never a shell), ``LC_ALL=C`` and a deadline; :func:`run` returns (rc, stdout,
stderr) and leaves the exit code to its caller. It raises :class:`CommandError` when the command cannot be run or
does not finish.

Files: a root process never follows a link or opens a file in a directory a less-privileged user can write.
Otherwise a user that can write a directory root works in (the proxy's user, which reads the certificates) could
plant ``pending/key.pem -> /etc/vmesh/node/node-key.pem`` and have root copy the node key, or any root-only file,
into a file it can read. So every directory worked in is checked with lstat: a real directory, owned by root (by
the user running us, outside root: tests, rootless use) and writable by nobody else (:func:`is_ours`), as is every
directory above it (:func:`check_parents`, where root's directories are trusted too). Files are opened with
O_NOFOLLOW and O_NONBLOCK and must be regular files; they are written atomically (:func:`write_file`). A directory
another user owns or can write is removed without looking inside (:func:`remove_tree`: shutil.rmtree's fd-based
walk never follows a link). Failures raise :class:`FileError`, a one-line message that names the path.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time

from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError

#: A command that takes longer than this is given up (iptables-restore waits 10 s for the xtables lock).
COMMAND_TIMEOUT = 60
#: Files read here are small (certificates, keys, registrations): a larger one is refused rather than read.
MAX_FILE_BYTES = 1 << 20


class CommandError(HostError):
    """A command could not be run or did not finish in time."""


class FileError(HostError):
    """A file or directory cannot be used safely, or an operation on it failed; the message names the path."""


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


# --- owners, directories and files root can trust ---------------------------------------------------------------


def owner():
    """Directories and files belong to root when we run as root, else to the user running us (tests, rootless)."""
    return os.geteuid()


def trusted_uid(uid):
    """Whether a directory or link above the paths we work in may belong to ``uid``: root, or the user running us."""
    return uid in (0, owner())


def kind(st):
    """What an lstat result is, for a message: "a symbolic link", "a directory", "a regular file", ..."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISREG(st.st_mode):
        return "a regular file"
    return "a special file"


def lstat_or_none(path):
    """``os.lstat(path)``, or None when there is nothing there; other errors name the path."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileError("%s: %s" % (path, exc.strerror)) from None


def is_ours(st):
    """Whether ``st`` (an lstat result, or None) is a real directory of ours (root's, under root) that no one else
    can write."""
    return (st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == owner()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def check_parents(path):
    """Raise unless no one but root (or us) can change what ``path`` resolves to: every directory above it, as
    written and as resolved, is owned by root or us and writable by no one else (sticky ones such as /tmp aside,
    where others cannot rename or remove our entries), and every link on the way is owned by root or us."""
    path = os.path.abspath(path)
    for top in sorted({os.path.dirname(path), os.path.realpath(os.path.dirname(path))}):
        current = top
        while True:
            st = lstat_or_none(current)
            if st is not None and (not trusted_uid(st.st_uid) or (
                    stat.S_ISDIR(st.st_mode) and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                    and not st.st_mode & stat.S_ISVTX)):
                raise FileError("%s: %s is %s of uid %d with mode %04o: another user could swap what it holds; "
                                "refused (the directories above it must belong to root and be writable by root "
                                "only)" % (path, current, kind(st), st.st_uid, stat.S_IMODE(st.st_mode)))
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent


def ensure_dir(path, mode, uid, gid):
    """``path`` is a real directory with ``mode`` and ``uid``:``gid``; returns whether anything changed. A link or
    anything else in its place is refused, never followed."""
    changed = False
    try:
        st = lstat_or_none(path)
        if st is None:
            parent = os.path.dirname(path)
            if parent and not os.path.isdir(parent):
                os.makedirs(parent)
            os.mkdir(path, mode)
            changed = True
            st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise FileError("%s is %s, not a directory; refused (nothing is followed or replaced there: remove it "
                            "and run again)" % (path, kind(st)))
        # A real directory (lstat), whose parent no one else can write: chown and chmod act on it, nothing else.
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)
            changed = True
        if stat.S_IMODE(os.lstat(path).st_mode) != mode:
            os.chmod(path, mode)
            changed = True
    except OSError as exc:
        raise FileError("%s: %s" % (path, exc.strerror)) from None
    return changed


def converge_dir(path, mode, uid, gid, check_mode=False):
    """Whether the directory ``path`` is (or, in check mode, would be) made or given ``mode`` and ``uid``:``gid``;
    a link or anything else in its place is refused."""
    st = lstat_or_none(path)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise FileError("%s is %s, not a directory; refused (remove it and run again)" % (path, kind(st)))
    if check_mode:
        return st is None or (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (mode, uid, gid)
    return ensure_dir(path, mode, uid, gid)


def remove_tree(path):
    """Remove ``path`` (a directory with what it holds, a link or a file) without following any link."""
    st = lstat_or_none(path)
    if st is None:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            if not shutil.rmtree.avoids_symlink_attacks:  # True on Linux (fd-based walk)
                raise FileError("%s: this platform cannot remove a directory without following links" % path)
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise FileError("%s: cannot remove it: %s" % (path, exc.strerror)) from None


def flock_within(fd, timeout):
    """Take an exclusive flock on the open ``fd``, waiting at most ``timeout`` seconds; whether it was taken. The
    lock goes with the descriptor: closing it releases the lock."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def fsync_dir(path):
    """fsync the directory ``path`` (opened without following a link): the entries made in it are on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading and writing files ----------------------------------------------------------------------------------


def _set_attributes(fd, mode, uid, gid):
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def _open_error(exc):
    if exc.errno == errno.ELOOP:
        return "a symbolic link, not a regular file; refused (a root process does not follow links here)"
    return exc.strerror or str(exc)


def open_regular(path, missing_ok=False):
    """(descriptor, fstat) of the regular file ``path``, opened read-only without following a link and without
    blocking on a FIFO; anything else is refused. With ``missing_ok``, (None, None) when there is no file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return None, None
        raise FileError("%s: %s" % (path, os.strerror(errno.ENOENT))) from None
    except OSError as exc:
        raise FileError("%s: %s" % (path, _open_error(exc))) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileError("%s is %s, not a regular file; refused" % (path, kind(st)))
    except OSError as exc:
        os.close(fd)
        raise FileError("%s: %s" % (path, exc.strerror)) from None
    except FileError:
        os.close(fd)
        raise
    return fd, st


def fix_attributes(path, mode, uid, gid):
    """Set ``mode`` and ``uid``:``gid`` of the regular file ``path`` through a descriptor opened without
    following a link; returns whether anything changed."""
    fd, st = open_regular(path)
    try:
        before = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        _set_attributes(fd, mode, uid, gid)
        return before != (mode, uid, gid)
    except OSError as exc:
        raise FileError("%s: %s" % (path, exc.strerror)) from None
    finally:
        os.close(fd)


def read_regular(path, limit=MAX_FILE_BYTES, missing_ok=False, ours=False):
    """(bytes, fstat) of the regular file ``path``; (None, None) with ``missing_ok`` when there is none. Never
    through a link (O_NOFOLLOW), never a FIFO or a device (O_NONBLOCK, then fstat); at most ``limit`` bytes; with
    ``ours``, only a file of ours (root's, under root). The caller checks the directory."""
    fd, st = open_regular(path, missing_ok)
    if fd is None:
        return None, None
    try:
        if ours and st.st_uid != owner():
            raise FileError("%s belongs to uid %d, not to root; refused" % (path, st.st_uid))
        if st.st_size > limit:
            raise FileError("%s is larger than %d bytes; refused" % (path, limit))
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks), st
            size += len(chunk)
            if size > limit:
                raise FileError("%s is larger than %d bytes; refused" % (path, limit))
            chunks.append(chunk)
    except OSError as exc:
        raise FileError("%s: %s" % (path, exc.strerror)) from None
    finally:
        os.close(fd)


def read_file(path, limit=MAX_FILE_BYTES):
    """The bytes of the regular file ``path``, or None when there is none (see :func:`read_regular`)."""
    return read_regular(path, limit, missing_ok=True)[0]


def read_json_object(path):
    """The JSON object (a dict) in the file ``path``: a program's configuration, written by its role."""
    try:
        with open(path, encoding="utf-8") as handle:
            given = json.load(handle)
    except OSError as exc:
        raise FileError("%s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise FileError("%s: not JSON: %s" % (path, exc)) from None
    if not isinstance(given, dict):
        raise FileError("%s: expected a JSON object" % path)
    return given


def write_file(path, data, mode, uid, gid):
    """Write ``data`` (bytes, or ASCII text) to ``path`` atomically: a new temporary file in the same directory
    (O_CREAT|O_EXCL, so never through a link) gets ``mode`` and ``uid``:``gid`` through its descriptor before a byte
    is written, then takes the name with rename(2), which replaces whatever entry was there (a link included)
    without following it.

    Not ``module.atomic_move``: that gives a new file the umask's mode after the move, and these helpers are also
    used outside Ansible."""
    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".vmesh-", suffix=".tmp", dir=directory)  # created 0600
    except OSError as exc:
        raise FileError("%s: %s" % (path, exc.strerror)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            _set_attributes(handle.fileno(), mode, uid, gid)
            handle.write(data.encode("ascii") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except OSError as exc:
        raise FileError("%s: %s" % (path, exc.strerror)) from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def converge_file(path, data, mode, uid, gid, check_mode=False, limit=MAX_FILE_BYTES):
    """(changed, before) for the regular file ``path`` that must hold ``data`` (bytes) with ``mode`` and
    ``uid``:``gid``: it is written atomically (:func:`write_file`) unless it does already, never in check mode.
    ``before`` is what it held (None when there was no file). The caller checks the directory."""
    before, st = read_regular(path, limit=limit, missing_ok=True)
    if before == data and (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid):
        return False, before
    if not check_mode:
        write_file(path, data, mode, uid, gid)
    return True, before


def create_file(path, data, mode):
    """Write ``data`` (bytes) to the new file ``path`` with ``mode`` (whatever the umask), fsynced. The name must
    be free (O_EXCL: never an existing entry, never through a link): for a file of a new directory, which is made
    atomic by what swaps that directory in. Raises OSError; the caller names what it was doing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
