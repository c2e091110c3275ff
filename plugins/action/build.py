"""The controller side of vmesh.mesh.build (documented in plugins/modules/build.py): the compiler, in-process."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from vmesh import artifact, inputs, load
    from vmesh.compile import render_all
    from vmesh.errors import MeshError
except ImportError as exc:  # pragma: no cover - install problem, reported when the action runs
    artifact = None
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None

class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("dest", "sources", "hosts", "rollouts", "drained"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(f"vmesh.mesh.build: the vmesh package is not installed for this Python "
                                    f"({IMPORT_ERROR}); pip install the project")
        args = self._task.args
        dest, sources = args.get("dest"), args.get("sources")
        if not isinstance(dest, str) or not dest:
            raise AnsibleActionFail("vmesh.mesh.build: dest (the build directory) is required")
        dest = os.path.abspath(os.path.expanduser(os.path.expandvars(dest)))  # as a path option is read
        try:
            if sources is not None:
                manifest, changed = self._compile(task_vars, dest, sources, args.get("hosts"),
                                                  args.get("rollouts") or {}, args.get("drained") or [])
            else:
                manifest, changed = artifact.read(dest), False
        except MeshError as exc:
            raise AnsibleActionFail(f"vmesh.mesh.build: {exc}") from exc
        wanted = [h for h in task_vars.get("ansible_play_hosts_all", [])
                  if h in task_vars.get("groups", {}).get("vmesh", [])]
        missing = sorted(set(wanted) - set(manifest.hosts))
        if missing:
            raise AnsibleActionFail(f"vmesh.mesh.build: {dest} holds no config for {', '.join(missing[:10])}"
                                    f"{' and more' if len(missing) > 10 else ''}: compile it again with this "
                                    "inventory (vmesh compile --out)")
        result.update(changed=changed, dir=dest, build=manifest.build, hosts=len(manifest.hosts),
                      warnings_found=manifest.warnings)
        return result

    @staticmethod
    def _compile(task_vars, dest, sources, hosts, rollouts, drained):
        if not isinstance(sources, list) or not all(isinstance(s, (list, tuple)) and len(s) == 2 for s in sources):
            raise AnsibleActionFail("vmesh.mesh.build: sources must be a list of [path, text] pairs")
        if not hosts:
            raise AnsibleActionFail("vmesh.mesh.build: no hosts in group 'vmesh'")
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise AnsibleActionFail("vmesh.mesh.build: hosts must be a list of inventory host names")
        if not isinstance(rollouts, dict) or not all(isinstance(v, dict) for v in rollouts.values()):
            raise AnsibleActionFail("vmesh.mesh.build: rollouts must be a mapping of service name to saved state")
        if not isinstance(drained, list) or not all(isinstance(h, str) for h in drained):
            raise AnsibleActionFail("vmesh.mesh.build: drained must be a list of inventory host names")
        mesh = load.mesh(inputs.mesh_variables(task_vars["hostvars"], hosts), [(str(p), str(t)) for p, t in sources],
                         rollout_states=rollouts, drained=drained)
        return artifact.write(dest, render_all(mesh), mesh.warnings)
