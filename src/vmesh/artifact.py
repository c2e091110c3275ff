"""A compiled mesh on disk: every host's files, content-addressed, under one manifest.

    DIR/manifest.json       {"format": 1, "build": B, "hosts": [...], "warnings": [...]}
    DIR/hosts/<host>.json   {"build": B, "host": ..., "files": {name: sha256}, "hosts_entries": [...],
                             "edge_ports": [...], "credentials": [...], "identity": ...}
    DIR/objects/<sha256>    one file's content, stored once however many hosts have it

``B`` is the SHA-256 of the hosts' entries in host order: the same compile writes the same artifact, and a host's
entry names the build it belongs to, so a reader can tell a directory rebuilt under it. A push reads one host's
entry and objects only (``host_entry``, ``host_files``), checking each object's digest; a slice of the fleet
(``--limit``, AWX job slicing) pushes from the artifact without seeing the other hosts' variables. ``diff``
says which hosts and files differ between two artifacts.

An artifact is written beside its place and renamed into it; a directory that is not an artifact is never
replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from typing import Iterable, Mapping

from vmesh.compile import HostConfig, dumps
from vmesh.errors import MeshError

FORMAT = 1
MANIFEST = "manifest.json"
_PLAIN = re.compile(r"[A-Za-z0-9_.-]")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9_~+-][A-Za-z0-9_.~+-]*\.json")
_LINE = re.compile(r"[0-9a-fA-F.:]+( [A-Za-z0-9.-]+)+")  # "VIP name name ...", one line
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_IDENTITY = re.compile(r"spiffe://[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+|")
MAX_ENTRY = 16 * 1024 * 1024  # a host's entry is a few KB; anything this big is not one
MAX_OBJECT = 64 * 1024 * 1024  # as the config module's limit on one file


#: What a host's entry holds besides its files, each acted on by a role.
HOST_FIELDS = ("hosts_entries", "edge_ports", "credentials", "identity")


@dataclasses.dataclass
class Manifest:
    build: str
    hosts: list[str]
    warnings: list[str]


@dataclasses.dataclass
class Change:
    host: str
    status: str  # "added", "removed" or "changed"
    files: list[str]  # the files that differ (all of them for an added or removed host), then "[field]" for
    # each of HOST_FIELDS that differs


def entry_name(host: str) -> str:
    """The file name of a host's entry: letters, digits, '_', '-' and '.' as they are (not leading), every other
    character as '~' and six hex digits."""
    name = "".join(c if _PLAIN.fullmatch(c) else f"~{ord(c):06x}" for c in host)
    if name.startswith("."):
        name = f"~{ord('.'):06x}" + name[1:]
    return name + ".json"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entries(configs: Mapping[str, HostConfig]) -> tuple[str, dict[str, dict], dict[str, str]]:
    """(build, host -> entry, digest -> content) of compiled hosts."""
    objects: dict[str, str] = {}
    out: dict[str, dict] = {}
    for host in sorted(configs):
        config = configs[host]
        files = {}
        for name, text in config.files.items():
            digest = _digest(text)
            objects.setdefault(digest, text)
            files[name] = digest
        out[host] = {"host": host, "files": files, "hosts_entries": list(config.hosts_entries),
                     "edge_ports": list(config.edge_ports), "credentials": list(config.credentials),
                     "identity": config.identity}
    build = hashlib.sha256("\n".join(dumps(out[h]) for h in sorted(out)).encode("utf-8")).hexdigest()
    for entry in out.values():
        entry["build"] = build
    return build, out, objects


def _is_artifact(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST)) and os.path.isdir(os.path.join(path, "objects"))


def write(dest: str, configs: Mapping[str, HostConfig], warnings: Iterable[str] = ()) -> tuple[Manifest, bool]:
    """Write the artifact of ``configs`` to ``dest``; return its manifest and whether ``dest`` changed (False
    when it already holds this very build, whole)."""
    try:
        return _write(dest, configs, warnings)
    except OSError as exc:
        raise MeshError(f"cannot write the build: {exc.strerror}", file=exc.filename or dest) from None


def _write(dest: str, configs: Mapping[str, HostConfig], warnings: Iterable[str]) -> tuple[Manifest, bool]:
    build, hosts, objects = entries(configs)
    manifest = Manifest(build, sorted(hosts), list(warnings))
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        if os.path.islink(dest) or not os.path.isdir(dest):
            raise MeshError("not a directory (the build directory must be a plain directory)", file=dest)
        if os.listdir(dest) and not _is_artifact(dest):
            raise MeshError("is not empty and holds no vmesh build (no manifest.json): not replaced", file=dest)
        if _is_artifact(dest) and _holds(dest, manifest, hosts, objects):
            return manifest, False
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.new-", dir=parent)
    try:
        os.mkdir(os.path.join(staging, "objects"))
        os.mkdir(os.path.join(staging, "hosts"))
        for digest, text in objects.items():
            with open(os.path.join(staging, "objects", digest), "w", encoding="utf-8") as fh:
                fh.write(text)
        for host, entry in hosts.items():
            with open(os.path.join(staging, "hosts", entry_name(host)), "w", encoding="utf-8") as fh:
                fh.write(dumps(entry))
        with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"format": FORMAT, "build": build, "hosts": manifest.hosts,
                                 "warnings": manifest.warnings}, indent=1, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)
        old = None
        if os.path.isdir(dest):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=parent)
            os.rename(dest, os.path.join(old, "build"))
        os.rename(staging, dest)
        staging = None
        if old:
            shutil.rmtree(old)
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    return manifest, True


def _holds(dest: str, manifest: Manifest, hosts: Mapping[str, dict], objects: Mapping[str, str]) -> bool:
    """Whether ``dest`` already holds this very build, whole: its manifest, every entry and every object."""
    try:
        if read(dest) != manifest:
            return False
        folder = os.path.join(dest, "objects")
        for digest, text in objects.items():  # there, and of the right size (reading them all back costs more)
            if os.lstat(os.path.join(folder, digest)).st_size != len(text.encode("utf-8")):
                return False
        return all(_read_bounded(os.path.join(dest, "hosts", entry_name(h)), MAX_ENTRY, "entry") == dumps(e).encode()
                   for h, e in hosts.items())
    except (MeshError, OSError):
        return False  # a damaged build is replaced


def _read_bounded(path: str, limit: int, what: str) -> bytes:
    """A regular file's bytes, never through a link, at most ``limit`` of them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise MeshError(f"no {what} here: is it a vmesh build directory (vmesh compile --out)?", file=path) from None
    except OSError as exc:
        raise MeshError(f"cannot read the {what}: {exc.strerror} (a link is never followed)", file=path) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise MeshError(f"the {what} is not a regular file", file=path)
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise MeshError(f"the {what} is larger than {limit} bytes", file=path)
    return raw


