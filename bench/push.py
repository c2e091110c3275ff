"""Push and converge times on the lab VMs: push.yml with a routing change and without, site.yml on a converged
mesh, each against a one-task no-op playbook on the same hosts, measured side by side in one run.

Needs the demo's VMs up and converged (``make demo``); the demo's routing is changed during the run (a
VirtualService sending reviews to v1, then none again) and is as before at the end. The mesh documents are read
from a copy in a temporary directory (``-e vmesh_mesh_dir``), the checkout's are not touched.

    make demo && python bench/push.py               # 5 rounds (about 10 minutes)
    python bench/push.py --rounds 1 --inventory examples/bookinfo/inventory

Printed: per playbook the median wall time, its ratios to two one-task no-ops (``debug``, which runs on the
controller only, and ``ping``, one module run on every host), the hosts that reported a change, the tasks run. No absolute time is a pass or a fail.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.fleet import NOOP_PLAY  # noqa: E402

ROUTE_V1 = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""


#: The no-op that touches every host: one module run on each over its SSH connection (the debug no-op runs on the
#: controller only, so it prices Ansible's start and the inventory, not a round trip to the hosts).
PING_PLAY = NOOP_PLAY.replace("ansible.builtin.debug:\n        msg: ok", "ansible.builtin.ping:")
assert "ping" in PING_PLAY


def play(inventory: Path, playbook: str, *extra: str) -> tuple[float, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    started = time.perf_counter()
    proc = subprocess.run(["ansible-playbook", "-i", str(inventory), playbook, *extra], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=1800, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench/push.py: {playbook} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def changed_hosts(stdout: str) -> int:
    return sum(1 for n in re.findall(r"^\S+\s+:\s+ok=\d+\s+changed=(\d+)", stdout, re.M) if int(n))


def tasks(stdout: str) -> int:
    return len(re.findall(r"^TASK \[", stdout, re.M))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", type=Path, default=ROOT / "examples" / "bookinfo" / "inventory")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds (default 5: the ping no-op alone moves by 30 %% from one run to the next)")
    parser.add_argument("--no-site", action="store_true", help="leave out site.yml (the longest run)")
    args = parser.parse_args(argv)
    inventory = args.inventory.resolve()
    work = Path(tempfile.mkdtemp(prefix="vmesh-bench-push-"))
    try:
        mesh = work / "mesh"
        shutil.copytree(inventory / "mesh", mesh)
        (work / "noop.yml").write_text(NOOP_PLAY)
        (work / "ping.yml").write_text(PING_PLAY)
        with_mesh = ["-e", f"vmesh_mesh_dir={mesh}"]
        runs: dict[str, list[tuple[float, int, int]]] = {}

        def record(name: str, result: tuple[float, str]) -> None:
            seconds, stdout = result
            runs.setdefault(name, []).append((seconds, changed_hosts(stdout), tasks(stdout)))

        for _ in range(args.rounds):
            record("no-op (1 task)", play(inventory, str(work / "noop.yml")))
            record("no-op on the hosts (ping)", play(inventory, str(work / "ping.yml")))
            (mesh / "bench-reviews.yaml").write_text(ROUTE_V1)
            record("push.yml, a routing change", play(inventory, "vmesh.mesh.push", *with_mesh))
            (mesh / "bench-reviews.yaml").unlink()
            record("push.yml, changed back", play(inventory, "vmesh.mesh.push", *with_mesh))
            record("push.yml, nothing to change", play(inventory, "vmesh.mesh.push", *with_mesh))
            if not args.no_site:
                record("site.yml, converged", play(inventory, "vmesh.mesh.site", *with_mesh))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    noop = statistics.median(s for s, _, _ in runs["no-op (1 task)"])
    ping = statistics.median(s for s, _, _ in runs["no-op on the hosts (ping)"])
    print(f"{'playbook':<30} {'median s':>9} {'x no-op':>8} {'x ping':>7} {'hosts changed':>14} {'tasks':>6}")
    for name, results in runs.items():
        seconds = statistics.median(s for s, _, _ in results)
        print(f"{name:<30} {seconds:>9.1f} {seconds / noop:>8.2f} {seconds / ping:>7.2f} "
              f"{max(c for _, c, _ in results):>14} {max(t for _, _, t in results):>6}")
    print(f"\n{args.rounds} round(s), {inventory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
