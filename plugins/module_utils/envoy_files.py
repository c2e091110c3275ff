# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""Envoy's file-based xDS directory on the VM: stage a whole config, fsync it, switch to it with one rename.

This file runs on the VM with plain ``python3`` and imports the standard library and the collection's host.py
(files) only. Its user is the ``vmesh.mesh.envoy_config`` module. Failures raise :class:`ConfigDirError` (or
host.py's :class:`FileError` for a directory above ``dest``; both are :class:`HostError`); nothing here calls
``fail_json``.

Layout of the config directory (Kubernetes' atomic-writer layout, as the certificate directory)::

    <dest>/                               0755 root
      ..20261202T082915.a1b2c3/           0755 root  one version: every file of one config, written once
        envoy.json  lds.json  cds.json  eds_*.json  rds_*.json  sds_*.json   0644 root
      ..20261201T101010.d4e5f6/           the version before it (rollback, inspection)
      ..data -> ..20261202T082915.a1b2c3  swapped with one rename(2) of ``..data_tmp``
      ..previous -> ..20261201T101010.d4e5f6
      envoy.json -> ..data/envoy.json     the paths Envoy reads (the bootstrap's and the service's) stay
      lds.json -> ..data/lds.json         <dest>/<name>: a swap of ``..data`` changes all of them at once
      ...

Envoy watches ``<dest>`` (``watched_directory``) and re-reads every file-based resource (LDS, CDS, each EDS,
each RDS, each SDS) when anything is *moved* into it. The rename of ``..data`` is the only move made here: links are
made with symlink(2) and removed with unlink(2), versions removed with unlink/rmdir; none of that is a move,
so Envoy reloads exactly once per swap.

One swap is not enough to change clusters and what uses them (measured with Envoy 1.40, see the module's
notes): every subscription has its own inotify instance, they run in no fixed order, and each update reaches
the worker threads on its own, so a swap that adds a cluster and routes to it, or routes away from a cluster
and removes it, fails requests for a moment (503, no cluster). So a push goes make-before-break, the order
the xDS protocol asks of a management server:

1. ``clusters``: the new and changed clusters, endpoints and secrets; clusters no longer wanted are kept. Envoy must have
   read it and have no cluster warming before the next step.
2. ``listeners and routes``: the new listeners and route tables; the old clusters are still kept. Envoy must
   have read it and have no listener warming.
3. ``final``: exactly the new config; the clusters, routes and secrets no longer used go.

Every step is a whole version directory, all of them staged and fsynced before the first swap (a full disk
fails the push before anything is in force); unchanged files are hard links to the version before, so a step
costs only the files it changes. A step that changes nothing is skipped: a routing change is one swap. Whether
Envoy read a swap comes from its admin endpoint (every subscription's ``update_attempt`` counter moves on each
swap; ``update_rejected`` says it refused). With no Envoy running from this directory the steps follow each
other without waiting. When Envoy refuses a step or does not read it in time, the steps are undone in reverse
order and the push fails: the last good config is in force again.

Root never follows a link another user could plant: the directory and everything above it belongs to root (to
the user running us, outside root) and no one else can write it; every entry is checked with lstat; files are
opened with O_NOFOLLOW; a ``<name>.json`` entry must be a regular file (the layout before versions, adopted on
the first push) or exactly the link ``..data/<name>``, anything else is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import secrets
import stat
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from ansible_collections.vmesh.mesh.plugins.module_utils import host
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.host import check_parents, fsync_dir, is_ours

DATA = "..data"
DATA_TMP = "..data_tmp"
PREVIOUS = "..previous"
DIR_MODE = 0o755
#: ``..<YYYYmmddTHHMMSS>.<6 hex>``: one version of the files.
VERSION_RE = re.compile(r"^\.\.\d{8}T\d{6}\.[0-9a-f]{6}$")
#: A config file's name: no path, no leading dot (those are the layout's own entries), ``.json``.
NAME_RE = re.compile(r"^[A-Za-z0-9_~+-][A-Za-z0-9_.~+-]*\.json$")
MAX_NAME = 255
#: Config files are a few MB at most: a larger one is refused rather than read.
MAX_FILE_BYTES = 64 << 20
#: File kinds by name, in the order a change must reach Envoy: secrets and clusters before what uses them.
KINDS = ("bootstrap", "sds", "eds", "cds", "rds", "lds", "other")
STEP_CLUSTERS = "clusters"
STEP_LISTENERS = "listeners and routes"
STEP_FINAL = "final"


class ConfigDirError(HostError):
    pass


def kind(name, bootstrap):
    if name == bootstrap:
        return "bootstrap"
    for prefix in ("sds", "eds", "cds", "rds", "lds"):
        if name.startswith(prefix):
            return prefix
    return "other"


def ordered(names, bootstrap):
    """``names`` in the order a change reaches Envoy (bootstrap, secrets, endpoints, clusters, routes, listeners), then
    by name."""
    return sorted(names, key=lambda n: (KINDS.index(kind(n, bootstrap)), n))


def check_name(name):
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        raise ConfigDirError("file name %r: expected a plain *.json name (letters, digits, '_.~+-', not starting "
                             "with a dot)" % name)


# --- owners, directories and files root can trust --------------------------------------------------------------


def _ours(st):
    """Whether the entry ``st`` (an lstat result) belongs to root (to us, outside root): host.py's rule for the
    directories we work in, applied to the links and files in them."""
    return st.st_uid == host.owner()


def _lstat(path):
    try:
        return host.lstat_or_none(path)
    except host.FileError as exc:
        raise ConfigDirError(str(exc)) from None


def _check_dest(dest):
    """The lstat of ``dest`` (None when missing), after checking it and the directories above it."""
    check_parents(dest)
    st = _lstat(dest)
    if st is None:
        return None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigDirError("%s is %s, not a directory; refused (nothing is followed there: remove it and run "
                             "again)" % (dest, host.kind(st)))
    if not is_ours(st):
        raise ConfigDirError("%s belongs to uid %d with mode %04o: another user could plant links in it; refused "
                             "(it must belong to root, mode 0755: fix it, then run again)"
                             % (dest, st.st_uid, stat.S_IMODE(st.st_mode)))
    return st


def _os_error(exc, path, doing):
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else "?"
    return ConfigDirError("%s %s: %s (%s)" % (doing, path, exc.strerror or exc, code))


def _read_file(path, what):
    """The text of the regular file ``path`` of root's (never a link), and its lstat."""
    try:
        data, st = host.read_regular(path, MAX_FILE_BYTES, ours=True)
    except host.FileError as exc:
        raise ConfigDirError("%s %s" % (what, exc)) from None
    try:
        return data.decode("utf-8"), st
    except UnicodeDecodeError:
        raise ConfigDirError("%s %s is not UTF-8 text; refused" % (what, path)) from None


@contextlib.contextmanager
def locked(dest, timeout):
    """Hold an exclusive lock (flock) on ``dest``, or on the directory above it while it does not exist, for a
    push from reading to cleaning up: two pushes at once (two playbooks) would interleave their swaps. A path that
    cannot be opened as a directory without following a link is not locked here (reading it says why)."""
    path = os.path.abspath(dest)
    if _lstat(path) is None:
        path = os.path.dirname(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        if not host.flock_within(fd, timeout):
            raise ConfigDirError("%s: another push holds its lock (flock) for more than %d s; refused"
                                 % (path, timeout))
        yield
    finally:
        os.close(fd)  # releases the lock


# --- what is in force -----------------------------------------------------------------------------------------


@dataclass
class Current:
    """What ``dest`` holds: the files in force (as Envoy reads them) and how they are laid out."""
    dest: str
    exists: bool = False
    files: dict = field(default_factory=dict)  # name -> text in force
    modes: dict = field(default_factory=dict)  # name -> mode of the file in force
    version: str = ""  # the version directory ``..data`` names ("" without one we can use)
    previous: str = ""  # the one ``..previous`` names, kept for rollback
    plain: list = field(default_factory=list)  # names that are regular files (the layout before versions)
    links: list = field(default_factory=list)  # names that are our links into ..data
    stale: list = field(default_factory=list)  # entries to remove: ..data_tmp, other versions, unusable ones
    problem: str = ""  # why the version ``..data`` names is not used, if it is not

    @property
    def adopt(self):
        """Whether the layout must change before a swap: files in force that are not yet in a version."""
        return bool(self.plain) or (bool(self.files) and not self.version)


def _version_files(dest, version):
    """(files, modes, problem) of the version directory ``dest/version``."""
    base = os.path.join(dest, version)
    st = _lstat(base)
    if st is None:
        return {}, {}, "%s points to %s, which is missing" % (DATA, base)
    if not is_ours(st):
        return {}, {}, ("%s is %s of uid %d with mode %04o: another user can write it, so nothing in it is read "
                        "(a new version replaces it)" % (base, host.kind(st), st.st_uid, stat.S_IMODE(st.st_mode)))
    files, modes = {}, {}
    try:
        names = sorted(os.listdir(base))
    except OSError as exc:
        raise _os_error(exc, base, "listing") from None
    for name in names:
        path = os.path.join(base, name)
        if not NAME_RE.match(name):
            return {}, {}, "%s is not a config file name: the version is not used (a new version replaces it)" % path
        text, fst = _read_file(path, "config file")
        files[name], modes[name] = text, stat.S_IMODE(fst.st_mode)
    return files, modes, ""


def read_current(dest):
    """The files in force in ``dest`` and their layout, read without following any link we did not make.

    In force: through ``..data`` for the names that are our links ``..data/<name>``, and the regular files of the
    layout before versions. Raises when ``dest`` or an entry of it could have been planted by another user."""
    dest = os.path.abspath(dest)
    current = Current(dest)
    if _check_dest(dest) is None:
        return current
    current.exists = True
    try:
        names = sorted(os.listdir(dest))
    except OSError as exc:
        raise _os_error(exc, dest, "listing") from None
    version_files, version_modes = {}, {}
    data = _lstat(os.path.join(dest, DATA))
    if data is not None:
        target = os.readlink(os.path.join(dest, DATA)) if stat.S_ISLNK(data.st_mode) else None
        if target is None or not _ours(data) or not VERSION_RE.match(target):
            raise ConfigDirError("%s is %s%s, not a link of root's to a version directory beside it; refused "
                                 "(remove it and run again)" % (os.path.join(dest, DATA), host.kind(data),
                                                                " to %r" % target if target else ""))
        version_files, version_modes, current.problem = _version_files(dest, target)
        current.version = "" if current.problem else target
    prev = _lstat(os.path.join(dest, PREVIOUS))
    if prev is not None:
        target = os.readlink(os.path.join(dest, PREVIOUS)) if stat.S_ISLNK(prev.st_mode) else ""
        if _ours(prev) and VERSION_RE.match(target) and target != current.version \
                and is_ours(_lstat(os.path.join(dest, target))):
            current.previous = target
    for name in names:
        path = os.path.join(dest, name)
        st = _lstat(path)
        if st is None:
            continue
        if name in (DATA, PREVIOUS):
            continue
        if name == DATA_TMP or VERSION_RE.match(name):
            if name not in (current.version, current.previous):
                current.stale.append(name)
            continue
        if name.startswith(".") and name.endswith(".json.tmp") and stat.S_ISLNK(st.st_mode) \
                and _ours(st):
            current.stale.append(name)  # a link an interrupted adoption left
            continue
        if not name.endswith(".json"):
            continue  # not ours: neither read nor touched
        if not _ours(st):
            raise ConfigDirError("%s belongs to uid %d, not to root; refused (remove it and run again)"
                                 % (path, st.st_uid))
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if target != DATA + "/" + name:
                outside = os.path.isabs(target) or os.path.normpath(target).split(os.sep)[0] == os.pardir
                raise ConfigDirError("%s is a symbolic link to %r%s, not the link %s/%s this module makes; refused "
                                     "(not followed: remove it and run again)"
                                     % (path, target, " (outside %s)" % dest if outside else "", DATA, name))
            current.links.append(name)
            if name in version_files:
                current.files[name] = version_files[name]
                current.modes[name] = version_modes[name]
        elif stat.S_ISREG(st.st_mode):
            if not NAME_RE.match(name):
                continue
            current.plain.append(name)
            current.files[name], fst = _read_file(path, "config file")
            current.modes[name] = stat.S_IMODE(fst.st_mode)
        else:
            raise ConfigDirError("%s is %s; refused (remove it and run again)" % (path, host.kind(st)))
    return current


# --- the plan -------------------------------------------------------------------------------------------------


@dataclass
class Step:
    label: str
    files: dict  # name -> text: the whole config of this step


@dataclass
class Plan:
    changed: list  # names written (new or different content or mode), in the order they reach Envoy
    removed: list  # names no longer wanted
    steps: list  # Step, in order; empty when nothing changes in force
    adopt: bool  # the files in force move into a version first (the layout before versions)
    stale: list  # entries removed: leftovers of an interrupted push, versions before the previous

    @property
    def changed_any(self):
        return bool(self.changed or self.removed or self.adopt or self.stale)


def _dumps(data):
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _named_resources(text):
    try:
        doc = json.loads(text)
    except ValueError:
        return None, None
    resources = doc.get("resources") if isinstance(doc, dict) else None
    if not isinstance(resources, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str)
                                                  for r in resources):
        return None, None
    return doc, resources


def keep_clusters(old, new):
    """``new`` (a CDS file) with the clusters of ``old`` it no longer has added back, so that what still routes
    to them keeps working until the listeners and routes are swapped; ``new`` itself when none is missing or
    either is not a CDS file."""
    if old is None:
        return new
    doc, resources = _named_resources(new)
    _, old_resources = _named_resources(old)
    if doc is None or old_resources is None:
        return new
    names = {r["name"] for r in resources}
    gone = [r for r in old_resources if r["name"] not in names]
    if not gone:
        return new
    return _dumps(dict(doc, resources=resources + gone))


def steps(before, wanted, bootstrap):
    """The make-before-break steps from ``before`` to ``wanted`` (name -> text), each the whole config to swap in;
    steps that change nothing are left out."""
    clusters = dict(before)
    for name, text in wanted.items():
        k = kind(name, bootstrap)
        if k == "cds":
            clusters[name] = keep_clusters(before.get(name), text)
        elif k in ("bootstrap", "sds", "eds", "other"):
            clusters[name] = text
    listeners = dict(clusters)
    listeners.update((n, t) for n, t in wanted.items() if kind(n, bootstrap) in ("rds", "lds"))
    result, last = [], dict(before)
    for label, files in ((STEP_CLUSTERS, clusters), (STEP_LISTENERS, listeners), (STEP_FINAL, dict(wanted))):
        if files != last:
            result.append(Step(label, files))
            last = files
    return result


def plan(current, wanted, bootstrap, mode):
    """What a push of ``wanted`` (name -> text) to ``current`` changes."""
    for name in wanted:
        check_name(name)
    changed = ordered([n for n in wanted if current.files.get(n) != wanted[n] or current.modes.get(n) != mode],
                      bootstrap)
    removed = ordered([n for n in current.files if n not in wanted], bootstrap)
    # the links into ..data of names whose version file is gone (an interrupted push) go too
    removed += ordered([n for n in current.links if n not in wanted and n not in current.files], bootstrap)
    todo = steps(current.files, wanted, bootstrap)
    if not todo and changed:
        todo = [Step(STEP_FINAL, dict(wanted))]  # only modes differ: one swap to fresh files
    return Plan(changed, removed, todo, current.adopt, list(current.stale))


# --- Envoy's admin endpoint -----------------------------------------------------------------------------------

#: A subscription's counters (file-based xDS: CDS, LDS, each RDS, each SDS); of ``cluster.<name>.update_*``
#: (a cluster's host updates; an EDS cluster's subscription) only a rejection counts.
_SUBSCRIPTION = re.compile(r"^(cluster_manager\.cds|listener_manager\.lds|http\..+\.rds\..+|sds\..+)"
                           r"\.update_(attempt|rejected)$|^cluster\..+\.update_rejected$")
_WARMING = ("cluster_manager.warming_clusters", "listener_manager.total_listeners_warming")
_STATS_FILTER = r"update_attempt$|update_rejected$|^cluster_manager\.warming_clusters$|" \
                r"^listener_manager\.total_listeners_warming$"
POLL_SECONDS = 0.02


class EnvoyGone(Exception):
    """The admin endpoint stopped answering (Envoy exited or restarts)."""


class Envoy:
    """The Envoy that runs from this config directory, through its admin endpoint (loopback, no proxy)."""

    def __init__(self, address, port):
        host = "[%s]" % address if ":" in address else address
        self.url = "http://%s:%d" % (host, port)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def running_from(cls, bootstrap_path, bootstrap_text):
        """The Envoy whose admin address ``bootstrap_text`` (the bootstrap in force) gives, if one answers there and
        was started with ``-c bootstrap_path``; else None (none runs, or another one: its counters say nothing
        about this directory)."""
        try:
            address = json.loads(bootstrap_text)["admin"]["address"]["socket_address"]
            envoy = cls(str(address["address"]), int(address["port_value"]))
        except (ValueError, KeyError, TypeError):
            return None
        try:
            info = json.loads(envoy._get("/server_info"))
            config_path = info["command_line_options"]["config_path"]
        except (EnvoyGone, ValueError, KeyError, TypeError):
            return None
        if os.path.normpath(config_path) != os.path.normpath(bootstrap_path):
            return None
        return envoy

    def _get(self, path):
        try:
            with self._opener.open(self.url + path, timeout=2) as response:
                return response.read().decode("utf-8")
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise EnvoyGone(str(exc)) from None

    def counters(self):
        query = urllib.request.quote(_STATS_FILTER, safe="")
        try:
            data = json.loads(self._get("/stats?format=json&filter=" + query))
        except ValueError as exc:
            raise EnvoyGone("bad answer from %s/stats: %s" % (self.url, exc)) from None
        return {s["name"]: s["value"] for s in data.get("stats", []) if "value" in s and "name" in s
                and (_SUBSCRIPTION.match(s["name"]) or s["name"] in _WARMING)}

    def wait(self, before, timeout, moves=1):
        """Wait until Envoy read the ``moves`` moves into its directory made after ``before`` (counters): each is
        one more attempt of every subscription that was there (measured; one may also go, with its listener),
        and nothing warms. Returns "" or why not (rejected, timed out)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.counters()
            rejected = sorted(k for k, v in now.items() if k.endswith(".update_rejected") and v > before.get(k, 0))
            if rejected:
                return "Envoy rejected it (%s; its log says why)" % ", ".join(rejected)
            # secrets' files are read once (vmesh.compile.envoy_types.secret_source): no move reaches them
            behind = sorted(k for k, v in before.items() if k.endswith(".update_attempt") and k in now
                            and now[k] < v + moves and not k.startswith("sds."))
            warming = sorted(k for k in _WARMING if now.get(k))
            if not behind and not warming:
                return ""
            if time.monotonic() > deadline:
                return "Envoy did not take it within %s s (%s)" % (
                    timeout, ", ".join(["not read: " + k for k in behind] + ["%s=%d" % (k, now[k]) for k in warming]))
            time.sleep(POLL_SECONDS)


# --- the push -------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    version: str  # the version in force now
    previous: str  # the version kept for rollback
    swaps: list  # the labels of the steps swapped in
    waited: bool  # whether a running Envoy confirmed each step
    warnings: list = field(default_factory=list)


def _new_version(dest):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    for _ in range(100):
        version = "..%s.%s" % (stamp, secrets.token_hex(3))
        try:
            os.mkdir(os.path.join(dest, version), DIR_MODE)  # a new directory, never an existing entry
        except FileExistsError:
            continue
        os.chmod(os.path.join(dest, version), DIR_MODE)  # whatever the umask
        return version
    raise ConfigDirError("%s: could not make a new version directory" % dest)


class _Stager:
    """Writes version directories in ``dest``; a file already written with the same text and mode (in the version
    in force or a step before) is hard-linked, not written again. Files in a version are never changed."""

    def __init__(self, dest, mode):
        self.dest, self.mode = dest, mode
        self.made = []  # versions made, to remove when the push does not go through
        self._sources = {}  # name -> (text, path of a file of ours with that text and mode)

    def know(self, version, files, modes):
        for name, text in files.items():
            if modes.get(name) == self.mode:
                self._sources[name] = (text, os.path.join(self.dest, version, name))

    def stage(self, files):
        version = _new_version(self.dest)
        self.made.append(version)
        base = os.path.join(self.dest, version)
        for name in sorted(files):
            path = os.path.join(base, name)
            source = self._sources.get(name)
            try:
                if source is not None and source[0] == files[name]:
                    os.link(source[1], path, follow_symlinks=False)
                else:
                    host.create_file(path, files[name].encode("utf-8"), self.mode)
            except OSError as exc:
                raise _os_error(exc, path, "writing") from None
            self._sources[name] = (files[name], path)
        fsync_dir(base)
        return version


def _remove_version(dest, version):
    """Remove the version directory ``dest/version`` (regular files only; a link in it is removed, not followed)."""
    base = os.path.join(dest, version)
    st = _lstat(base)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(base)
        return
    for name in os.listdir(base):
        os.unlink(os.path.join(base, name))  # unlink never follows a link
    os.rmdir(base)


def _swap(dest, version):
    """Point ``..data`` at ``version`` with one rename(2): Envoy sees all files of the old version or all of the
    new one, never a mix."""
    tmp = os.path.join(dest, DATA_TMP)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(version, tmp)
    os.rename(tmp, os.path.join(dest, DATA))
    fsync_dir(dest)


def _link_names(dest, names):
    """Make ``dest/<name> -> ..data/<name>`` where missing, with symlink(2): a new name, no move, no reload."""
    for name in sorted(names):
        path = os.path.join(dest, name)
        if not os.path.lexists(path):
            os.symlink(DATA + "/" + name, path)


def _adopt(dest, current, stager):
    """Put the files in force into a version, ``..data`` to it, then each regular file replaced by its link, one
    rename each: every name reads the same text before and after, so Envoy's reloads on the way change
    nothing. Returns the new version and the number of moves made (one reload each)."""
    version = _new_version(dest)
    stager.made.append(version)
    base = os.path.join(dest, version)
    vfiles = {}
    for name in sorted(current.files):
        source = os.path.join(dest, name) if name in current.plain else os.path.join(dest, current.version, name)
        path = os.path.join(base, name)
        try:
            os.link(source, path, follow_symlinks=False)  # the very file in force (checked: regular, root's)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)  # written before files were fsynced here
            finally:
                os.close(fd)
        except OSError as exc:
            raise _os_error(exc, path, "writing") from None
        vfiles[name] = current.files[name]
    fsync_dir(base)
    stager.know(version, vfiles, current.modes)
    _link_names(dest, [n for n in current.files if n not in current.plain])
    _swap(dest, version)
    for name in sorted(current.plain):
        tmp = os.path.join(dest, ".%s.tmp" % name)
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(DATA + "/" + name, tmp)
        os.rename(tmp, os.path.join(dest, name))  # atomic: the file in force becomes the same file, through ..data
    fsync_dir(dest)
    return version, 1 + len(current.plain)


class _Confirm:
    """The running Envoy's confirmations; when its admin endpoint stops answering, the push goes on without them
    (a restarting Envoy reads the whole config in force anyway)."""

    def __init__(self, envoy, timeout):
        self.envoy, self.timeout, self.warnings = envoy, timeout, []
        self.confirmed = envoy is not None

    def _gone(self, exc):
        self.envoy, self.confirmed = None, False
        self.warnings.append("Envoy's admin endpoint stopped answering (%s): the rest was not waited on" % exc)

    def counters(self):
        try:
            return self.envoy.counters() if self.envoy else None
        except EnvoyGone as exc:
            self._gone(exc)
            return None

    def wait(self, before, moves=1):
        """"" once Envoy read ``moves`` moves into the directory made after ``before``, or why not."""
        if self.envoy is None or before is None:
            return ""
        try:
            return self.envoy.wait(before, self.timeout, moves)
        except EnvoyGone as exc:
            self._gone(exc)
            return ""


def push(dest, current, the_plan, mode, timeout, envoy_for=None):
    """Carry out ``the_plan`` in ``dest`` (as read into ``current``). ``envoy_for(files)`` returns the running
    :class:`Envoy` to wait on (``files``: the config in force), or None. Returns an :class:`Outcome`; raises
    ConfigDirError, with the config in force unchanged (or restored), when it cannot."""
    dest = os.path.abspath(dest)
    if _check_dest(dest) is None:
        try:
            os.makedirs(dest, DIR_MODE)
            os.chmod(dest, DIR_MODE)
        except OSError as exc:
            raise _os_error(exc, dest, "making") from None
        _check_dest(dest)
    confirm = _Confirm(envoy_for(current.files) if envoy_for and current.files else None, timeout)
    stager = _Stager(dest, mode)
    base, staged, made_links = current.version, [], []
    # 1. Adopt plain files, then stage every step, fsynced, before anything new is in force: a full disk fails here.
    try:
        try:
            if the_plan.adopt:
                before = confirm.counters()
                base, moves = _adopt(dest, current, stager)
                problem = confirm.wait(before, moves)  # each move is a reload: all read before a step is counted
                if problem:
                    raise ConfigDirError("adopting the files in force into a version: %s" % problem)
            elif base:
                stager.know(base, current.files, current.modes)
            for step in the_plan.steps:
                staged.append(stager.stage(step.files))
            names = set().union(*(s.files for s in the_plan.steps)) if the_plan.steps else set()
            made_links = sorted(n for n in names if not os.path.lexists(os.path.join(dest, n)))
            _link_names(dest, made_links)
            fsync_dir(dest)
        except OSError as exc:
            raise _os_error(exc, dest, "staging in") from None
    except HostError as exc:
        _discard(dest, stager.made, made_links)
        in_force = _in_force(dest)
        raise ConfigDirError("%s; nothing of the new config is in force (%s)"
                             % (exc, "still version %s" % in_force if in_force else "none was")) from None
    # 2. Swap the steps in, each confirmed by a running Envoy before the next; undo them when it refuses one.
    swapped = []
    for step, version in zip(the_plan.steps, staged):
        before = confirm.counters()
        try:
            _swap(dest, version)
        except OSError as exc:
            problem = str(_os_error(exc, os.path.join(dest, DATA), "swapping"))
        else:
            swapped.append(version)
            problem = confirm.wait(before)
        if problem:
            _undo(dest, swapped, base, confirm)
            _discard(dest, stager.made, made_links)
            raise ConfigDirError("step %r of the push: %s; undone, %s is in force again"
                                 % (step.label, problem, "version %s" % base if base else "nothing"))
    # 3. Clean up: names no longer wanted, ..previous, versions before the previous one, leftovers.
    final = staged[-1] if staged else base
    previous = base if base and base != final else current.previous
    warnings = confirm.warnings
    try:
        for name in the_plan.removed:
            if os.path.lexists(os.path.join(dest, name)):
                os.unlink(os.path.join(dest, name))  # our link (checked by read_current); unlink never follows
        _point_previous(dest, previous)
        for name in sorted(os.listdir(dest)):
            if (VERSION_RE.match(name) and name not in (final, previous)) or name in the_plan.stale:
                _remove_version(dest, name)
        fsync_dir(dest)
    except OSError as exc:
        warnings.append("cleaning up %s after the swap: %s" % (dest, exc))
    return Outcome(final or "", previous or "", [s.label for s in the_plan.steps],
                   confirm.confirmed and bool(staged), warnings)


def _in_force(dest):
    try:
        return os.readlink(os.path.join(dest, DATA))
    except OSError:
        return ""


def _point_previous(dest, version):
    """``..previous -> version`` (or none). unlink + symlink, not a rename: no move into the watched directory."""
    path = os.path.join(dest, PREVIOUS)
    if os.path.lexists(path):
        if version and os.path.islink(path) and os.readlink(path) == version:
            return
        os.unlink(path)
    if version:
        os.symlink(version, path)


def _undo(dest, swapped, base, confirm):
    """Swap back through the steps already in force, then to ``base``: make-before-break in reverse."""
    for version in list(reversed(swapped[:-1])) + ([base] if base else []):
        before = confirm.counters()
        try:
            _swap(dest, version)
        except OSError:
            continue
        confirm.wait(before)
    if not base and swapped:
        try:
            os.unlink(os.path.join(dest, DATA))
        except OSError:
            pass


def _discard(dest, versions, links):
    """Best effort: remove what a push that did not go through made (its versions, its new links); never the
    version in force."""
    for name in links:
        try:
            os.unlink(os.path.join(dest, name))
        except OSError:
            pass
    in_force = _in_force(dest)
    for version in versions:
        if version != in_force:
            try:
                _remove_version(dest, version)
            except OSError:
                pass
    try:
        fsync_dir(dest)
    except OSError:
        pass
