"""Compile scale: synthetic meshes of S services on H hosts, each service's Sidecar naming D dependencies.

Each size is compiled in a process of its own, so its peak memory (ru_maxrss) is its own. Printed per size: the
time to build the model, the time per host to render its files, the bytes per host (its config directory), and
the peak RSS. Then the ratios that say how it
scales, measured in this one run: per-host render time and bytes against the smallest size, and bytes per
visible service as D grows (a config should grow with what a host sees, not with the mesh).

    python bench/compile_scale.py                    # 10, 100, 1000 hosts (a minute or two)
    python bench/compile_scale.py --hosts 5000 --services 1000
    python bench/compile_scale.py --hosts 5000 --services 1000 --sample 5000   # all hosts, kept: a whole compile
    python bench/compile_scale.py --json             # one JSON line per measurement

No absolute time is a pass or a fail: the numbers are for comparing runs on one machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


SHAPES = ("rich", "plain")


def _doc(kind: str, name: str, spec: dict, api: str = "networking", namespace: str | None = None) -> str:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return json.dumps({"apiVersion": f"{api}.istio.io/v1", "kind": kind, "metadata": metadata, "spec": spec})


def synthetic(hosts: int, services: int, dependencies: int,
              shape: str = "rich") -> tuple[dict, list[tuple[str, str]]]:
    """Host variables and Istio documents: host i serves svc-(i mod services); every service's Sidecar names the
    next ``dependencies`` services as its egress.

    ``plain``: one HTTP port (8080), no other documents. ``rich``, the shape of a production mesh: an HTTP port and
    a TCP port (9000), hosts alternating v1 and v2; per service a DestinationRule (two subsets, a connection pool,
    outlier detection), a VirtualService (a header match to v2 with a timeout and retries, else 90/10 by weight)
    and an AuthorizationPolicy allowing the services that call it; STRICT mTLS mesh-wide."""
    variables = {}
    rich = shape == "rich"
    for i in range(hosts):
        service = f"svc-{i % services}"
        ports = [{"port": 8080, "protocol": "http", "name": "http"}]
        if rich:
            ports.append({"port": 9000, "protocol": "tcp", "name": "tcp"})
        variables[f"host-{i}"] = {
            "vmesh_service": service,
            "vmesh_labels": {"app": service, "version": f"v{1 + (i // services) % 2}" if rich else "v1"},
            "vmesh_ports": ports, "ansible_host": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
        }
    docs = []
    if rich:
        docs.append(("mesh/peer.yaml", _doc("PeerAuthentication", "default", {"mtls": {"mode": "STRICT"}},
                                            api="security", namespace="istio-system")))
    for s in range(services):
        name, fqdn = f"svc-{s}", f"svc-{s}.default.svc.cluster.local"
        egress = [f"./svc-{(s + k) % services}.default.svc.cluster.local" for k in range(1, dependencies + 1)]
        docs.append((f"mesh/sidecar-{s}.yaml", _doc("Sidecar", name, {
            "workloadSelector": {"labels": {"app": name}}, "egress": [{"hosts": egress}]})))
        if not rich:
            continue
        docs.append((f"mesh/dr-{s}.yaml", _doc("DestinationRule", name, {
            "host": fqdn,
            "trafficPolicy": {"connectionPool": {"http": {"http1MaxPendingRequests": 100, "maxRetries": 3}},
                              "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s",
                                                   "baseEjectionTime": "30s"}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]})))
        docs.append((f"mesh/vs-{s}.yaml", _doc("VirtualService", name, {
            "hosts": [name],
            "http": [{"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                      "route": [{"destination": {"host": name, "subset": "v2"}}],
                      "timeout": "2s", "retries": {"attempts": 3, "perTryTimeout": "500ms"}},
                     {"route": [{"destination": {"host": name, "subset": "v1"}, "weight": 90},
                                {"destination": {"host": name, "subset": "v2"}, "weight": 10}]}]})))
        callers = [f"cluster.local/ns/default/sa/svc-{(s - k) % services}" for k in range(1, dependencies + 1)]
        docs.append((f"mesh/authz-{s}.yaml", _doc("AuthorizationPolicy", name, {
            "selector": {"matchLabels": {"app": name}}, "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": callers}}]}]}, api="security")))
    return variables, docs


def measure(hosts: int, services: int, dependencies: int, sample: int, shape: str = "rich") -> dict:
    """Run in a child process: build the model once, render ``sample`` hosts spread over the mesh (all of them
    when sample >= hosts, kept in memory as the compile filter keeps them, so the peak RSS is that of a whole
    compile)."""
    from vmesh import load
    from vmesh.compile import Renderer

    variables, docs = synthetic(hosts, services, dependencies, shape)
    started = time.perf_counter()
    mesh = load.mesh(variables, docs)
    model = time.perf_counter() - started
    names = sorted(mesh.registry.workloads)
    step = max(1, len(names) // sample)
    chosen = names[::step][:sample]
    files = visible = 0
    kept = []
    renderer = Renderer(mesh)
    started = time.perf_counter()
    for host in chosen:
        config = renderer.host(host)
        if len(chosen) == len(names):
            kept.append(config)
        files += sum(len(text.encode()) for text in config.files.values())
    per_host = (time.perf_counter() - started) / len(chosen)
    for host in chosen:
        visible += len(mesh.visible_services(host))
    return {"hosts": hosts, "services": services, "dependencies": dependencies, "shape": shape, "rendered": len(chosen),
            "model_s": round(model, 3), "per_host_ms": round(per_host * 1000, 2),
            "all_hosts_s": round(model + per_host * hosts, 1),
            "files_bytes_per_host": files // len(chosen),
            "visible_services_per_host": round(visible / len(chosen), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def machine_speed() -> float:
    """Seconds a fixed pure-Python loop takes here: the compiler's times scale with it, and it differs from one
    day to the next on shared machines, so runs on different days compare through it."""
    started = time.perf_counter()
    total = 0
    for i in range(5_000_000):
        total += i
    return round(time.perf_counter() - started, 2)


def child(hosts: int, services: int, dependencies: int, sample: int, shape: str) -> dict:
    code = ("import json, sys; sys.path.insert(0, 'bench'); import compile_scale as b; "
            f"print(json.dumps(b.measure({hosts}, {services}, {dependencies}, {sample}, {shape!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"compile_scale: {hosts} hosts failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[10, 100, 1000], help="mesh sizes (hosts)")
    parser.add_argument("--services", type=int, default=0, help="services (default: hosts / 5, at least 2)")
    parser.add_argument("--dependencies", type=int, default=3, help="services each Sidecar names (default 3)")
    parser.add_argument("--sample", type=int, default=200, help="hosts rendered per size (default 200)")
    parser.add_argument("--shape", choices=SHAPES, default="rich", help="the synthetic mesh (default rich)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per measurement")
    args = parser.parse_args(argv)

    before = machine_speed()
    rows = [child(h, args.services or max(2, h // 5), args.dependencies, args.sample, args.shape) for h in args.hosts]
    largest = max(args.hosts)
    slope = [child(largest, args.services or max(2, largest // 5), d, min(args.sample, 50), args.shape)
             for d in (1, args.dependencies, 3 * args.dependencies)]
    speed = (before, machine_speed())
    if args.json:
        for row in rows + slope:
            print(json.dumps({**row, "machine_loop_s": speed}))
        return 0
    print(f"shape {args.shape}, {args.dependencies} dependencies per Sidecar; this machine: a 5M-step Python loop "
          f"took {speed[0]} s before and {speed[1]} s after")
    print(f"{'hosts':>6} {'svcs':>5} {'model s':>8} {'ms/host':>8} {'all s':>7} {'KB/host':>8} "
          f"{'visible':>7} {'peak MB':>8}")
    for r in rows:
        print(f"{r['hosts']:>6} {r['services']:>5} {r['model_s']:>8} {r['per_host_ms']:>8} {r['all_hosts_s']:>7} "
              f"{r['files_bytes_per_host'] / 1024:>8.1f} {r['visible_services_per_host']:>7} {r['peak_rss_mb']:>8}")
    base = rows[0]
    print(f"\nratios against {base['hosts']} hosts, measured in this run:")
    for r in rows[1:]:
        print(f"  {r['hosts']:>5} hosts: ms/host x{r['per_host_ms'] / base['per_host_ms']:.2f}, "
              f"bytes/host x{r['files_bytes_per_host'] / base['files_bytes_per_host']:.2f}")
    print(f"\nbytes per host against visible services ({largest} hosts):")
    for r in slope:
        print(f"  {r['dependencies']:>2} dependencies, {r['visible_services_per_host']:>5} visible: "
              f"{r['files_bytes_per_host'] / 1024:8.1f} KB")
    (low, high) = slope[0], slope[-1]
    per_service = (high["files_bytes_per_host"] - low["files_bytes_per_host"]) / \
        (high["visible_services_per_host"] - low["visible_services_per_host"])
    print(f"  slope: {per_service / 1024:.1f} KB per visible service, over a base of "
          f"{(low['files_bytes_per_host'] - per_service * low['visible_services_per_host']) / 1024:.1f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
