"""The vmesh.mesh.envoy_config module run on this machine through ansible-playbook, and configs to push with it.

Two kinds of config: the compiler's own for Bookinfo's productpage (:func:`compiled`, with a mesh certificate
beside it, so that Envoy validates with real files), and a small config of our own on free loopback ports
(:func:`config`): two static backend listeners answer ``A`` and ``B``; the dynamic part is what a push changes
- a cluster per backend in ``cds.json``, a listener in ``lds.json`` whose route table (``rds_<name>.json``)
picks the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ansible_collections.vmesh.mesh.plugins.module_utils import envoy_files  # the module's library, for set-ups
from harness.certs import make_ca, make_workload
from harness import BIN, ROOT, free_port
from harness.mesh import bookinfo_hosts, build
from vmesh import envoy
from vmesh.compile import render_host
from vmesh.compile.envoy_types import CLUSTER, HCM, LISTENER, ROUTE_CONFIGURATION, ROUTER, file_source, socket_address

# --- the compiler's config for productpage, pushed one call at a time ------------------------------------------

VS_V1 = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""
VS_V3 = VS_V1.replace("subset: v1", "subset: v3")


def compiled(config_dir: Path, *docs: str):
    """productpage's config, its mesh certificate beside the config dir (Envoy validates with the real files)."""
    certs = config_dir.parent / "certs"
    if not (certs / "key.pem").exists():
        make_workload(certs, make_ca(config_dir.parent / "ca").parent, "spiffe://cluster.local/ns/default/sa/productpage")
    hosts = bookinfo_hosts()
    for h in hosts.values():
        h["vmesh_config_dir"] = str(config_dir)
        h["vmesh_certs_dir"] = str(certs)
    return render_host(build(*docs, hosts=hosts), "productpage-v1")


def push(tmp_path: Path, dest: Path, files: dict, *, check=False, netns=None) -> dict:
    """Run the module through ansible-playbook on localhost; return its result."""
    args = {"dest": str(dest), "files": files, "envoy": envoy.binary()}
    (tmp_path / "args.json").write_text(json.dumps(args))
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"ansible_python_interpreter": sys.executable,
                      "push_args": "{{ lookup('ansible.builtin.file', '%s') | from_json }}" % (tmp_path / "args.json")},
             "tasks": [{"vmesh.mesh.envoy_config": "{{ push_args }}", "register": "result", "ignore_errors": True},
                       {"ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": str(tmp_path / "result.json"),
                                                 "mode": "0600"}, "check_mode": False}]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "play.yml")] + ["--check"] * check
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((tmp_path / "result.json").read_text())


# --- a small config of our own on loopback ports, pushed several calls in one run ------------------------------


class Ports:
    def __init__(self) -> None:
        self.admin, self.front = free_port(), free_port()
        self.backends = {"A": free_port(), "B": free_port()}


def _router() -> list[dict]:
    return [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]


def _backend(name: str, port: int) -> dict:
    """A static listener that answers ``name``: the upstream a cluster points to."""
    route = {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": name}}}]}]}
    return {"name": f"backend-{name}", "address": socket_address("127.0.0.1", port), "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": f"backend_{name}", "http_filters": _router(), "route_config": route}}]}]}


