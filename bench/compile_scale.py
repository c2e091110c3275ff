"""Compile scale: synthetic meshes of S services on H hosts, each service's Sidecar naming D dependencies.

Each size is compiled in a process of its own, so its peak memory (ru_maxrss) is its own. Printed per size: the
time to build the model, the time per host to render its files, the bytes per host (its config directory, and the
static bundle kept for ``envoy --mode validate`` beside it), and the peak RSS. Then the ratios that say how it
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


def synthetic(hosts: int, services: int, dependencies: int) -> tuple[dict, list[tuple[str, str]]]:
    """Host variables and Istio documents: host i serves svc-(i mod services) on 8080 (HTTP); every service's
    Sidecar names the next ``dependencies`` services as its egress."""
    variables = {}
    for i in range(hosts):
        service = f"svc-{i % services}"
        variables[f"host-{i}"] = {
            "vmesh_service": service, "vmesh_labels": {"app": service, "version": "v1"},
            "vmesh_ports": [{"port": 8080, "protocol": "http", "name": "http"}],
            "ansible_host": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
        }
    docs = []
    for s in range(services):
        egress = [f"./svc-{(s + k) % services}.default.svc.cluster.local" for k in range(1, dependencies + 1)]
        docs.append((f"mesh/sidecar-{s}.yaml", json.dumps({
            "apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": f"svc-{s}"},
            "spec": {"workloadSelector": {"labels": {"app": f"svc-{s}"}}, "egress": [{"hosts": egress}]}})))
    return variables, docs


def measure(hosts: int, services: int, dependencies: int, sample: int) -> dict:
    """Run in a child process: build the model once, render ``sample`` hosts spread over the mesh (all of them
    when sample >= hosts, kept in memory as the compile filter keeps them, so the peak RSS is that of a whole
    compile)."""
    from vmesh import load
    from vmesh.compile import render_host

    variables, docs = synthetic(hosts, services, dependencies)
    started = time.perf_counter()
    mesh = load.mesh(variables, docs)
    model = time.perf_counter() - started
    names = sorted(mesh.registry.workloads)
    step = max(1, len(names) // sample)
    chosen = names[::step][:sample]
    files = validation = visible = 0
    kept = []
    started = time.perf_counter()
    for host in chosen:
        config = render_host(mesh, host)
        if len(chosen) == len(names):
            kept.append(config)
        files += sum(len(text.encode()) for text in config.files.values())
        validation += len(config.validation.encode())
    per_host = (time.perf_counter() - started) / len(chosen)
    for host in chosen:
        visible += len(mesh.visible_services(host))
    return {"hosts": hosts, "services": services, "dependencies": dependencies, "rendered": len(chosen),
            "model_s": round(model, 3), "per_host_ms": round(per_host * 1000, 2),
            "all_hosts_s": round(model + per_host * hosts, 1),
            "files_bytes_per_host": files // len(chosen), "validation_bytes_per_host": validation // len(chosen),
            "visible_services_per_host": round(visible / len(chosen), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def child(hosts: int, services: int, dependencies: int, sample: int) -> dict:
    code = ("import json, sys; sys.path.insert(0, 'bench'); import compile_scale as b; "
            f"print(json.dumps(b.measure({hosts}, {services}, {dependencies}, {sample})))")
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
    parser.add_argument("--json", action="store_true", help="print one JSON line per measurement")
    args = parser.parse_args(argv)

    rows = [child(h, args.services or max(2, h // 5), args.dependencies, args.sample) for h in args.hosts]
    largest = max(args.hosts)
    slope = [child(largest, args.services or max(2, largest // 5), d, min(args.sample, 50))
             for d in (1, args.dependencies, 3 * args.dependencies)]
    if args.json:
        for row in rows + slope:
            print(json.dumps(row))
        return 0
    print(f"{'hosts':>6} {'svcs':>5} {'model s':>8} {'ms/host':>8} {'all s':>7} {'KB/host':>8} {'+valid KB':>9} "
          f"{'visible':>7} {'peak MB':>8}")
    for r in rows:
        print(f"{r['hosts']:>6} {r['services']:>5} {r['model_s']:>8} {r['per_host_ms']:>8} {r['all_hosts_s']:>7} "
              f"{r['files_bytes_per_host'] / 1024:>8.1f} {r['validation_bytes_per_host'] / 1024:>9.1f} "
              f"{r['visible_services_per_host']:>7} {r['peak_rss_mb']:>8}")
    base = rows[0]
    print(f"\nratios against {base['hosts']} hosts, measured in this run:")
    for r in rows[1:]:
        print(f"  {r['hosts']:>5} hosts: ms/host x{r['per_host_ms'] / base['per_host_ms']:.2f}, "
              f"bytes/host x{r['files_bytes_per_host'] / base['files_bytes_per_host']:.2f}, "
              f"validation bundle / files x{r['validation_bytes_per_host'] / r['files_bytes_per_host']:.2f}")
    print(f"\nbytes per host against visible services ({largest} hosts):")
    for r in slope:
        print(f"  {r['dependencies']:>2} dependencies, {r['visible_services_per_host']:>5} visible: "
              f"{r['files_bytes_per_host'] / 1024:8.1f} KB, "
              f"{r['files_bytes_per_host'] / 1024 / r['visible_services_per_host']:6.1f} KB per visible service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
