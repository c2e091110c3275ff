# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""The controller's side of the host modules that need more than their task's arguments, shared by their action
plugins and by vmesh.mesh.converge's, which runs several of them in one module call.

* :func:`host_files_args`: vmesh.mesh.host_files' files named with ``src`` are read here and passed in the call,
  or, when large, by checksum, to be sent (:func:`send_staged`) only when the host asks for them.
* :func:`sidecar_config_args`: the host's part of the build and the Gateway certificates given on the controller.
* :func:`find_credentials`, :func:`read_found`: those certificates found, then read (vmesh.mesh.host_part checks
  them with these before anything changes).
"""

from __future__ import annotations

import base64
import os

from ansible.errors import AnsibleActionFail, AnsibleError

# files larger than MAX_CONTENT_BYTES go by checksum, hashed as the host hashes them
from ansible_collections.vmesh.mesh.plugins.module_utils.host_files import MAX_CONTENT_BYTES, sha256_stream

try:
    from vmesh import artifact, ratelimit
    from vmesh.errors import MeshError
except ImportError as exc:  # pragma: no cover - install problem, reported by require_vmesh when a plugin runs
    artifact = ratelimit = None
    MeshError = Exception  # never raised: require_vmesh fails first
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None

#: vmesh.mesh.host_files options passed to the module as they are.
HOST_FILES_PASSED = ("user", "directories", "sweep", "absent", "daemon_reload", "services")
#: vmesh.mesh.sidecar_config options passed to the module as they are.
SIDECAR_CONFIG_PASSED = ("dest", "envoy", "bootstrap", "mode", "reload_timeout", "hosts_file", "credentials_dir",
                         "credentials_group", "service")
#: The certificate files a credential may name (vmesh_credentials.<name>.<part>); at most 1 MiB each.
PARTS = ("cert", "key", "ca")
MAX_CREDENTIAL_BYTES = 1 << 20


def host_files_args(action, args, name="vmesh.mesh.host_files"):
    """(the module's arguments, {dest: controller path to send when the host asks}) for vmesh.mesh.host_files'
    task arguments ``args``. ``action`` is the ActionBase whose ``_find_needle`` looks in the role's files/."""
    files = args.get("files") or []
    if not isinstance(files, list) or not all(isinstance(entry, dict) for entry in files):
        raise AnsibleActionFail("%s: files must be a list of {dest, content or src, mode}" % name)
    unknown = set(args) - set(HOST_FILES_PASSED) - {"files"}
    if unknown:
        raise AnsibleActionFail("%s: unknown option(s) %s" % (name, ", ".join(sorted(unknown))))
    module_args = {k: args[k] for k in HOST_FILES_PASSED if k in args}
    # a directory may be given by its path alone
    module_args["directories"] = [{"path": d} if isinstance(d, str) else d for d in args.get("directories") or []]
    module_args["files"], sources = [], {}
    for entry in files:
        given, source = _file_arg(action, entry, name)
        module_args["files"].append(given)
        if source:
            sources[given["dest"]] = source
    return module_args, sources


def _file_arg(action, entry, name):
    """(the module's entry, the controller path to send when asked) for one ``files`` entry."""
    dest = entry.get("dest")
    if not isinstance(dest, str) or not dest:
        raise AnsibleActionFail("%s: a files entry has no dest: %r" % (name, entry))
    unknown = set(entry) - {"dest", "content", "src", "sha256", "mode"}
    if unknown or ("content" in entry) == ("src" in entry):
        raise AnsibleActionFail("%s: files entry %s: give dest, content or src, and mode (not %s)"
                                % (name, dest, ", ".join(sorted(unknown)) or "both content and src"))
    given = {"dest": dest, "mode": str(entry.get("mode", "0644"))}
    if "content" in entry:
        given["content"] = str(entry["content"])
        return given, None
    try:
        path = action._find_needle("files", str(entry["src"]))
    except AnsibleError:
        raise AnsibleActionFail("%s: %s: src %s is not on the controller" % (name, dest, entry["src"])) from None
    try:
        size = os.stat(path).st_size
        if size > MAX_CONTENT_BYTES:
            digest = entry.get("sha256")
            if not digest:
                with open(path, "rb") as handle:
                    digest = sha256_stream(handle.read)[0]
            given.update(sha256=str(digest), size=size)
            return given, path
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise AnsibleActionFail("%s: %s: %s: %s" % (name, dest, path, exc.strerror)) from None
    try:
        given["content"] = data.decode("utf-8")
    except UnicodeDecodeError:
        given.update(content=base64.b64encode(data).decode("ascii"), encoding="base64")
    return given, None


def send_staged(action, sources, needed, remote_tmp):
    """Send the controller's files the host asked for (``needed``, their dests) into ``remote_tmp``; returns
    {dest: the copy's path on the host}, readable by the module's user."""
    staged = {}
    for number, dest in enumerate(needed):
        staged[dest] = action._connection._shell.join_path(remote_tmp, "staged-%d" % number)
        action._transfer_file(sources[dest], staged[dest])
    action._fixup_perms2([remote_tmp] + list(staged.values()))
    return staged


def merge_calls(first, second):
    """One result for a module called twice in a task (the second call given what the first asked for): changed
    when either changed something, the paths either changed, the first call's diff."""
    merged = dict(second)
    merged["changed"] = bool(first.get("changed") or second.get("changed"))
    if "changed_files" in first or "changed_files" in second:
        merged["changed_files"] = sorted(set(first.get("changed_files") or []) | set(second.get("changed_files") or []))
    if "diff" in first:
        merged["diff"] = first["diff"]
    return merged


def require_vmesh(name):
    """Fail the task ``name`` when the vmesh package (the compiler, imported above) is not installed."""
    if IMPORT_ERROR is not None:
        raise AnsibleActionFail("%s: the vmesh package is not installed for this Python (%s); pip install the "
                                "project" % (name, IMPORT_ERROR))


def sidecar_config_args(action, args, task_vars, name="vmesh.mesh.sidecar_config"):
    """The module's arguments for vmesh.mesh.sidecar_config's task arguments ``args``: the host's files from the
    build and the Gateway certificates vmesh_credentials names on the controller."""
    require_vmesh(name)
    unknown = set(args) - set(SIDECAR_CONFIG_PASSED) - {"build", "host", "credentials"}
    if unknown:
        raise AnsibleActionFail("%s: unknown option(s) %s" % (name, ", ".join(sorted(unknown))))
    build = args.get("build")
    if not isinstance(build, dict) or not isinstance(build.get("dir"), str) or not build.get("build"):
        raise AnsibleActionFail("%s: build must be what vmesh.mesh.build returned ({dir, build})" % name)
    host = str(args.get("host") or task_vars["inventory_hostname"])
    try:
        entry = artifact.host_entry(build["dir"], host, str(build["build"]))
        files = artifact.entry_files(build["dir"], host, entry)
    except MeshError as exc:
        raise AnsibleActionFail("%s: %s" % (name, exc)) from exc
    given = args.get("credentials") or {}
    if not isinstance(given, dict):
        raise AnsibleActionFail("%s: credentials (vmesh_credentials) must be a mapping of credentialName to "
                                "{cert, key, ca} paths" % name)
    texts = {cred: read_credential(action, cred, given[cred]) for cred in entry["credentials"] if cred in given}
    module_args = {k: args[k] for k in SIDECAR_CONFIG_PASSED if k in args}
    module_args.update(files=files, hosts_entries=entry["hosts_entries"], credential_texts=texts,
                       credentials_expected=[c for c in entry["credentials"] if c not in given])
    return module_args


def find_credentials(action, given, names, who="vmesh.mesh.sidecar_config"):
    """({name: {part: path found}}, ["name.part: path" of each file not found]) for the credentials ``names`` of
    vmesh_credentials ``given``, looked for on the controller as the action ``action`` finds files."""
    found, missing = {}, []
    for name in names:
        paths = given[name]
        if not isinstance(paths, dict) or not paths or set(paths) - set(PARTS):
            raise AnsibleActionFail("%s: vmesh_credentials.%s: expected a mapping of %s to files on the controller"
                                    % (who, name, ", ".join(PARTS)))
        found[name] = {}
        for part, path in paths.items():
            try:
                found[name][part] = action._find_needle("files", str(path))
            except AnsibleError:
                missing.append("%s.%s: %s" % (name, part, path))
    return found, missing


def read_found(name, found):
    """{part: text} of the credential ``name``'s files ``found`` ({part: path}): readable, at most
    MAX_CREDENTIAL_BYTES, PEM text."""
    texts = {}
    for part, path in found.items():
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_CREDENTIAL_BYTES + 1)
        except OSError as exc:
            raise AnsibleActionFail("vmesh_credentials.%s.%s: %s: %s" % (name, part, path, exc.strerror)) from None
        if len(data) > MAX_CREDENTIAL_BYTES:
            raise AnsibleActionFail("vmesh_credentials.%s.%s: %s is larger than %d bytes; refused"
                                    % (name, part, path, MAX_CREDENTIAL_BYTES))
        try:
            texts[part] = data.decode("ascii")
        except UnicodeDecodeError:
            raise AnsibleActionFail("vmesh_credentials.%s.%s: %s is not PEM text" % (name, part, path)) from None
    return texts


def read_credential(action, name, paths):
    """{part: text} of the files vmesh_credentials.<name> names on the controller; a missing one is an error that
    names it."""
    found, missing = find_credentials(action, {name: paths}, [name])
    if missing:
        raise AnsibleActionFail("vmesh_credentials names a file that is not on the controller: " + missing[0])
    return read_found(name, found[name])