def _load(path: str, what: str) -> dict:
    raw = _read_bounded(path, MAX_ENTRY, what)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise MeshError(f"{what} is not JSON: {exc}", file=path) from None
    if not isinstance(data, dict):
        raise MeshError(f"{what}: expected a JSON object", file=path)
    return data


def read(path: str) -> Manifest:
    data = _load(os.path.join(path, MANIFEST), "manifest")
    where = os.path.join(path, MANIFEST)
    if data.get("format") != FORMAT:
        raise MeshError(f"format {data.get('format')!r}: this vmesh reads format {FORMAT}", file=where, field="format")
    build, hosts, warnings = data.get("build"), data.get("hosts"), data.get("warnings", [])
    if not isinstance(build, str) or not _DIGEST.fullmatch(build):
        raise MeshError("expected a SHA-256", file=where, field="build")
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise MeshError("expected a list of host names", file=where, field="hosts")
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise MeshError("expected a list of strings", file=where, field="warnings")
    return Manifest(build, hosts, warnings)


def host_entry(path: str, host: str, build: str | None = None) -> dict:
    """One host's entry (its files' digests, /etc/hosts lines, identity...), checked against ``build``."""
    where = os.path.join(path, "hosts", entry_name(host))
    entry = _load(where, f"entry of host {host}")
    if entry.get("host") != host:
        raise MeshError(f"holds host {entry.get('host')!r}, not {host!r}", file=where, field="host")
    if build is not None and entry.get("build") != build:
        raise MeshError(f"belongs to build {entry.get('build')}, not {build}: the build directory was replaced "
                        "during this run (another compile into it?)", file=where, field="build")
    files = entry.get("files")
    if not isinstance(files, dict) or not all(isinstance(n, str) and _FILE.fullmatch(n) and isinstance(d, str)
                                              and _DIGEST.fullmatch(d) for n, d in files.items()):
        raise MeshError("expected file names (*.json) and their SHA-256", file=where, field="files")
    # what the roles act on besides the files: strictly what the compiler writes
    checks = {
        "hosts_entries": lambda v: isinstance(v, list) and all(isinstance(x, str) and _LINE.fullmatch(x) for x in v),
        "edge_ports": lambda v: isinstance(v, list) and all(type(x) is int and 0 < x < 65536 for x in v),
        "credentials": lambda v: isinstance(v, list) and all(isinstance(x, str) and _NAME.fullmatch(x) for x in v),
        "identity": lambda v: isinstance(v, str) and _IDENTITY.fullmatch(v) is not None,
    }
    for field, ok in checks.items():
        if not ok(entry.get(field)):
            raise MeshError("not what the compiler writes here", file=where, field=field)
    return entry


def host_files(path: str, host: str, build: str | None = None) -> dict[str, str]:
    """One host's files (name -> content), each checked against its digest."""
    return entry_files(path, host, host_entry(path, host, build))


def entry_files(path: str, host: str, entry: dict) -> dict[str, str]:
    """The files of ``entry``, ``host``'s entry as :func:`host_entry` returned it, each checked against its
    digest."""
    out = {}
    for name, digest in sorted(entry["files"].items()):
        where = os.path.join(path, "objects", digest)
        raw = _read_bounded(where, MAX_OBJECT, f"object of {name} of host {host}")
        if hashlib.sha256(raw).hexdigest() != digest:
            raise MeshError(f"does not match its digest ({name} of host {host}): the build is damaged", file=where)
        out[name] = raw.decode("utf-8")
    return out


def diff(before: str, after: str) -> list[Change]:
    """The hosts whose files differ between two artifacts, and which files."""
    old, new = read(before), read(after)
    changes = []
    for host in sorted(set(old.hosts) | set(new.hosts)):
        if host not in new.hosts:
            changes.append(Change(host, "removed", sorted(host_entry(before, host)["files"])))
        elif host not in old.hosts:
            changes.append(Change(host, "added", sorted(host_entry(after, host)["files"])))
        else:
            first, second = host_entry(before, host), host_entry(after, host)
            a, b = first["files"], second["files"]
            files = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
            # what a push changes besides the files: /etc/hosts, the capture's exceptions, credentials, identity
            files += [f"[{field}]" for field in HOST_FIELDS if first[field] != second[field]]
            if files:
                changes.append(Change(host, "changed", files))
    return changes
