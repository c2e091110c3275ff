"""What the network benchmarks share: a NetMesh whose proxies can be swapped, nginx as the app, /proc readings.

``datapath.py`` and ``reload.py`` run real traffic between Linux network namespaces made by the test harness's
:class:`NetMesh` (tests/harness/netmesh.py: namespaces on one bridge, Envoy as uid 1337 on the files vmesh compiles,
the real boot-time redirect, apps as uid 1000). :class:`BenchMesh` adds what a comparison needs without touching
the harness: the same namespaces and redirect with no proxy at all (``proxies="none"``), with a minimal hand-written
Envoy pair (``"minimal"``), or with vmesh's compiled files, optionally edited by a function (``edit``) to measure
what one piece of them costs. Nothing here leaves the namespaces it made; every wait is bounded.

Needs root (``can_run()``) and nginx; ``datapath.py`` also wrk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
# the harness and the collection's module_utils, as pytest's pythonpath (pyproject.toml) puts them
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / ".collections")]

from harness.netmesh import APP_UID, PROXY_UID, NetMesh, NetMeshError, can_run  # noqa: E402
from vmesh.compile import BOOTSTRAP_FILE, HostConfig  # noqa: E402

__all__ = ["APP_PORT", "BenchMesh", "NetMeshError", "can_run", "cpu_seconds", "median", "percentile",
           "remove_leftovers", "renice", "rss_mb", "run_as_app", "start_nginx"]

APP_PORT = 8080
BODY_BYTES = 1024  # the 1 KB response of the anchor figures
NGINX = "/usr/sbin/nginx"
VALGRIND = "/usr/bin/valgrind"
CALLGRIND_CONTROL = "/usr/bin/callgrind_control"
CALLGRIND_READY_TIMEOUT = 300.0  # Envoy starts some 50 times slower under valgrind
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 30.0

Edit = Callable[[str, dict[str, Any]], None]  # (host, {file name: parsed JSON}) -> None, edits in place


# --- the minimal pair: what any sidecar pair of this shape needs, and nothing else ---------------------------------

def _address(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def _router_hcm(stat_prefix: str, cluster: str) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": {"name": stat_prefix, "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}


def _tls_context(certs: str) -> dict[str, Any]:
    return {"tls_certificates": [{"certificate_chain": {"filename": f"{certs}/cert-chain.pem"},
                                  "private_key": {"filename": f"{certs}/key.pem"}}],
            "validation_context": {"trusted_ca": {"filename": f"{certs}/root-cert.pem"}}}


def _listener(name: str, port: int, chain: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "address": _address("0.0.0.0", port), "filter_chains": [chain],
            "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}]}


def _cluster(name: str, ip: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", **extra, "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(ip, port)}}]}]}}


def minimal_client(certs: str, server: str, port: int, server_identity: str) -> dict[str, Any]:
    """Outbound only: the redirected call (15001, original_dst) -> router -> mTLS to the server's address."""
    context = _tls_context(certs)
    context["validation_context"]["match_typed_subject_alt_names"] = [
        {"san_type": "URI", "matcher": {"exact": server_identity}}]
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": context}}
    return {"admin": {"address": _address("127.0.0.1", 15000)}, "static_resources": {
        "listeners": [_listener("outbound", 15001, {"filters": [_router_hcm("outbound", "upstream")]})],
        "clusters": [_cluster("upstream", server, port, transport_socket=tls)]}}


def minimal_server(certs: str, port: int) -> dict[str, Any]:
    """Inbound only: the redirected call (15006, original_dst) -> mTLS, client certificate required -> router ->
    the app on 127.0.0.1."""
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True, "common_tls_context": _tls_context(certs)}}
    chain = {"filters": [_router_hcm("inbound", "app")], "transport_socket": tls}
    return {"admin": {"address": _address("127.0.0.1", 15000)}, "static_resources": {
        "listeners": [_listener("inbound", 15006, chain)], "clusters": [_cluster("app", "127.0.0.1", port)]}}


# --- the mesh ------------------------------------------------------------------------------------------------------

