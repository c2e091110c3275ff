"""Reload: how long a routing change takes to reach the traffic, and whether a request fails on the way.

Three "VMs" in network namespaces (tests/harness/netmesh.py) with vmesh's sidecars: ``client``, and ``web-v1`` and
``web-v2``, the two versions of the service ``web`` (nginx answering 1 KB with the header ``x-version``). A paced
client (``paced_client.py``, as uid 1000: captured) sends 1000 requests per second to http://web:8080/ over 20
keep-alive connections. Every ``--interval`` seconds the VirtualService flips from 100 % v1 to 100 % v2 or back
(weights 100/0 and 0/100, as a canary tool writes them), and every host's new files are pushed with the config
module's own code (module_utils/envoy_files: a version directory staged, then one rename of ``..data``), as on
a VM.

For each flip, measured on the client's side: the time from the rename on the client host until the answers
come from the new version only (the send time of the first request after the last answer of the old version,
minus the rename time; both on CLOCK_MONOTONIC), and the requests that failed (not 2xx, or no answer). Printed:
each flip, the median and maximum flip-to-effect time and the failures over all flips, next to the targets of
issue 13 (at most 50 ms after the file lands; no failed request over 10 flips at 1000 rps).

    sudo .venv/bin/python bench/reload.py                    # 10 flips, 1 s apart: about half a minute
    python bench/reload.py --flips 20 --interval 0.5 --json

Needs root and nginx. Traffic stays inside the namespaces made here (``vm-benchrl-*``); an interrupted run's
leftovers are removed by name at the next start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import netbench  # first: it puts the harness and the collection on sys.path
from netbench import APP_PORT, NetMeshError
from harness import TARGET_PYTHON
from harness.netmesh import NetMesh
from ansible_collections.vmesh.mesh.plugins.module_utils import envoy_files
from vmesh import load
from vmesh.compile import BOOTSTRAP_FILE, render_all

CLIENT = Path(__file__).resolve().parent / "paced_client.py"
MESH = "benchrl"  # namespaces vm-benchrl-*: never a test's
LEAD_SECONDS = 1.5  # load before the first flip
TAIL_SECONDS = 1.0  # load after the last one
PUSH_TIMEOUT = 10.0
FILE_MODE = 0o644  # the config module's default mode
TARGET_MS = 50.0

_web = {"vmesh_service": "web", "vmesh_ports": [{"port": APP_PORT, "protocol": "http", "name": "http"}]}
HOSTS = {
    "client": {"vmesh_service_account": "client"},
    "web-v1": {**_web, "vmesh_labels": {"app": "web", "version": "v1"}},
    "web-v2": {**_web, "vmesh_labels": {"app": "web", "version": "v2"}},
}
DESTINATION_RULE = ("mesh/web-dr.yaml", """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
""")


def virtual_service(version: str) -> tuple[str, str]:
    """All of web to ``version``, none to the other (weights 100 and 0)."""
    weights = {"v1": 100, "v2": 0} if version == "v1" else {"v1": 0, "v2": 100}
    routes = "".join(f"    - destination: {{host: web, subset: {v}}}\n      weight: {w}\n" for v, w in weights.items())
    return ("mesh/web-vs.yaml", f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web]
  http:
  - route:
{routes}""")


# When each push's swap (the one rename of ..data) began and ended, as the module's own swap does it: a wrapper
# around it, in this process only. The flip is timed from the start: Envoy cannot see a rename not yet made,
# while the end may come late (after the rename, Envoy's threads wake up and can take both CPUs first).
_SWAPS: list[tuple[float, float]] = []
_module_swap = envoy_files._swap


def _timed_swap(dest: str, version: str) -> None:
    began = time.monotonic()
    _module_swap(dest, version)
    _SWAPS.append((began, time.monotonic()))


envoy_files._swap = _timed_swap


def module_push(dest: str, files: dict[str, str]) -> tuple[float, float]:
    """Push ``files`` to ``dest`` as the vmesh.mesh.envoy_config module does (without waiting on Envoy's admin,
    which is in another namespace); returns when its last swap began and ended."""
    current = envoy_files.read_current(dest)
    todo = envoy_files.plan(current, files, BOOTSTRAP_FILE, FILE_MODE)
    del _SWAPS[:]
    envoy_files.push(dest, current, todo, FILE_MODE, PUSH_TIMEOUT)
    if len(_SWAPS) != 1 and todo.steps:
        raise NetMeshError(f"{dest}: the push made {len(_SWAPS)} swaps, expected one (a routing change)")
    return _SWAPS[-1] if _SWAPS else (float("nan"), float("nan"))


