"""Filters that hand the inventory and the mesh documents to the vmesh compiler (src/vmesh)."""

from __future__ import annotations

# Each filter is documented in the YAML file named after it, beside this one (ansible-doc -t filter vmesh.mesh.NAME).

from ansible.errors import AnsibleFilterError

try:
    from vmesh import load, registry, rollout
    from vmesh.compile import render_all
    from vmesh.errors import MeshError
except ImportError as exc:  # pragma: no cover - install problem, reported when the filter is used
    load = registry = rollout = None
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None

KEEP = ("ansible_host",)


def _host_vars(hostvars, host):
    variables = hostvars[host]
    return {key: variables[key] for key in variables if key.startswith("vmesh_") or key in KEEP}


def _installed(name):
    if IMPORT_ERROR is not None:
        raise AnsibleFilterError(f"{name}: the vmesh package is not installed for this Python "
                                 f"({IMPORT_ERROR}); pip install the project") from IMPORT_ERROR


def _states(name, rollouts):
    if not isinstance(rollouts, dict) or not all(isinstance(v, dict) for v in rollouts.values()):
        raise AnsibleFilterError(f"{name}: rollouts must be a mapping of service name to saved state")
    return rollouts


def compile_mesh(sources, hostvars, hosts, rollouts=None):
    _installed("vmesh.mesh.compile")
    states = _states("vmesh.mesh.compile", rollouts or {})
    if not isinstance(sources, list) or not all(isinstance(s, (list, tuple)) and len(s) == 2 for s in sources):
        raise AnsibleFilterError("vmesh.mesh.compile: input must be a list of [path, text] pairs")
    if not hosts:
        raise AnsibleFilterError("vmesh.mesh.compile: no hosts in group 'vmesh'")
    try:
        mesh = load.mesh({h: _host_vars(hostvars, h) for h in hosts}, [(str(p), str(t)) for p, t in sources],
                           rollout_states=states)
        configs = render_all(mesh)
    except MeshError as exc:
        raise AnsibleFilterError(f"vmesh.mesh.compile: {exc}") from exc
    out = {host: {"files": c.files, "hosts_entries": c.hosts_entries,
                  "edge_ports": c.edge_ports, "credentials": c.credentials, "identity": c.identity}
           for host, c in configs.items()}
    out["_warnings"] = mesh.warnings
    return out


def rollout_plan(rollouts, hostvars, hosts, only=None, abort=False, now=0.0):
    _installed("vmesh.mesh.rollout_plan")
    states = _states("vmesh.mesh.rollout_plan", rollouts or {})
    try:
        mesh_registry = registry.build({h: _host_vars(hostvars, h) for h in hosts})
        declared = rollout.parse(mesh_registry.rollout_settings, mesh_registry, states)
        steps = rollout.plan(declared, states, only=only or None, abort=bool(abort), now=float(now))
    except MeshError as exc:
        raise AnsibleFilterError(f"vmesh.mesh.rollout_plan: {exc}") from exc
    for entry in steps:
        if entry["state"] is not None:
            entry["stats_filter"] = rollout.stats_filter(entry["state"])
    return steps


def rollout_step(state, before, after, started, ended):
    _installed("vmesh.mesh.rollout_step")
    if not isinstance(state, dict) or not isinstance(before, dict) or not isinstance(after, dict):
        raise AnsibleFilterError("vmesh.mesh.rollout_step: expects a rollout state and two {host: /stats JSON} snapshots")
    try:
        return rollout.step(state, before, after, float(started), float(ended))
    except MeshError as exc:
        raise AnsibleFilterError(f"vmesh.mesh.rollout_step: {exc}") from exc


def rollout_report(state):
    _installed("vmesh.mesh.rollout_report")
    if not isinstance(state, dict):
        raise AnsibleFilterError("vmesh.mesh.rollout_report: expects a rollout state")
    return rollout.summary(state)


class FilterModule:
    def filters(self):
        return {"compile": compile_mesh, "rollout_plan": rollout_plan,
                "rollout_step": rollout_step, "rollout_report": rollout_report}
