"""The controller side of vmesh.mesh.sidecar_config (documented in plugins/modules/sidecar_config.py): the host's
part of the build and the Gateway certificates given on the controller, read here and passed to the module
(plugin_utils/host_args.py)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.vmesh.mesh.plugins.plugin_utils.host_args import SIDECAR_CONFIG_PASSED, sidecar_config_args


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(SIDECAR_CONFIG_PASSED + ("build", "host", "credentials"))
    # with async, the module runs in the background on the host (a push to many hosts at once: tasks/endpoints.yml)
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        module_args = sidecar_config_args(self, self._task.args, task_vars)
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        result.update(self._execute_module(module_name="vmesh.mesh.sidecar_config", module_args=module_args,
                                           task_vars=task_vars, wrap_async=wrap_async))
        return result
