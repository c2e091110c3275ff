"""Ansible at scale, controller side: hundreds of mesh hosts on this machine (local connection, a config directory
each; tests/harness/fleet.py), so what a run costs per host is measured without hundreds of VMs.

For each fleet size, in one run:

- ``noop``: K trivial tasks per host, nothing else: what Ansible itself costs per host and task;
- ``after compile``: the preflight (the compile into the build directory, each host's own part read back), then the
  same K tasks: their cost per host and task once every host holds what the compile gave it. It should not grow
  with the mesh, and should be close to ``noop``'s;
- ``push``: preflight and every host's config pushed by vmesh.mesh.envoy_config (validated with envoy on each host,
  here all on this machine), first run and second run (nothing changes).

    python bench/ansible_scale.py                   # 50 and 200 hosts (a few minutes)
    python bench/ansible_scale.py --hosts 100 500

No absolute time is a pass or a fail: the ratios between sizes and against ``noop`` are the figures.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.fleet import make_fleet, run_push  # noqa: E402

TASKS = 5
AFTER_COMPILE = """---
- name: Vmesh | preflight
  ansible.builtin.import_playbook: vmesh.mesh.preflight
- name: Tasks after the compile
  hosts: vmesh
  gather_facts: false
  tasks:
""" + "".join(f"""    - name: Task {i}
      ansible.builtin.debug:
        msg: "{{{{ preflight_host.identity }}}}"
""" for i in range(TASKS))
PREFLIGHT_ONLY = """---
- name: Vmesh | preflight
  ansible.builtin.import_playbook: vmesh.mesh.preflight
"""
NOOP = """---
- name: Tasks only
  hosts: vmesh
  gather_facts: false
  tasks:
""" + "".join(f"""    - name: Task {i}
      ansible.builtin.debug:
        msg: ok
""" for i in range(TASKS))


def timed(inventory: Path, play: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = run_push(inventory, play=play)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"ansible_scale: {play} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def changed(stdout: str) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", stdout))


def measure(hosts: int, services: int, root: Path) -> dict:
    inventory = make_fleet(root, hosts=hosts, services=services)
    for name, text in (("after.yml", AFTER_COMPILE), ("preflight.yml", PREFLIGHT_ONLY), ("tasks.yml", NOOP)):
        (root / name).write_text(text)
    noop, _ = timed(inventory, "tasks.yml")
    preflight, _ = timed(inventory, "preflight.yml")
    after, _ = timed(inventory, "after.yml")
    first, out_first = timed(inventory, "push.yml")
    second, out_second = timed(inventory, "push.yml")
    build = inventory / ".vmesh" / "build"
    size = sum(p.stat().st_size for p in build.rglob("*") if p.is_file())
    return {"hosts": hosts, "services": services, "noop_ms": 1000 * noop / (hosts * TASKS),
            "after_ms": 1000 * max(0.0, after - preflight) / (hosts * TASKS), "preflight_s": preflight,
            "push_first_s": first, "push_second_s": second, "changed_first": changed(out_first),
            "changed_second": changed(out_second), "build_kb": size / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[50, 200], help="fleet sizes (hosts)")
    parser.add_argument("--keep", action="store_true", help="keep the fleets' directories (printed)")
    args = parser.parse_args(argv)
    rows = []
    for hosts in args.hosts:
        root = Path(tempfile.mkdtemp(prefix=f"vmesh-bench-fleet-{hosts}-"))
        try:
            rows.append(measure(hosts, max(2, hosts // 5), root))
        finally:
            if args.keep:
                print(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    print(f"{'hosts':>6} {'svcs':>5} {'noop ms/task/host':>18} {'after compile':>14} {'preflight s':>12} "
          f"{'push s':>7} {'again s':>8} {'changed':>8} {'again':>6} {'build KB':>9}")
    for r in rows:
        print(f"{r['hosts']:>6} {r['services']:>5} {r['noop_ms']:>18.1f} {r['after_ms']:>14.1f} "
              f"{r['preflight_s']:>12.1f} {r['push_first_s']:>7.1f} {r['push_second_s']:>8.1f} "
              f"{r['changed_first']:>8} {r['changed_second']:>6} {r['build_kb']:>9.0f}")
    print("\nratios measured in this run:")
    for r in rows:
        print(f"  {r['hosts']:>5} hosts: a task after the compile costs x{r['after_ms'] / r['noop_ms']:.2f} "
              f"a task with nothing compiled")
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        print(f"  {large['hosts']} against {small['hosts']} hosts: per-host task cost after the compile "
              f"x{large['after_ms'] / small['after_ms']:.2f}, push per host "
              f"x{(large['push_first_s'] / large['hosts']) / (small['push_first_s'] / small['hosts']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
