"""The controller side of vmesh.mesh.converge (documented in plugins/modules/converge.py): each step's arguments
prepared as its own module's action plugin prepares them (plugin_utils/host_args.py), one module call, a second
when a step needs a large file sent, and the result merged with an earlier call's (``previous``)."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.vmesh.mesh.plugins.plugin_utils.host_args import host_files_args, merge_calls, send_staged
from ansible_collections.vmesh.mesh.plugins.plugin_utils.host_args import sidecar_config_args

#: The step keys (the module checks the rest).
STEP_KEYS = frozenset(("id", "module", "args"))


class ActionModule(ActionBase):
    # no remote temporary directory up front (a round trip to make it, one to remove it): the module runs piped,
    # and one is made only when a large file is sent (_make_tmp_path)
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("steps", "chain", "previous"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        steps = self._task.args.get("steps")
        if not isinstance(steps, list) or not all(isinstance(s, dict) and set(s) <= STEP_KEYS for s in steps):
            raise AnsibleActionFail("vmesh.mesh.converge: steps must be a list of {id, module, args}")
        module_args = {"steps": [], "secrets": {}, "chain": self._task.args.get("chain") or ""}
        sources = {}
        for step in steps:
            name = "vmesh.mesh.converge: step %s (%s)" % (step.get("id"), step.get("module"))
            args = step.get("args") or {}
            if not isinstance(args, dict):
                raise AnsibleActionFail("%s: args must be a mapping" % name)
            if step.get("module") == "host_files":
                args, sources[step.get("id")] = host_files_args(self, args, name)
            elif step.get("module") == "sidecar_config":
                args = sidecar_config_args(self, args, task_vars, name)
                # the Gateway certificates' keys go in the module's no_log option
                module_args["secrets"][step.get("id")] = {"credential_texts": args.pop("credential_texts")}
            module_args["steps"].append({"id": step.get("id"), "module": step.get("module"), "args": args})
        outcome = self._execute_module(module_name="vmesh.mesh.converge", module_args=module_args,
                                       task_vars=task_vars)
        pending = outcome.get("pending")
        needed = (outcome.get("step_results") or {}).get(pending, {}).get("needed") if pending in sources else None
        if not outcome.get("failed") and needed:
            outcome = merge_results(outcome, self._send_and_call_again(module_args, pending, sources[pending],
                                                                        needed, outcome, task_vars))
        previous = self._task.args.get("previous")
        if isinstance(previous, dict) and previous.get("step_results") and not outcome.get("failed"):
            outcome = merge_results(previous, outcome)
        result.update(outcome)
        return result

    def _send_and_call_again(self, module_args, pending, sources, needed, first, task_vars):
        """The files the host asked for in the step ``pending``, sent; then the call again, that step given them."""
        remote_tmp = self._make_tmp_path()
        try:
            for step in module_args["steps"]:
                if step["id"] == pending:
                    step["args"] = dict(step["args"], staged=send_staged(self, sources, needed, remote_tmp),
                                        changed_before=first["step_results"][pending].get("changed_files") or [])
            return self._execute_module(module_name="vmesh.mesh.converge", module_args=module_args,
                                        task_vars=task_vars)
        finally:
            self._remove_tmp_path(remote_tmp, force=True)


def merge_results(first, second):
    """The result of two calls of the task: each step's results merged (changed when either call changed it), the
    diffs of both, the second call's pending step."""
    if second.get("failed"):
        return second
    merged = dict(second)
    results = dict(first.get("step_results") or {})
    for step_id, step_result in (second.get("step_results") or {}).items():
        results[step_id] = merge_calls(results[step_id], step_result) if step_id in results else step_result
    merged.update(step_results=results, changed=bool(first.get("changed") or second.get("changed")))
    if "diff" in first or "diff" in second:
        merged["diff"] = list(first.get("diff") or []) + list(second.get("diff") or [])
    return merged
