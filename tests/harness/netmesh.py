"""A fast multi-host mesh in Linux network namespaces: real Envoy sidecars, the real iptables redirect.

Each inventory host becomes a network namespace ``vm-<name>-<host>`` that looks like a small VM to everything
in it: ``lo``, an ``eth0`` with the host's address on one shared switch (a Linux bridge in the namespace
``vm-<name>-switch``, no uplink), a default route (so the service VIPs in 240.240.0.0/16 are routed and reach
the ``nat OUTPUT`` chain), its own ``/etc/hosts`` (``/etc/netns/<ns>/hosts``, which ``ip netns exec`` mounts over
``/etc/hosts``) with the compiled service names, Envoy running as uid 1337 on the compiled files, and the
redirect applied by the real boot-time helper (``vmesh-iptables apply``). Applications and test clients run as
uid 1000, so their calls are captured exactly as on a VM. The root namespace's network is never touched; nothing leaves
these namespaces.

    mesh = NetMesh("demo", {"reviews-v1": {...}, "client": {}}, [("mesh/dr.yaml", text)], tmp_path)
    with mesh:                      # start() ... stop()
        mesh.start_bookinfo("reviews-v1")
        mesh.request("client", "http://reviews:9080/reviews/0").status   # 200, through both sidecars

What a test uses:

- ``start()`` / ``stop()`` (or ``with``); ``address(host)``, ``namespace(host)``, ``resolve(host, name)``;
- ``start_app(host, argv, env=None)``, ``start_bookinfo(host)``, ``start_echo(host, port=None, tcp=False)`` (apps run
  as uid 1000 with the host's name as hostname; logs in ``<tmp_path>/logs``);
- ``request(host, url, ...) -> Response``, ``sample(host, url, count) -> Counter``, ``tcp(host, address, port,
  payload) -> bytes``, all from inside the host's namespace, as uid 1000 unless ``uid=`` says otherwise;
- ``push(sources)``: recompile and swap the changed files in place, as the config module does; waits until every
  Envoy has read them;
- ``admin(host, path)``, ``stats(host, prefix)``, ``uptime(host)``, ``envoy_pid(host)``.

Files: each host's Envoy config dir (``vmesh_config_dir``) is ``/run/vmesh-netmesh/<namespace>/envoy``, which
Envoy as uid 1337 can read (pytest's tmp_path is under a 0700 directory); ``tmp_path`` gets the logs
(``logs/<host>.envoy.log``, ``logs/<host>.<app>.log``), each host's ``redirect.json`` and, at ``stop()``, a copy of
the Envoy files last applied (``hosts/<host>/envoy``).

Every command, wait and request here is bounded in time. Needs root, ``ip``, ``setpriv`` and iptables
(:func:`can_run`); the pytest fixtures are in ``netmesh_fixtures.py``, the programs run inside the namespaces
in ``apps/``.
"""

from __future__ import annotations

import base64
import collections
import copy
import dataclasses
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from harness import certs
from harness import APPS, ROOT, TARGET_PYTHON
from vmesh import envoy as envoy_mod
from vmesh import load
from vmesh.compile import BOOTSTRAP_FILE, HostConfig, render_all

# The boot-time helper as the vmesh-redirect unit runs it: python3 -I, the collection on its path.
IPTABLES_CLI = Path(__file__).resolve().parent / "vmesh_iptables.py"
CONFIG_MODULE = ROOT / "plugins" / "modules" / "envoy_config.py"
BOOKINFO = ROOT / "examples" / "bookinfo" / "roles" / "bookinfo" / "files" / "bookinfo.py"
# The programs run inside a namespace (system python3, standard library only), in harness/apps.
ECHO_SERVER = APPS / "echo_server.py"
HTTP_CLIENT = APPS / "http_client.py"
TCP_CLIENT = APPS / "tcp_client.py"
WAIT_READY = APPS / "wait_ready.py"
ENVOY_ADMIN = APPS / "envoy_admin.py"

PROXY_UID = 1337  # Envoy's uid and gid, exempt from capture (vmesh_proxy_uid's default)
APP_UID = 1000  # applications and test clients: an ordinary user, captured
ADMIN_PORT = 15000
READY_URL = "http://127.0.0.1:15021/healthz/ready"
NETWORK = ipaddress.ip_network("198.18.0.0/16")  # RFC 2544 benchmark range: private to these namespaces
FIRST_HOST_ADDRESS = 10  # 198.18.0.10 is the first host
#: The redirect's inbound exclusions, as the redirect role sets them (SSH and the proxy's own ports).
EXCLUDE_INBOUND_PORTS = [22, 15000, 15001, 15006, 15021, 15090]

