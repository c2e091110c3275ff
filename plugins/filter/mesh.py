"""Filters that hand the inventory and the canary rollouts' state to the vmesh compiler (src/vmesh); the mesh itself
is compiled by the action vmesh.mesh.build."""

from __future__ import annotations

# Each filter is documented in the YAML file named after it, beside this one (ansible-doc -t filter vmesh.mesh.NAME).

from ansible.errors import AnsibleFilterError

try:
    from vmesh import inputs, monitoring, ratelimit, registry, rollout
    from vmesh.errors import MeshError
except ImportError as exc:  # pragma: no cover - install problem, reported when the filter is used
    inputs = monitoring = ratelimit = registry = rollout = None
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None

def _installed(name):
    if IMPORT_ERROR is not None:
        raise AnsibleFilterError(f"{name}: the vmesh package is not installed for this Python "
                                 f"({IMPORT_ERROR}); pip install the project") from IMPORT_ERROR


def _states(name, rollouts):
    if not isinstance(rollouts, dict) or not all(isinstance(v, dict) for v in rollouts.values()):
        raise AnsibleFilterError(f"{name}: rollouts must be a mapping of service name to saved state")
    return rollouts


def rollout_plan(rollouts, hostvars, hosts, only=None, abort=False, now=0.0):
    _installed("vmesh.mesh.rollout_plan")
    states = _states("vmesh.mesh.rollout_plan", rollouts or {})
    try:
        mesh_registry = registry.build(inputs.mesh_variables(hostvars, hosts))
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


def rollout_queries(state, seconds):
    _installed("vmesh.mesh.rollout_queries")
    if not isinstance(state, dict) or isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise AnsibleFilterError("vmesh.mesh.rollout_queries: expects a rollout state and the stage's length in seconds")
    return rollout.prometheus_queries(state, float(seconds))


def rollout_step_prometheus(state, answers, started, ended):
    _installed("vmesh.mesh.rollout_step_prometheus")
    if not isinstance(state, dict) or not isinstance(answers, dict):
        raise AnsibleFilterError("vmesh.mesh.rollout_step_prometheus: expects a rollout state and {query name: "
                                 "Prometheus's JSON answer}")
    try:
        return rollout.step_from_prometheus(state, answers, float(started), float(ended))
    except MeshError as exc:
        raise AnsibleFilterError(f"vmesh.mesh.rollout_step_prometheus: {exc}") from exc


def rollout_report(state):
    _installed("vmesh.mesh.rollout_report")
    if not isinstance(state, dict):
        raise AnsibleFilterError("vmesh.mesh.rollout_report: expects a rollout state")
    return rollout.summary(state)


def prometheus_files(hostvars, hosts, config_dir="/etc/prometheus", scrape_interval="15s",
                     evaluation_interval="15s"):
    _installed("vmesh.mesh.prometheus_files")
    try:
        variables = inputs.mesh_variables(hostvars, hosts)
        mesh_registry = registry.build(variables)
    except MeshError as exc:
        raise AnsibleFilterError(f"vmesh.mesh.prometheus_files: {exc}") from exc
    addresses = {host: str(v.get("vmesh_address") or v.get("ansible_host") or host) for host, v in variables.items()}
    targets, rules = f"{config_dir}/vmesh-targets.json", f"{config_dir}/vmesh-rules.yml"
    return {"vmesh-targets.json": monitoring.dumps(monitoring.targets(mesh_registry, addresses)),
            "vmesh-rules.yml": monitoring.dumps(monitoring.RULES),
            "prometheus.yml": monitoring.dumps(monitoring.config(targets, rules, scrape_interval=str(scrape_interval),
                                                                 evaluation_interval=str(evaluation_interval)))}


def jaeger_config(max_traces=100000, listen="0.0.0.0", ui_assets=""):
    _installed("vmesh.mesh.jaeger_config")
    if isinstance(max_traces, bool) or not isinstance(max_traces, int) or max_traces < 1:
        raise AnsibleFilterError(f"vmesh.mesh.jaeger_config: max_traces must be a positive integer, not {max_traces!r}")
    return monitoring.dumps(monitoring.jaeger_config(listen=str(listen), max_traces=max_traces,
                                                     ui_assets=str(ui_assets or "")))


def ratelimit_files(domains, checker="", variable="ratelimit_domains"):
    _installed("vmesh.mesh.ratelimit_files")
    try:
        files = ratelimit.files(domains, str(variable))
        if checker:
            ratelimit.check(files, str(checker))
    except MeshError as exc:
        raise AnsibleFilterError(f"vmesh.mesh.ratelimit_files: {exc}") from exc
    return files


def ratelimit_environment(config_dir, grpc_port=8081, http_port=8080, debug_port=6070, redis_url="127.0.0.1:6379",
                          log_level="warn"):
    _installed("vmesh.mesh.ratelimit_environment")
    ports = {"grpc_port": grpc_port, "http_port": http_port, "debug_port": debug_port}
    for name, port in ports.items():
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise AnsibleFilterError(f"vmesh.mesh.ratelimit_environment: {name} must be a port number, not {port!r}")
    if len(set(ports.values())) != len(ports):
        raise AnsibleFilterError(f"vmesh.mesh.ratelimit_environment: the ports must differ: {ports}")
    try:
        return ratelimit.environment_file(ratelimit.environment(str(config_dir), redis_url=str(redis_url),
                                                                log_level=str(log_level), **ports))
    except MeshError as exc:
        raise AnsibleFilterError(f"vmesh.mesh.ratelimit_environment: {exc}") from exc


class FilterModule:
    def filters(self):
        return {"rollout_plan": rollout_plan, "rollout_step": rollout_step, "rollout_report": rollout_report,
                "rollout_queries": rollout_queries, "rollout_step_prometheus": rollout_step_prometheus,
                "prometheus_files": prometheus_files, "jaeger_config": jaeger_config,
                "ratelimit_files": ratelimit_files, "ratelimit_environment": ratelimit_environment}
