"""The controller side of vmesh.mesh.host_files (documented in plugins/modules/host_files.py): files named with
``src`` are read here and passed in the call, or, when large, by checksum and sent only when the host asks
(plugin_utils/host_args.py)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.vmesh.mesh.plugins.plugin_utils.host_args import HOST_FILES_PASSED, host_files_args
from ansible_collections.vmesh.mesh.plugins.plugin_utils.host_args import merge_calls, send_staged


class ActionModule(ActionBase):
    # no remote temporary directory up front (a round trip to make it, one to remove it): the module runs piped,
    # and one is made only when a large file is sent (_make_tmp_path)
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(HOST_FILES_PASSED + ("files",))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        module_args, sources = host_files_args(self, self._task.args)
        first = self._execute_module(module_name="vmesh.mesh.host_files", module_args=module_args,
                                     task_vars=task_vars)
        needed = first.get("needed") or []
        if first.get("failed") or not needed:
            result.update(first)
            return result
        remote_tmp = self._make_tmp_path()
        try:
            module_args.update(staged=send_staged(self, sources, needed, remote_tmp),
                               changed_before=first.get("changed_files") or [])
            second = self._execute_module(module_name="vmesh.mesh.host_files", module_args=module_args,
                                          task_vars=task_vars)
        finally:
            self._remove_tmp_path(remote_tmp, force=True)
        result.update(merge_calls(first, second))
        return result