def compile_files(mesh: NetMesh, version: str) -> dict[str, dict[str, str]]:
    """{host: files} for web at 100 % ``version``."""
    variables = {host: mesh.host_vars(host) for host in mesh.hosts}
    configs = render_all(load.mesh(variables, [DESTINATION_RULE, virtual_service(version)]))
    return {host: config.files for host, config in configs.items()}


def client_argv(seconds: float, rate: int, connections: int) -> list[str]:
    spec = {"url": f"http://web:{APP_PORT}/", "rate": rate, "connections": connections, "seconds": seconds,
            "timeout": 2, "header": "x-version"}
    return [TARGET_PYTHON, "-I", str(CLIENT), json.dumps(spec)]


def analyse(records: list[list[Any]], flips: list[dict[str, Any]], end: float) -> None:
    """Fill each flip with what the client saw between its rename and the next one."""
    for index, flip in enumerate(flips):
        until = flips[index + 1]["landed"] if index + 1 < len(flips) else end
        window = [r for r in records if flip["landed"] <= r[0] < until]
        old = "v1" if flip["to"] == "v2" else "v2"
        last_old = max((r[0] for r in window if r[3] == old), default=None)
        settled = [r for r in window if last_old is None or r[0] > last_old]
        new = [r[0] for r in window if r[3] == flip["to"]]
        flip.update(requests=len(window), old_after=sum(1 for r in window if r[3] == old),
                    failed=sum(1 for r in window if not 200 <= r[2] < 300),
                    effect_ms=(settled[0][0] - flip["landed"]) * 1000 if settled else float("nan"),
                    first_new_ms=(min(new) - flip["landed"]) * 1000 if new else float("nan"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flips", type=int, default=10, help="routing flips (default 10)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between flips (default 1)")
    parser.add_argument("--rate", type=int, default=1000, help="requests per second (default 1000)")
    parser.add_argument("--connections", type=int, default=20, help="keep-alive connections (default 20)")
    parser.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads (default 2, the role's)")
    parser.add_argument("--json", action="store_true", help="print the flips and the summary as JSON lines")
    parser.add_argument("--keep", action="store_true", help="keep the logs and Envoy files (path printed)")
    args = parser.parse_args(argv)
    if not (1 <= args.flips <= 100 and 0.2 <= args.interval <= 30 and 1 <= args.rate <= 5000
            and 1 <= args.connections <= 200 and 1 <= args.concurrency <= 8):
        parser.error("flips 1-100, interval 0.2-30 s, rate 1-5000, connections 1-200, concurrency 1-8")
    if not netbench.can_run() or not shutil.which(netbench.NGINX):
        parser.error("needs root, ip, setpriv, iptables and nginx")
    seconds = LEAD_SECONDS + args.flips * args.interval + TAIL_SECONDS
    if seconds > 600:
        parser.error("flips x interval: at most about 10 minutes of load")
    tmp = Path(tempfile.mkdtemp(prefix="vmesh-bench-reload."))
    netbench.remove_leftovers([MESH], tmp / "leftovers")
    mesh = NetMesh(MESH, HOSTS, [DESTINATION_RULE, virtual_service("v1")], tmp / "mesh",
                   concurrency=args.concurrency)
    flips: list[dict[str, Any]] = []
    try:
        mesh.start()
        for host in ("web-v1", "web-v2"):
            netbench.start_nginx(mesh, host, host.split("-")[1])
        files = {version: compile_files(mesh, version) for version in ("v1", "v2")}
        dirs = {host: mesh.host_vars(host)["vmesh_config_dir"] for host in mesh.hosts}
        for host in mesh.hosts:  # the harness writes plain files; the module moves them into a version first
            module_push(dirs[host], files["v1"][host])
        warmup = json.loads(netbench.run_as_app(mesh, "client", client_argv(1, args.rate, args.connections),
                                                timeout=30).splitlines()[-1])["records"]
        if {(r[2], r[3]) for r in warmup} != {(200, "v1")}:
            raise NetMeshError(f"warm-up: expected only 200 from v1, got {sorted({(r[2], r[3]) for r in warmup})}")
        before, pid = counters(mesh), mesh.envoy_pid("client")
        client = subprocess.Popen(
            ["ip", "netns", "exec", mesh.namespace("client"), "setpriv", f"--reuid={netbench.APP_UID}",
             f"--regid={netbench.APP_UID}", "--clear-groups", "--", *client_argv(seconds, args.rate,
                                                                                  args.connections)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/"})
        try:
            start = float(client.stdout.readline().split()[1])
            for index in range(args.flips):
                version = "v2" if index % 2 == 0 else "v1"
                time.sleep(max(0.0, start + LEAD_SECONDS + index * args.interval - time.monotonic()))
                called = time.monotonic()
                landed, swapped = module_push(dirs["client"], files[version]["client"])
                pushed = time.monotonic()
                for host in ("web-v1", "web-v2"):  # their own outbound routes to web change too; off the path
                    module_push(dirs[host], files[version][host])
                flips.append({"flip": index + 1, "to": version, "landed": landed,
                              "swap_ms": (swapped - landed) * 1000, "push_ms": (pushed - called) * 1000})
            out, err = client.communicate(timeout=seconds + 60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        if client.returncode != 0:
            raise NetMeshError(f"paced_client failed (rc={client.returncode}): {err.strip()[-2000:]}")
        records = json.loads(out.strip().splitlines()[-1])["records"]
        after, same_envoy = counters(mesh), mesh.envoy_pid("client") == pid
    finally:
        mesh.stop()
        if args.keep:
            print(f"logs and Envoy files: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    changes = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
    refused = {k: v for k, v in changes.items() if k.endswith("update_rejected")}
    if refused:
        raise NetMeshError(f"the client's Envoy rejected a pushed config: {refused}")
    end = start + seconds
    analyse(records, flips, end)
    during = [r for r in records if r[0] >= flips[0]["landed"]]
    effects = sorted(f["effect_ms"] for f in flips)
    summary = {
        "flips": len(flips), "interval_s": args.interval, "rate": args.rate, "connections": args.connections,
        "achieved_rps": len(records) / seconds,
        "effect_median_ms": netbench.median(effects), "effect_max_ms": max(effects),
        "first_new_median_ms": netbench.median([f["first_new_ms"] for f in flips]),
        "failed_during_flips": sum(1 for r in during if not 200 <= r[2] < 300), "requests_during_flips": len(during),
        "failed_total": sum(1 for r in records if not 200 <= r[2] < 300), "requests_total": len(records),
        "push_median_ms": netbench.median([f["push_ms"] for f in flips]),
        "listeners_or_clusters_changed": sum(changes.values()), "same_envoy_process": same_envoy,
        "client_p50_ms": netbench.percentile(sorted(r[1] - r[0] for r in records), 50) * 1000,
        "client_p99_ms": netbench.percentile(sorted(r[1] - r[0] for r in records), 99) * 1000,
    }
    if args.json:
        for flip in flips:
            print(json.dumps({k: v for k, v in flip.items() if k != "landed"}, sort_keys=True))
        print(json.dumps({"summary": "reload", **summary}, sort_keys=True))
        return 0
    print(f"\nReload, {len(flips)} flips every {args.interval:g} s under {args.rate} rps ({args.connections} "
          f"connections, achieved {summary['achieved_rps']:.0f} rps), Envoy --concurrency {args.concurrency}")
    print(f"{'flip':>4} {'to':>3} {'effect ms':>10} {'first new ms':>13} {'old after':>10} {'failed':>7} "
          f"{'requests':>9} {'swap ms':>8} {'push ms':>8}")
    for f in flips:
        print(f"{f['flip']:4d} {f['to']:>3} {f['effect_ms']:10.1f} {f['first_new_ms']:13.1f} {f['old_after']:10d} "
              f"{f['failed']:7d} {f['requests']:9d} {f['swap_ms']:8.2f} {f['push_ms']:8.1f}")
    print(f"\nflip-to-effect (rename of ..data on the client -> only the new version answers): median "
          f"{summary['effect_median_ms']:.1f} ms, max {summary['effect_max_ms']:.1f} ms (target <= {TARGET_MS:.0f} ms)")
    print(f"failed requests: {summary['failed_during_flips']} of {summary['requests_during_flips']} from the first "
          f"flip on, {summary['failed_total']} of {summary['requests_total']} in all (target 0)")
    print(f"the client's Envoy: the same process throughout: {'yes' if same_envoy else 'NO'}; listeners and "
          f"clusters modified or removed by the flips: {summary['listeners_or_clusters_changed']}")
    print(f"the client's own latency (Python, through both sidecars): p50 {summary['client_p50_ms']:.2f} ms, "
          f"p99 {summary['client_p99_ms']:.2f} ms; a push to the client host (stage + swap + clean-up) took a "
          f"median {summary['push_median_ms']:.1f} ms")
    return 0


WATCHED = ("listener_manager.listener_modified", "listener_manager.listener_removed",
           "cluster_manager.cluster_modified", "cluster_manager.cluster_removed")


def counters(mesh: NetMesh) -> dict[str, int]:
    """The client Envoy's xDS ``update_rejected`` counters and the listener and cluster changes it made."""
    return {k: v for k, v in mesh.stats("client").items() if k.endswith("update_rejected") or k in WATCHED}


if __name__ == "__main__":
    sys.exit(main())