def config(dest: Path, ports: Ports, backend: str, *, cluster: str = "", route: str = "front", vhosts: int = 0,
           bad_address: bool = False) -> dict[str, str]:
    """The files of a config whose listener routes to ``backend`` through the cluster ``cluster`` (default
    ``to-<backend>``) and the route table ``route``; ``vhosts`` extra virtual hosts make the route file big;
    ``bad_address`` gives the cluster an address Envoy refuses when it loads it."""
    cluster = cluster or f"to-{backend}"
    boot = {"node": {"id": "config-push-test", "cluster": "config-push-test"},
            "admin": {"address": socket_address("127.0.0.1", ports.admin)},
            "static_resources": {"listeners": [_backend(n, p) for n, p in sorted(ports.backends.items())]},
            "dynamic_resources": {"lds_config": file_source(str(dest), "lds.json"),
                                  "cds_config": file_source(str(dest), "cds.json")}}
    address = "not-an-address" if bad_address else "127.0.0.1"
    clusters = [{"@type": CLUSTER, "name": cluster, "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": socket_address(address, ports.backends[backend])}}]}]}}]
    extra = [{"name": f"vh{i}", "domains": [f"service-{i}.example"],
              "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]} for i in range(vhosts)]
    routes = {"@type": ROUTE_CONFIGURATION, "name": route, "virtual_hosts": extra + [
        {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}
    hcm = {"@type": HCM, "stat_prefix": f"front_{route}", "http_filters": _router(),
           "rds": {"route_config_name": route, "config_source": file_source(str(dest), f"rds_{route}.json")}}
    listener = {"@type": LISTENER, "name": "front", "address": socket_address("127.0.0.1", ports.front),
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}

    def dumps(data: dict) -> str:
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    files = {"envoy.json": dumps(boot), "cds.json": dumps({"resources": clusters}),
             "lds.json": dumps({"resources": [listener]}), f"rds_{route}.json": dumps({"resources": [routes]})}
    return files


def args(dest: Path, files: dict, **extra) -> dict:
    return {"dest": str(dest), "files": files, "envoy": envoy.binary(), **extra}


def pushes(tmp_path: Path, *calls: dict) -> list[dict]:
    """Run the module once per call (its arguments; ``_check``/``_diff``: that task in check/diff mode), in
    order, in one ansible-playbook run; return the results. A failed call does not stop the next."""
    tasks = []
    for index, call in enumerate(calls):
        path = tmp_path / f"args{index}.json"
        path.write_text(json.dumps({k: v for k, v in call.items() if not k.startswith("_")}))
        tasks.append({"vmesh.mesh.envoy_config": "{{ lookup('ansible.builtin.file', '%s') | from_json }}" % path,
                      "register": f"result{index}", "ignore_errors": True,
                      "check_mode": bool(call.get("_check")), "diff": bool(call.get("_diff"))})
    results = "[" + ", ".join(f"result{i}" for i in range(len(calls))) + "]"
    tasks.append({"ansible.builtin.copy": {"content": "{{ %s | to_json }}" % results,
                                           "dest": str(tmp_path / "results.json"), "mode": "0600"},
                  "check_mode": False, "diff": False})
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"ansible_python_interpreter": sys.executable}, "tasks": tasks}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "play.yml")]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((tmp_path / "results.json").read_text())


def install(dest: Path, files: dict[str, str]) -> None:
    """Put ``files`` in force in ``dest`` the module's way, no Envoy running (a set-up, in this process)."""
    current = envoy_files.read_current(str(dest))
    todo = envoy_files.plan(current, files, "envoy.json", 0o644)
    envoy_files.push(str(dest), current, todo, 0o644, 10)


def in_force(dest: Path) -> dict[str, str]:
    """What Envoy reads: the config files at the top of ``dest`` (through the links)."""
    return {p.name: p.read_text() for p in sorted(dest.iterdir())
            if not p.name.startswith(".") and p.name.endswith(".json")}


def tree(dest: Path) -> dict[str, str]:
    """Everything under ``dest``: files with their text, links with their target."""
    found = {}
    for top, dirs, names in os.walk(dest):  # never into a link
        for name in dirs + names:
            path = Path(top) / name
            found[str(path.relative_to(dest))] = "-> " + os.readlink(path) if path.is_symlink() else \
                "dir" if path.is_dir() else path.read_text()
    return found


def write_plain(dest: Path, files: dict[str, str]) -> None:
    """The layout before versions, as the module wrote it until now: one file renamed into ``dest`` at a time."""
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name, text in files.items():
        (dest / f".{name}.new").write_text(text)
        os.chmod(dest / f".{name}.new", 0o644)
        os.rename(dest / f".{name}.new", dest / name)