class BenchMesh(NetMesh):
    """A :class:`NetMesh` whose proxies are vmesh's (``"vmesh"``, files optionally changed by ``edit``), a minimal
    hand-written pair (``"minimal"``: ``client`` calls ``server``) or none (``"none"``: no Envoy, no redirect).
    The namespaces, addresses, certificates and, with proxies, the redirect are the harness's in every case."""

    def __init__(self, name: str, hosts: Mapping[str, Mapping[str, Any]], sources: Sequence[tuple[str, str]],
                 tmp_path: Path, *, proxies: str = "vmesh", edit: Edit | None = None, callgrind: bool = False,
                 **options: Any):
        if proxies not in ("vmesh", "minimal", "none"):
            raise NetMeshError(f"proxies: expected vmesh, minimal or none, got {proxies!r}")
        self.proxies = proxies
        self.edit = edit
        self.callgrind = callgrind
        super().__init__(name, hosts, sources, tmp_path, **options)

    def _compile(self, sources):
        configs = super()._compile(sources)
        if self.proxies == "minimal":
            client, server = self.host_vars("client"), self.host_vars("server")
            boots = {"client": minimal_client(client["vmesh_certs_dir"], self.address("server"), APP_PORT,
                                              self.identity("server")),
                     "server": minimal_server(server["vmesh_certs_dir"], APP_PORT)}
            configs = {host: dataclasses.replace(config, files={BOOTSTRAP_FILE: _dumps(boots[host])})
                       for host, config in configs.items()}
        elif self.edit is not None:
            configs = {host: self._edited(host, config) for host, config in configs.items()}
        return configs

    def _edited(self, host: str, config: HostConfig) -> HostConfig:
        parsed = {name: json.loads(text) for name, text in config.files.items()}
        self.edit(host, parsed)
        return dataclasses.replace(config, files={name: _dumps(data) for name, data in parsed.items()})

    def _start_envoy(self, host) -> None:
        if self.proxies != "none":
            super()._start_envoy(host)

    def _in_ns(self, host, uid, argv):
        """With ``callgrind``, Envoy runs under valgrind's callgrind, counting from the start; its dumps go to the
        host's run directory (``callgrind.out.N``, see :meth:`instructions`)."""
        if self.callgrind and argv and argv[0] == self._envoy:
            argv = [VALGRIND, "--tool=callgrind", "--vgdb=yes", f"--vgdb-prefix={_vgdb_prefix(host)}",
                    "--dump-line=no", "--compress-strings=no", f"--callgrind-out-file={host.run_dir}/callgrind.out",
                    *argv]
        return super()._in_ns(host, uid, argv)

    def _callgrind_control(self, option: str, pid: int, host: str) -> None:
        """``callgrind_control OPTION PID`` as the proxy's user (run as root, its helper vgdb waits forever on the
        pipes the proxy's valgrind made), through those pipes in the host's run directory."""
        h = self._host(host)
        argv = self._in_ns(h, PROXY_UID, [CALLGRIND_CONTROL, f"--vgdb-prefix={_vgdb_prefix(h)}", option, str(pid)])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd="/")
        except subprocess.TimeoutExpired:
            raise NetMeshError(f"{host}: callgrind_control {option} {pid} did not return within 120 s") from None
        if proc.returncode != 0 or "Error" in proc.stdout:
            raise NetMeshError(f"{host}: callgrind_control {option} {pid} failed: {proc.stdout}{proc.stderr}")

    def zero_instructions(self) -> None:
        """Set every proxy's callgrind counters to zero (``callgrind: True`` only)."""
        for host, pid in self.proxy_pids().items():
            self._callgrind_control("--zero", pid, host)

    def instructions(self) -> dict[str, int]:
        """{host: user-space instructions its Envoy ran since the last :meth:`zero_instructions`}, all threads, from
        a callgrind dump (valgrind runs the threads one at a time: the count is the same for the same work)."""
        counts = {}
        for host, pid in self.proxy_pids().items():
            run_dir = self._host(host).run_dir
            before = set(run_dir.glob("callgrind.out.*"))
            self._callgrind_control("--dump", pid, host)
            dumps = sorted(set(run_dir.glob("callgrind.out.*")) - before, key=lambda p: int(p.suffix[1:]))
            if not dumps:
                raise NetMeshError(f"{host}: callgrind wrote no dump in {run_dir}")
            totals = [int(line.split()[1]) for line in dumps[-1].read_text(errors="replace").splitlines()
                      if line.startswith(("totals:", "summary:"))]
            if not totals:
                raise NetMeshError(f"{host}: no totals in {dumps[-1]}")
            counts[host] = totals[0]
        return counts

    def _apply_redirect(self, host) -> None:
        if self.proxies != "none":
            super()._apply_redirect(host)

    def _wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        if self.callgrind:
            timeout = max(timeout, CALLGRIND_READY_TIMEOUT)
        if self.proxies == "vmesh":
            super()._wait_ready(timeout)
        elif self.proxies == "minimal":  # no readiness listener: Envoy's admin /ready (LIVE) says the same
            for host in self.hosts:
                deadline = time.monotonic() + timeout
                while True:
                    self.envoy_pid(host)  # raises, with the log, if Envoy exited
                    try:
                        self.admin(host, "/ready")
                        break
                    except NetMeshError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)

    def proxy_pids(self) -> dict[str, int]:
        """{host: Envoy's pid} (empty without proxies): the harness's process, as ``ip netns exec`` and
        ``setpriv`` exec Envoy."""
        pids = {} if self.proxies == "none" else {host: self.envoy_pid(host) for host in self.hosts}
        for host, pid in pids.items():
            if not Path(f"/proc/{pid}/comm").read_text().strip().startswith(
                    "callgrind" if self.callgrind else "envoy"):
                raise NetMeshError(f"{host}: process {pid} is not Envoy; its CPU and RSS would say nothing")
        return pids


