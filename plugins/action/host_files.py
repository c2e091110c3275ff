"""The controller side of vmesh.mesh.host_files (documented in plugins/modules/host_files.py): files named with
``src`` are read here and passed in the call, or, when large, by checksum and sent only when the host asks."""

from __future__ import annotations

import base64
import os

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase

# files larger than MAX_CONTENT_BYTES go by checksum, hashed as the host hashes them
from ansible_collections.vmesh.mesh.plugins.module_utils.host_files import MAX_CONTENT_BYTES, sha256_stream

PASSED = ("user", "directories", "sweep", "absent", "daemon_reload", "services")


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(PASSED + ("files",))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        files = args.get("files") or []
        if not isinstance(files, list) or not all(isinstance(entry, dict) for entry in files):
            raise AnsibleActionFail("vmesh.mesh.host_files: files must be a list of {dest, content or src, mode}")
        module_args = {k: args[k] for k in PASSED if k in args}
        # a directory may be given by its path alone
        module_args["directories"] = [{"path": d} if isinstance(d, str) else d for d in args.get("directories") or []]
        module_args["files"], sources = [], {}
        for entry in files:
            given, source = self._file_arg(entry)
            module_args["files"].append(given)
            if source:
                sources[given["dest"]] = source
        first = self._execute_module(module_name="vmesh.mesh.host_files", module_args=module_args,
                                     task_vars=task_vars)
        needed = first.get("needed") or []
        if first.get("failed") or not needed:
            result.update(first)
            return result
        staged, remote_tmp = {}, self._make_tmp_path()
        try:
            for number, dest in enumerate(needed):
                staged[dest] = self._connection._shell.join_path(remote_tmp, "staged-%d" % number)
                self._transfer_file(sources[dest], staged[dest])
            self._fixup_perms2([remote_tmp] + list(staged.values()))
            module_args.update(staged=staged, changed_before=first.get("changed_files") or [])
            second = self._execute_module(module_name="vmesh.mesh.host_files", module_args=module_args,
                                          task_vars=task_vars)
        finally:
            self._remove_tmp_path(remote_tmp, force=True)
        second["changed_files"] = sorted(set(first.get("changed_files") or []) | set(second.get("changed_files") or []))
        second["changed"] = bool(second.get("changed") or first.get("changed"))
        if "diff" in first:
            second["diff"] = first["diff"]
        result.update(second)
        return result

    def _file_arg(self, entry):
        """(the module's entry, the controller path to send when asked) for one ``files`` entry."""
        dest = entry.get("dest")
        if not isinstance(dest, str) or not dest:
            raise AnsibleActionFail("vmesh.mesh.host_files: a files entry has no dest: %r" % (entry,))
        unknown = set(entry) - {"dest", "content", "src", "sha256", "mode"}
        if unknown or ("content" in entry) == ("src" in entry):
            raise AnsibleActionFail("vmesh.mesh.host_files: files entry %s: give dest, content or src, and mode "
                                    "(not %s)" % (dest, ", ".join(sorted(unknown)) or "both content and src"))
        given = {"dest": dest, "mode": str(entry.get("mode", "0644"))}
        if "content" in entry:
            given["content"] = str(entry["content"])
            return given, None
        try:
            path = self._find_needle("files", str(entry["src"]))
        except AnsibleError:
            raise AnsibleActionFail("vmesh.mesh.host_files: %s: src %s is not on the controller"
                                    % (dest, entry["src"])) from None
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
            raise AnsibleActionFail("vmesh.mesh.host_files: %s: %s: %s" % (dest, path, exc.strerror)) from None
        try:
            given["content"] = data.decode("utf-8")
        except UnicodeDecodeError:
            given.update(content=base64.b64encode(data).decode("ascii"), encoding="base64")
        return given, None