SBIN_PATH = os.pathsep.join(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
NAME_RE = re.compile(r"^[a-z0-9]{1,24}$")  # no "-": "vm-<name>-" must not be the prefix of another mesh's names
SWITCH = "switch"
RUN_ROOT = Path("/run/vmesh-netmesh")

COMMAND_TIMEOUT = 30.0
READY_TIMEOUT = 30.0
PUSH_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


class NetMeshError(Exception):
    """The harness could not do what was asked; the message says what and shows the relevant log."""


def can_run() -> bool:
    """Root, and ``ip``, ``setpriv``, ``unshare``, ``iptables-save``/``-restore`` present."""
    return (hasattr(os, "geteuid") and os.geteuid() == 0
            and all(shutil.which(tool, path=SBIN_PATH) for tool in
                    ("ip", "setpriv", "unshare", "iptables", "iptables-save", "iptables-restore")))


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small, predictable environment: no proxies, no inherited Python settings."""
    env = {"PATH": SBIN_PATH, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "HOME": "/", "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


def _run(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True,
         input: str | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input,
                              env=_env(), cwd="/", check=False)
    except subprocess.TimeoutExpired:
        raise NetMeshError(f"{' '.join(argv)} did not finish within {timeout} s") from None
    if check and proc.returncode != 0:
        raise NetMeshError(f"{' '.join(argv)} failed (rc={proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path}: no log)"
    return f"--- last lines of {path}:\n" + "\n".join(text.splitlines()[-lines:])


def _listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on ``port`` in the network namespace of process ``pid``.

    ``/proc/PID/net/tcp`` shows the sockets of that process's network namespace, so this needs no subprocess.
    """
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except (OSError, ValueError, IndexError):
            return False
    return False


def _remove_shared_memory(base_id_file: Path) -> None:
    """Remove the hot-restart shared memory of a stopped Envoy (Envoy leaves it behind): its name is
    ``envoy_shared_memory_<base id * 10 + restart epoch>``, the base id the one Envoy wrote to ``base_id_file``."""
    try:
        base_id = int(base_id_file.read_text().strip())
    except (OSError, ValueError):
        return
    path = Path("/dev/shm") / f"envoy_shared_memory_{base_id * 10}"
    try:
        if path.stat().st_uid == PROXY_UID:
            path.unlink()
    except OSError:
        pass


# --- results ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Response:
    """One HTTP exchange as the client saw it. ``status`` 0: no answer (see ``error``)."""

    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    elapsed: float  # seconds, measured by the client inside the namespace
    reason: str = ""
    error: str | None = None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:  # readable in assertion messages
        shown = self.text if len(self.body) <= 300 else self.text[:300] + "…"
        return (f"Response(status={self.status}, error={self.error!r}, elapsed={self.elapsed:.3f}, "
                f"headers={self.headers!r}, body={shown!r})")


@dataclasses.dataclass
class _Host:
    name: str
    index: int
    namespace: str
    address: str
    veth: str  # the switch's side of the host's link; the host's side is eth0
    slug: str  # the host's name as a file name
    artifacts: Path  # tmp_path/hosts/<host>: redirect.json, and a copy of the Envoy files at stop()
    vars: dict[str, Any]
    envoy: subprocess.Popen | None = None
    outside: bool = False  # netmesh_outside: a host on the network but not in the mesh (no Envoy, no redirect)
    apps: list[tuple[str, subprocess.Popen]] = dataclasses.field(default_factory=list)

    # The host's own files live in /run/vmesh-netmesh/<namespace>, not under pytest's tmp_path: Envoy reads them
    # as uid 1337, and pytest keeps /tmp/pytest-of-root at 0700 (a pytest session starting elsewhere on the machine
    # resets it). Being found by namespace name, they are also removed with an interrupted run's leftovers.

    @property
    def root(self) -> Path:
        return RUN_ROOT / self.namespace

    @property
    def config_dir(self) -> Path:
        return self.root / "envoy"  # vmesh_config_dir; staging dirs go beside it (same filesystem)

    @property
    def run_dir(self) -> Path:
        # Envoy's --base-id-path, writable by the proxy user. Envoy dies with its parent (hot restart sets
        # PR_SET_PDEATHSIG) but leaves /dev/shm/envoy_shared_memory_<base id * 10> behind; this finds it.
        return self.root / "run"


def _config_module() -> Any:
    """The vmesh_envoy_config module's own code: the harness swaps files in the order it plans them."""
    spec = importlib.util.spec_from_file_location("vmesh_envoy_config", CONFIG_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CONFIG_MODULE = _config_module()


_RDS_STAT = re.compile(r"\.rds\.(.+)\.update_attempt$")


def _route_names(config: HostConfig) -> set[str]:
    """Names of the route configurations in a host's files (one per ``rds_*.json``)."""
    return {json.loads(text)["resources"][0]["name"] for name, text in config.files.items() if name.startswith("rds_")}


def write_config(dest: Path, files: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Make ``dest`` hold exactly ``files``, the way the vmesh_envoy_config module does it on a VM.

    Each changed file is written to a staging directory beside ``dest`` (same filesystem) and renamed into
    ``dest`` (Envoy reloads on the move) in the module's own order (:func:`plan`: secrets, clusters, routes,
    ``lds.json``); stale files go last.
    Returns (changed, removed) file names in the order they were applied.
    """
    _, changed, removed = _CONFIG_MODULE.plan(str(dest), files, BOOTSTRAP_FILE)
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    staging = Path(tempfile.mkdtemp(prefix=".vmesh-staging-", dir=dest.parent))
    try:
        for name in changed:
            staged = staging / name
            staged.write_text(files[name], encoding="utf-8")
            os.chmod(staged, 0o644)
            os.rename(staged, dest / name)
        for name in removed:
            (dest / name).unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return changed, removed


# --- the mesh ----------------------------------------------------------------------------------------------------


class NetMesh:
    """Hosts of an inventory as network namespaces with real sidecars. See the module docstring."""

    def __init__(self, name: str, hosts: Mapping[str, Mapping[str, Any]], sources: Iterable[tuple[str, str]] = (),
                 tmp_path: Path | str | None = None, *, concurrency: int = 1,
                 envoy_args: Sequence[str] = ("--drain-time-s", "5", "--drain-strategy", "immediate",
                                              "--file-flush-interval-msec", "1000")):
        if not NAME_RE.match(name):
            raise NetMeshError(f"mesh name {name!r}: expected 1-24 of [a-z0-9] (it prefixes namespace names)")
        if not hosts:
            raise NetMeshError("a mesh needs at least one host")
        if tmp_path is None:
            raise NetMeshError("tmp_path is required (the hosts' config dirs and logs go there)")
        self.name = name
        self.tmp_path = Path(tmp_path).resolve()
        self.concurrency = concurrency
        self.envoy_args = list(envoy_args)
        self.sources = list(sources)
        self.startup_seconds: float | None = None
        self.logs = self.tmp_path / "logs"
        self._hosts: dict[str, _Host] = {}
        self._configs: dict[str, HostConfig] = {}
        self._left: set[str] = set()  # hosts a push took out of the inventory (see push)
        self._drained: set[str] = set()  # hosts a push took out of every client's endpoints (see push)
        self._started = False
        self._envoy = envoy_mod.binary()
        for index, (host, hostvars) in enumerate(hosts.items()):
            slug = re.sub(r"[^A-Za-z0-9_.-]", "_", host)
            if slug == SWITCH:
                raise NetMeshError(f"host name {host!r} is taken by the mesh's switch namespace")
            variables = copy.deepcopy(dict(hostvars))
            address = str(NETWORK.network_address + FIRST_HOST_ADDRESS + index)
            variables.pop("vmesh_address", None)
            variables["ansible_host"] = address
            namespace = f"vm-{name}-{slug}"
            variables["vmesh_config_dir"] = str(RUN_ROOT / namespace / "envoy")
            variables.setdefault("vmesh_certs_dir", "{root}/certs")  # its mesh certificate (see issue())
            for key, value in variables.items():  # "{root}" in a path variable: the host's own folder
                if key.startswith("vmesh_") and isinstance(value, str):
                    variables[key] = value.replace("{root}", str(RUN_ROOT / namespace))
            self._hosts[host] = _Host(host, index, namespace, address, f"vmv{index}", slug,
                                      self.tmp_path / "hosts" / slug, variables,
                                      outside=bool(variables.get("netmesh_outside")))
        self.switch = f"vm-{name}-{SWITCH}"
        self._configs = self._compile(self.sources)

    # --- names and addresses ---

    @property
    def hosts(self) -> list[str]:
        return list(self._hosts)

    def address(self, host: str) -> str:
        return self._host(host).address

    @property
    def registry(self) -> Any:
        """The registry the mesh was last compiled with (vmesh.registry.Registry)."""
        return self._registry

    def namespace(self, host: str) -> str:
        return self._host(host).namespace

    def resolve(self, host: str, name: str) -> str:
        """The address ``name`` has in ``host``'s /etc/hosts (a service name gives its VIP)."""
        for line in self._hosts_file(self._host(host)).splitlines():
            address, *names = line.split()
            if name in names:
                return address
        raise NetMeshError(f"{name!r} is not in {host}'s /etc/hosts")

    def _hosts_file(self, host: _Host) -> str:
        lines = ["127.0.0.1 localhost", f"{host.address} {host.name}"]
        if not host.outside:
            lines += self._configs[host.name].hosts_entries
        lines += list(host.vars.get("netmesh_etc_hosts", []))
        return "\n".join(lines) + "\n"

    def file(self, host: str, relative: str) -> Path:
        """Where ``netmesh_files`` put ``relative`` on ``host`` (under /run/vmesh-netmesh/<namespace>)."""
        return self._host(host).root / relative

    def host_vars(self, host: str) -> dict[str, Any]:
        """The variables the compiler saw for ``host`` (with the address and config dir the harness set)."""
        return copy.deepcopy(self._host(host).vars)

    def config(self, host: str) -> HostConfig:
        """The compiled config currently written for ``host``."""
        return self._configs[host]

    def envoy_pid(self, host: str) -> int:
        proc = self._host(host).envoy
        if proc is None or proc.poll() is not None:
            raise NetMeshError(f"{host}: Envoy is not running\n{_tail(self._envoy_log(host))}")
        return proc.pid

    def _host(self, host: str) -> _Host:
        try:
            return self._hosts[host]
        except KeyError:
            raise NetMeshError(f"no host {host!r} in mesh {self.name} (hosts: {', '.join(self._hosts)})") from None

    def _envoy_log(self, host: str) -> Path:
        return self.logs / f"{self._host(host).slug}.envoy.log"

    def log(self, host: str, name: str = "envoy") -> str:
        """What Envoy (``"envoy"``) or an app started by ``start_app`` under ``name`` wrote on ``host`` so far."""
        path = self.logs / f"{self._host(host).slug}.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _compile(self, sources: Iterable[tuple[str, str]]) -> dict[str, HostConfig]:
        mesh = load.mesh({h.name: h.vars for h in self._hosts.values() if not h.outside and h.name not in self._left},
                         list(sources), drained=self._drained)
        self._registry = mesh.registry
        return render_all(mesh)

    @property
    def _mesh_hosts(self) -> list[_Host]:
        return [h for h in self._hosts.values() if not h.outside]

    # --- life cycle ---

    def __enter__(self) -> NetMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> NetMesh:
        """Namespaces, switch, addresses, routes, /etc/hosts, Envoy (ready), redirect. Bounded; cleans up on failure."""
        if self._started:
            raise NetMeshError(f"mesh {self.name} is already started")
        started = time.monotonic()
        self._remove_leftovers()
        self._started = True
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            self._create_network()
            for host in self._hosts.values():
                self._prepare_host(host)
            for host in self._mesh_hosts:
                self._start_envoy(host)
            self._wait_ready()
            self._parallel(self._apply_redirect, self._mesh_hosts)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every process, remove the redirect, delete the namespaces and /etc/netns dirs. Idempotent."""
        procs = []
        for host in self._hosts.values():
            procs += [proc for _, proc in host.apps]
            if host.envoy is not None:
                procs.append(host.envoy)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        for host in self._hosts.values():
            host.apps.clear()
            host.envoy = None
        if self._started:
            existing = set(self._namespaces())
            # Deleting a namespace drops its tables anyway; removing the rules first is what a VM's uninstall does.
            self._parallel(lambda host: _run(self._in_ns(host, None, [TARGET_PYTHON, "-I", str(IPTABLES_CLI),
                                                                      "remove"]), check=False),
                           [host for host in self._mesh_hosts if host.namespace in existing])
        for host in self._hosts.values():  # what the Envoys last read, for a look after the test
            if host.config_dir.is_dir():
                shutil.rmtree(host.artifacts / "envoy", ignore_errors=True)
                shutil.copytree(host.config_dir, host.artifacts / "envoy")
        self._remove_leftovers()
        self._started = False

    def _namespaces(self) -> list[str]:
        out = _run(["ip", "netns", "list"]).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def _remove_leftovers(self) -> None:
        """Delete this mesh's namespaces and /etc/netns dirs by name, stopping whatever still runs in them."""
        prefix = f"vm-{self.name}-"
        for ns in self._namespaces():
            if not ns.startswith(prefix):
                continue
            pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:  # processes of an interrupted run of this mesh, found by its namespace
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run(["ip", "netns", "del", ns], check=False)
        for path in RUN_ROOT.glob(prefix + "*") if RUN_ROOT.is_dir() else ():
            _remove_shared_memory(path / "run" / "base-id")
            shutil.rmtree(path, ignore_errors=True)
        try:
            RUN_ROOT.rmdir()  # only when no other mesh uses it
        except OSError:
            pass
        netns_etc = Path("/etc/netns")
        if netns_etc.is_dir():
            for path in netns_etc.glob(prefix + "*"):
                shutil.rmtree(path, ignore_errors=True)

    def _create_network(self) -> None:
        _run(["ip", "netns", "add", self.switch])
        _run(["ip", "-n", self.switch, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge", "stp_state", "0"])
        _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        for host in self._hosts.values():
            ns = host.namespace
            _run(["ip", "netns", "add", ns])
            # Both ends are created from inside the switch namespace: the root namespace never sees them.
            _run(["ip", "-n", self.switch, "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
                  "netns", ns])
            _run(["ip", "-n", self.switch, "link", "set", host.veth, "master", "br0", "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{host.address}/{NETWORK.prefixlen}", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "route", "add", "default", "dev", "eth0"])
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(self._hosts_file(host))
            # Names that are not in /etc/hosts fail at once instead of waiting for a DNS server nobody reaches.
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
            for path in (etc / "hosts", etc / "resolv.conf"):
                os.chmod(path, 0o644)

    def _prepare_host(self, host: _Host) -> None:
        for path in (RUN_ROOT, host.root):
            path.mkdir(exist_ok=True)
            os.chmod(path, 0o755)
        host.artifacts.mkdir(parents=True, exist_ok=True)
        for relative, content in host.vars.get("netmesh_files", {}).items():
            # files a test puts on the "VM" (certificates...), readable by the proxy's uid
            path = host.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            for parent in [path.parent, *path.parent.parents]:
                if parent == host.root:
                    break
                os.chmod(parent, 0o755)
            path.write_text(content)
            os.chmod(path, 0o644)
        if host.outside:
            return
        self.issue(host.name)
        write_config(host.config_dir, self._configs[host.name].files)
        host.run_dir.mkdir(exist_ok=True)
        os.chown(host.run_dir, PROXY_UID, PROXY_UID)
        # a gateway's own listening ports stay out of capture, as the redirect role does it
        exclude = sorted(set(EXCLUDE_INBOUND_PORTS) | set(self._configs[host.name].edge_ports))
        redirect = {"proxy_uid": PROXY_UID, "proxy_gid": PROXY_UID, "exclude_inbound_ports": exclude}
        (host.artifacts / "redirect.json").write_text(json.dumps(redirect, indent=2, sort_keys=True) + "\n")

    @property
    def ca_dir(self) -> Path:
        """The mesh's test CA (``ca.crt``, ``ca.key``), made at the first :meth:`issue`."""
        return self.tmp_path / "mesh-ca"

    def identity(self, host: str) -> str:
        """The SPIFFE id the compiler gives ``host``."""
        return self._registry.identity(self._registry.workloads[host])

    def issue(self, host: str, identity: str | None = None, *, ca_dir: Path | None = None,
              bundle: str | None = None) -> Path:
        """Put a mesh certificate for ``identity`` (default: the host's own) into the host's certs dir, signed by
        the mesh's test CA or the one in ``ca_dir``, trusting that CA or the PEM ``bundle``; returns the dir.
        Envoy reads it through SDS."""
        if not (self.ca_dir / "ca.crt").exists():
            certs.make_ca(self.ca_dir, "vmesh netmesh CA")
        workload = self._registry.workloads[host]
        return certs.make_workload(Path(workload.certs_dir), ca_dir or self.ca_dir, identity or self.identity(host),
                                   bundle=bundle)

    def _in_ns(self, host: _Host, uid: int | None, argv: Sequence[str]) -> list[str]:
        """argv run in the host's namespace, as ``uid`` (None: root, like the VM's own admin tools)."""
        prefix = ["ip", "netns", "exec", host.namespace]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        return prefix + list(argv)

    def _start_envoy(self, host: _Host) -> None:
        log = self._envoy_log(host.name)
        argv = self._in_ns(host, PROXY_UID, [
            self._envoy, "-c", str(host.config_dir / BOOTSTRAP_FILE), "--use-dynamic-base-id",
            "--base-id-path", str(host.run_dir / "base-id"), "-l", "warning",
            "--concurrency", str(self.concurrency), *self.envoy_args])
        with open(log, "ab") as out:
            host.envoy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=_env(), cwd="/", start_new_session=True)

    def _wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        waiters = {}
        for host in self._mesh_hosts:
            waiters[host.name] = subprocess.Popen(self._in_ns(host, None, [TARGET_PYTHON, "-I", str(WAIT_READY),
                                                                          str(timeout)]),
                                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                  env=_env(), cwd="/")
        try:
            deadline = time.monotonic() + timeout + 5
            pending = dict(waiters)
            while pending:
                for name, waiter in list(pending.items()):
                    envoy = self._hosts[name].envoy
                    if envoy is not None and envoy.poll() is not None:
                        raise NetMeshError(f"{name}: Envoy exited with {envoy.returncode} while starting\n"
                                           + _tail(self._envoy_log(name)))
                    if waiter.poll() is not None:
                        if waiter.returncode != 0:
                            raise NetMeshError(f"{name}: Envoy not ready at {READY_URL} within {timeout} s: "
                                               f"{waiter.stdout.read().strip()}\n" + _tail(self._envoy_log(name)))
                        del pending[name]
                if pending and time.monotonic() > deadline:
                    raise NetMeshError(f"Envoy not ready within {timeout} s on: {', '.join(pending)}")
                time.sleep(0.05)
        finally:
            for waiter in waiters.values():
                if waiter.poll() is None:
                    waiter.kill()
                waiter.wait(timeout=STOP_TIMEOUT)
                waiter.stdout.close()

    def _apply_redirect(self, host: _Host) -> None:
        _run(self._in_ns(host, None, [TARGET_PYTHON, "-I", str(IPTABLES_CLI), "apply", "--config",
                                      str(host.artifacts / "redirect.json")]))

    @staticmethod
    def _parallel(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(items)))) as pool:
            return list(pool.map(fn, items))

    # --- applications ---

    def start_app(self, host: str, argv: Sequence[str], env: Mapping[str, str] | None = None, *,
                  name: str | None = None, uid: int = APP_UID, wait_port: int | None = None,
                  timeout: float = 10.0) -> subprocess.Popen:
        """Run ``argv`` in ``host``'s namespace as ``uid`` (default 1000: its calls are captured), with the host's
        name as its hostname (a UTS namespace of its own). Output goes to ``logs/<host>.<name>.log``. With
        ``wait_port``, returns once the app listens on that TCP port (bounded by ``timeout``)."""
        h = self._host(host)
        name = name or Path(argv[0]).stem
        log = self.logs / f"{h.slug}.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log"
        hostname = re.sub(r"[^A-Za-z0-9-]", "-", host)[:63]
        wrapped = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', hostname,
                   "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
        with open(log, "ab") as out:
            proc = subprocess.Popen(self._in_ns(h, None, wrapped), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=_env(env), cwd="/", start_new_session=True)
        h.apps.append((name, proc))
        if wait_port is not None:
            deadline = time.monotonic() + timeout
            while not _listening(proc.pid, wait_port):
                if proc.poll() is not None:
                    raise NetMeshError(f"{host}: {name} exited with {proc.returncode}\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise NetMeshError(f"{host}: {name} does not listen on {wait_port} after {timeout} s\n"
                                       + _tail(log))
                time.sleep(0.02)
        return proc

    def stop_app(self, host: str, name: str) -> None:
        """Stop the app ``start_app`` started on ``host`` as ``name`` (SIGTERM, then SIGKILL), as its unit would."""
        h = self._host(host)
        for index, (app, proc) in enumerate(h.apps):
            if app == name:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(timeout=STOP_TIMEOUT)
                del h.apps[index]
                return
        raise NetMeshError(f"{host}: no app {name!r} (apps: {', '.join(a for a, _ in h.apps) or 'none'})")

    def _service_port(self, host: str) -> tuple[str, str, int]:
        hostvars = self._host(host).vars
        service = hostvars.get("vmesh_service")
        if not service:
            raise NetMeshError(f"{host} has no vmesh_service")
        ports = hostvars.get("vmesh_ports") or []
        port = ports[0].get("target_port", ports[0]["port"]) if ports else 9080
        version = str((hostvars.get("vmesh_labels") or {}).get("version", "v1"))
        return service, version, int(port)

    def start_bookinfo(self, host: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """The Bookinfo stand-in for the host's service and version label, on its (first) port, bound to 0.0.0.0."""
        service, version, port = self._service_port(host)
        argv = [TARGET_PYTHON, str(BOOKINFO), "--service", service, "--version", version, "--port", str(port),
                "--bind", "0.0.0.0"]
        return self.start_app(host, argv, env, name="bookinfo", wait_port=port)

    def start_echo(self, host: str, port: int | None = None, *, tcp: bool = False,
                   tls: tuple[str | Path, str | Path] | None = None, delay: float = 0.0) -> subprocess.Popen:
        """``echo_server.py`` on ``port`` (default: the host's first service port), answering as ``host``;
        ``tls=(certificate, key)`` serves it over TLS; ``delay`` seconds before every answer (a slow host)."""
        hostvars = self._host(host).vars
        if port is None:
            port = self._service_port(host)[2]
        version = str((hostvars.get("vmesh_labels") or {}).get("version", ""))
        argv = [TARGET_PYTHON, str(ECHO_SERVER), "--host", host, "--version", version, "--port", str(port),
                "--bind", "0.0.0.0", "--mode", "tcp" if tcp else "http"]
        if tls:
            argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        if delay:
            argv += ["--delay", str(delay)]
        return self.start_app(host, argv, name=f"echo-{port}", wait_port=port)

    # --- traffic ---

    def _client(self, host: str, client: Sequence[str], spec: dict[str, Any], uid: int, timeout: float) -> Any:
        """Run ``client`` (a program in harness/apps and its first arguments) with ``spec`` as JSON; its output."""
        argv = self._in_ns(self._host(host), uid, [TARGET_PYTHON, "-I", *client, json.dumps(spec)])
        proc = _run(argv, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise NetMeshError(f"client in {host} failed (rc={proc.returncode}): {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def request(self, host: str, url: str, method: str = "GET", headers: Mapping[str, str] | None = None,
                body: bytes | str | None = None, timeout: float = 10, *, uid: int = APP_UID,
                cafile: str | Path | None = None, resolve: str | None = None) -> Response:
        """One HTTP(S) request from ``host`` as ``uid``, a new connection, redirects not followed. An https URL
        verifies the server against ``cafile`` and the URL's host name (sent as SNI). ``resolve``: connect to this
        address instead of the URL host's (which still goes in Host and SNI), like ``curl --resolve``.

        A request that gets no answer (refused, reset, timed out, TLS refused) returns status 0 with ``error`` set."""
        if isinstance(body, str):
            body = body.encode()
        spec = {"url": url, "method": method, "headers": dict(headers or {}), "timeout": timeout,
                "body": base64.b64encode(body).decode() if body is not None else None,
                "cafile": str(cafile) if cafile else None, "resolve": resolve}
        out = self._client(host, [str(HTTP_CLIENT), "request"], spec, uid, timeout + COMMAND_TIMEOUT)
        return Response(out["status"], out["headers"], base64.b64decode(out["body"]), out["elapsed"],
                        out.get("reason", ""), out.get("error"))

    def sample(self, host: str, url: str, count: int, headers: Mapping[str, str] | None = None, *,
               method: str = "GET", timeout: float = 10, uid: int = APP_UID,
               concurrency: int = 1) -> collections.Counter:
        """``count`` requests (each on a new connection) in one process, ``concurrency`` at a time: Counter of
        (status, who answered).

        Who answered is ``x-vmesh-host`` or else ``x-bookinfo-version`` (None when neither); for a request with
        no answer the key is (0, error class name)."""
        return collections.Counter(self.sequence(host, url, count, headers, method=method, timeout=timeout, uid=uid,
                                                 concurrency=concurrency))

    def sequence(self, host: str, url: str, count: int, headers: Mapping[str, str] | None = None, *,
                 method: str = "GET", timeout: float = 10, uid: int = APP_UID,
                 concurrency: int = 1) -> list[tuple[int, str | None]]:
        """Like :meth:`sample`, but the (status, who answered) of each request, in the order they were sent."""
        if not 0 < count <= 10000:
            raise NetMeshError(f"sample: count {count} out of range 1-10000")
        if not 0 < concurrency <= 64:
            raise NetMeshError(f"sample: concurrency {concurrency} out of range 1-64")
        budget = min(count * timeout / concurrency, 300.0)
        spec = {"url": url, "method": method, "headers": dict(headers or {}), "timeout": timeout, "body": None,
                "count": count, "budget": budget, "concurrency": concurrency}
        out = self._client(host, [str(HTTP_CLIENT), "sample"], spec, uid, budget + timeout + COMMAND_TIMEOUT)
        return [tuple(key) for key in out]

    def tcp(self, host: str, address: str, port: int, payload: bytes | str, *, timeout: float = 5,
            uid: int = APP_UID, pause: float = 0.0) -> bytes:
        """Connect from ``host`` as ``uid``, send ``payload``, close the sending side (``pause`` seconds later),
        return all that came back.

        Raises ConnectionError when no connection could be made."""
        if isinstance(payload, str):
            payload = payload.encode()
        spec = {"address": address, "port": port, "payload": base64.b64encode(payload).decode(),
                "timeout": timeout, "pause": pause}
        out = self._client(host, [str(TCP_CLIENT)], spec, uid, timeout * 2 + COMMAND_TIMEOUT)
        if "data" not in out:
            raise ConnectionError(f"{host} -> {address}:{port}: {out['error']}")
        return base64.b64decode(out["data"])

    # --- the proxies ---

    def admin(self, host: str, path: str, method: str = "GET") -> str:
        """The host's Envoy admin (127.0.0.1:15000 in its namespace); raises unless it answers 200."""
        h = self._host(host)
        proc = _run(self._in_ns(h, None, [TARGET_PYTHON, "-I", str(ENVOY_ADMIN), method, path, str(ADMIN_PORT)]),
                    check=False)
        if proc.returncode != 0:
            raise NetMeshError(f"{host}: admin {method} {path} failed (rc={proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc.stdout

    def stats(self, host: str, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose names start with ``prefix`` (histograms left out)."""
        query = urllib.parse.urlencode({"format": "json", "filter": "^" + re.escape(prefix)})
        data = json.loads(self.admin(host, f"/stats?{query}"))
        return {item["name"]: item["value"] for item in data.get("stats", []) if "name" in item and "value" in item}

    def hostinfo(self, host: str, request: Mapping[str, Any]) -> Any:
        """What ``vmesh status`` reads on a host (vmesh/remote/hostinfo.py, run as root in the host's namespace as
        it runs over SSH on a VM); ``request["redirect"] = True`` checks the redirect with the harness's helper."""
        h = self._host(host)
        request = dict(request)
        if request.get("redirect") is True:
            request["redirect"] = [TARGET_PYTHON, "-I", str(IPTABLES_CLI), "show", "--config",
                                   str(h.artifacts / "redirect.json")]
        script = ROOT / "src" / "vmesh" / "remote" / "hostinfo.py"
        proc = _run(self._in_ns(h, None, [TARGET_PYTHON, "-I", str(script), json.dumps(request)]))
        return json.loads(proc.stdout)

    def uptime(self, host: str) -> int:
        """Seconds since this Envoy started (``server.uptime``)."""
        return self.stats(host, "server.uptime")["server.uptime"]

    def _xds_state(self, host: str) -> dict[str, int]:
        names = re.compile(r"(^listener_manager\.lds\.|^cluster_manager\.cds\.|\.rds\..*\.)"
                           r"(update_attempt|update_rejected)$|^listener_manager\.total_listeners_warming$|"
                           r"^cluster_manager\.warming_clusters$")
        query = urllib.parse.urlencode({"format": "json", "filter": names.pattern})
        data = json.loads(self.admin(host, f"/stats?{query}"))
        return {item["name"]: item["value"] for item in data.get("stats", []) if "name" in item and "value" in item}

    # --- config changes ---

    def push(self, sources: Iterable[tuple[str, str]], timeout: float = PUSH_TIMEOUT, *,
             without: Iterable[str] = (), drained: Iterable[str] | None = None,
             rollouts: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
        """Recompile with ``sources`` and swap every host's changed files in place (no restart); returns
        {host: changed and removed file names}. Returns once each Envoy has read every swap and has nothing
        warming; raises if an Envoy rejected the update. A mistake in ``sources`` raises the compiler's error
        before anything is written. ``without``: hosts that leave the inventory now (a VM removed from the
        mesh); they are compiled out from then on, and their Envoy keeps its last config. ``drained``: the hosts
        drained from now on, as playbooks/drain.yml records them (None: as before). ``rollouts``: the
        ``vmesh_rollouts`` every mesh host carries from now on (None: as before; {}: none)."""
        sources = list(sources)
        if rollouts is not None:
            for host in self._mesh_hosts:
                host.vars["vmesh_rollouts"] = dict(rollouts)
        if drained is not None:
            for host in drained:
                self._host(host)
            self._drained = set(drained)
        left = set(without) - self._left
        for host in left:
            self._host(host)
        self._left |= left
        configs = self._compile(sources)
        if any(configs[h].files.get(BOOTSTRAP_FILE) != self._configs[h].files.get(BOOTSTRAP_FILE) for h in configs):
            raise NetMeshError("push changes the bootstrap (envoy.json), which needs a restart; not supported here")
        if any(configs[h].hosts_entries != self._configs[h].hosts_entries for h in configs):
            raise NetMeshError("push changes /etc/hosts entries (services come or go); not supported here")
        mesh_hosts = [h.name for h in self._mesh_hosts if h.name in configs]
        before = dict(zip(mesh_hosts, self._parallel(self._xds_state, mesh_hosts)))
        previous = self._configs
        changes: dict[str, list[str]] = {}
        for host in (self._hosts[name] for name in mesh_hosts):
            changed, removed = write_config(host.config_dir, configs[host.name].files)
            changes[host.name] = changed + removed
        self._configs = configs
        self.sources = sources

        def settle(host: str) -> None:
            moves = sum(1 for name in changes[host] if (self._hosts[host].config_dir / name).exists())
            if not moves:
                return
            routes_before, routes_now = _route_names(previous[host]), _route_names(configs[host])
            old = before[host]

            def applied(now: dict[str, int]) -> bool:
                # Every subscription watches the config dir and re-reads its file on each move into it.
                for key, value in now.items():
                    if not key.endswith("update_attempt"):
                        continue
                    rds = _RDS_STAT.search(key)
                    if rds is None or rds.group(1) in routes_before and rds.group(1) in routes_now:
                        if value < old.get(key, 0) + moves:
                            return False
                    elif rds.group(1) in routes_now and value < old.get(key, 0) + 1:  # a route table added
                        return False
                return not now.get("listener_manager.total_listeners_warming") and \
                    not now.get("cluster_manager.warming_clusters")

            deadline = time.monotonic() + timeout
            while True:
                now = self._xds_state(host)
                rejected = [k for k, v in now.items() if k.endswith("update_rejected") and v > old.get(k, 0)]
                if rejected:
                    raise NetMeshError(f"{host}: Envoy rejected the pushed config ({', '.join(rejected)})\n"
                                       + _tail(self._envoy_log(host)))
                if applied(now):
                    return
                if time.monotonic() > deadline:
                    raise NetMeshError(f"{host}: Envoy did not apply the push within {timeout} s: "
                                       f"before {old}, now {now}\n" + _tail(self._envoy_log(host)))
                time.sleep(0.05)

        self._parallel(settle, mesh_hosts)
        return changes