def _vgdb_prefix(host) -> str:
    """Where valgrind's control pipes go: the host's run directory, removed with the mesh (an interrupted run leaves
    none in /tmp)."""
    return f"{host.run_dir}/vgdb-pipe"


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def remove_leftovers(names: Sequence[str], tmp_path: Path) -> None:
    """Delete what an interrupted run of these meshes left (namespaces, their processes, files), by name."""
    for name in names:
        NetMesh(name, {"client": {}}, (), tmp_path)._remove_leftovers()


# --- the app: nginx, 1 KB per answer ------------------------------------------------------------------------------

NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server {{
        listen {port};
        add_header x-version {version} always;
        location / {{ root {www}; index body; }}
    }}
}}
"""


def start_nginx(mesh: NetMesh, host: str, version: str = "v1") -> subprocess.Popen:
    """nginx as uid 1000 on APP_PORT (0.0.0.0: direct calls reach it too): a 1 KB body on every path, the header
    ``x-version: <version>``, no access log. Its files go in the host's folder (removed with the mesh)."""
    app = mesh.file(host, "app")
    www, run = app / "www", app / "run"
    for folder in (app, www, run):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)
    os.chown(run, APP_UID, APP_UID)
    (www / "body").write_text("x" * (BODY_BYTES - 1) + "\n")
    conf = app / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=run, www=www, port=APP_PORT, version=version))
    for path in (www / "body", conf):
        os.chmod(path, 0o644)
    return mesh.start_app(host, [NGINX, "-c", str(conf), "-e", str(run / "error.log")], name="nginx",
                          wait_port=APP_PORT)


def run_as_app(mesh: NetMesh, host: str, argv: Sequence[str], timeout: float, nice: int = 0) -> str:
    """``argv`` in ``host``'s namespace as uid 1000 (captured like an app), at niceness ``nice``; its stdout.
    Raises on failure."""
    wrapped = ["ip", "netns", "exec", mesh.namespace(host), *(["nice", "-n", str(nice)] if nice else []),
               "setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups", "--", *argv]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/"}
    try:
        proc = subprocess.run(wrapped, capture_output=True, text=True, timeout=timeout, env=env, cwd="/", check=False)
    except subprocess.TimeoutExpired:
        raise NetMeshError(f"{argv[0]} in {host} did not finish within {timeout} s") from None
    if proc.returncode != 0:
        raise NetMeshError(f"{argv[0]} in {host} failed (rc={proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def renice(pids: Sequence[int], value: int) -> None:
    """Set the niceness of every thread of these processes (Linux keeps one per thread)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.setpriority(os.PRIO_PROCESS, int(task.name), value)


# --- readings --------------------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU of the whole process (all threads) so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of the line


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise NetMeshError(f"no VmRSS for pid {pid}")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) of already sorted values, interpolated between the two nearest ranks."""
    if not sorted_values:
        return float("nan")
    rank = (len(sorted_values) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
