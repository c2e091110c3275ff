"""The compiled build: `vmesh compile --out`, `vmesh diff`, the vmesh.mesh.build action and the compiled lookup,
and the promise behind them: a --limit run and a run from a given build put the same files on a host as a full
run, and no host's variables hold another host's config."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess

import pytest

from harness import BIN
from harness.fleet import host_name, make_fleet, run_push, snapshot
from vmesh import artifact
from vmesh.errors import MeshError

VS_V1 = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc-1}
spec:
  hosts: [svc-1]
  http:
  - route:
    - destination: {host: svc-1, subset: v1}
"""
VS_V2 = VS_V1.replace("subset: v1", "subset: v2")
DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc-1}
spec:
  host: svc-1
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
# svc-0's hosts see svc-1 only; the others see every service
SIDECAR = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: svc-0}
spec:
  workloadSelector: {labels: {app: svc-0}}
  egress: [{hosts: [./svc-1.default.svc.cluster.local]}]
"""
ROUTES_8080 = "rds_8080.json"  # the route table of port 8080: a virtual host per service a host sees


def vhosts(files: dict[str, str]) -> list[str]:
    """The services in a host's route table of port 8080."""
    return [v["name"] for v in json.loads(files[ROUTES_8080])["resources"][0]["virtual_hosts"]]


def vmesh(*args):
    return subprocess.run([str(BIN / "vmesh"), *map(str, args)], capture_output=True, text=True, check=False)


@pytest.fixture
def fleet(tmp_path):
    return make_fleet(tmp_path, hosts=6, services=3, docs={"dr.yaml": DR, "sidecar.yaml": SIDECAR, "vs.yaml": VS_V1})


def test_compile_writes_each_file_once_and_diff_names_what_a_change_touches(fleet, tmp_path):
    first = vmesh("compile", "-i", fleet / "hosts.yml", "--out", tmp_path / "b1")
    assert first.returncode == 0, first.stderr
    assert "wrote 6 hosts" in first.stdout
    again = vmesh("compile", "-i", fleet / "hosts.yml", "--out", tmp_path / "b1")
    assert again.returncode == 0 and "unchanged: 6 hosts" in again.stdout
    manifest = artifact.read(tmp_path / "b1")
    entries = [artifact.host_entry(tmp_path / "b1", h, manifest.build) for h in manifest.hosts]
    named = [d for e in entries for d in e["files"].values()]
    # the secrets' files and the route tables hosts share are stored once
    assert len(list((tmp_path / "b1" / "objects").iterdir())) == len(set(named)) < len(named)

    (fleet / "mesh" / "vs.yaml").write_text(VS_V2)
    assert vmesh("compile", "-i", fleet / "hosts.yml", "--out", tmp_path / "b2").returncode == 0
    proc = vmesh("diff", tmp_path / "b1", tmp_path / "b2")
    assert proc.returncode == 1, proc.stderr
    # every host sees svc-1: its route table changes there, and nothing else anywhere
    assert proc.stdout.splitlines() == [f"{host_name(i)}: changed: {ROUTES_8080}" for i in range(6)] + \
        ["6 of 6 hosts differ, 6 files"]
    same = vmesh("diff", tmp_path / "b2", tmp_path / "b2")
    assert same.returncode == 0 and same.stdout.strip() == "no difference (6 hosts)"
    routes = json.loads(artifact.host_files(tmp_path / "b2", "host-0")[ROUTES_8080])["resources"][0]
    (svc_1,) = [v for v in routes["virtual_hosts"] if v["name"] == "svc-1.default.svc.cluster.local:8080"]
    assert svc_1["routes"][0]["route"]["cluster"] == "outbound|8080|v2|svc-1.default.svc.cluster.local"


def test_a_damaged_or_replaced_build_is_refused(fleet, tmp_path):
    build = tmp_path / "b"
    assert vmesh("compile", "-i", fleet / "hosts.yml", "--out", build).returncode == 0
    manifest = artifact.read(build)
    entry = artifact.host_entry(build, "host-1", manifest.build)
    with pytest.raises(MeshError, match="belongs to build .*the build directory was replaced"):
        artifact.host_entry(build, "host-1", "0" * 64)
    (build / "objects" / entry["files"]["cds.json"]).write_text('{"resources":[]}')
    with pytest.raises(MeshError, match="does not match its digest \\(cds.json of host host-1\\)"):
        artifact.host_files(build, "host-1", manifest.build)
    # an entry that says more than the compiler writes: a second line for /etc/hosts
    path = build / "hosts" / "host-2.json"
    entry = json.loads(path.read_text())
    entry["hosts_entries"].append("10.0.0.1 a\n10.0.0.2 b")
    path.write_text(json.dumps(entry))
    with pytest.raises(MeshError, match="host-2.json: hosts_entries: not what the compiler writes here"):
        artifact.host_entry(build, "host-2", manifest.build)
    # a compile into it again replaces the damaged build, rather than calling it unchanged
    again = vmesh("compile", "-i", fleet / "hosts.yml", "--out", build)
    assert again.returncode == 0 and "wrote 6 hosts" in again.stdout, again.stdout + again.stderr
    assert artifact.host_files(build, "host-1", manifest.build)["cds.json"].startswith('{"resources":[{')


def test_a_directory_that_is_no_build_is_never_replaced(fleet, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = vmesh("compile", "-i", fleet / "hosts.yml", "--out", mine)
    assert proc.returncode == 1
    assert "holds no vmesh build (no manifest.json): not replaced" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    proc = vmesh("diff", mine, mine)
    assert proc.returncode == 2 and "no manifest here" in proc.stderr


def test_limit_and_a_given_build_push_what_a_full_run_pushes(tmp_path):
    """The files a host gets are the same from a full run, a --limit run (which still compiles the whole mesh)
    and a run of a slice of the inventory that pushes a build made from the whole one (AWX job slicing)."""
    docs = {"dr.yaml": DR, "sidecar.yaml": SIDECAR, "vs.yaml": VS_V2}
    inventory = make_fleet(tmp_path, hosts=6, services=3, docs=docs)
    full = run_push(inventory)
    assert full.returncode == 0, full.stdout + full.stderr
    everything = snapshot(tmp_path)
    assert sorted(everything) == [host_name(i) for i in range(6)]
    # host-0 (svc-0) sees svc-1 only; host-1 sees every service, svc-2 too
    assert vhosts(everything["host-0"]) == ["svc-1.default.svc.cluster.local:8080", "allow_any"]
    assert "svc-2.default.svc.cluster.local:8080" in vhosts(everything["host-1"])
    again = run_push(inventory)
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", again.stdout, re.M)
    assert len(recap) == 6 and all(n == "0" for _, n in recap), again.stdout

    shutil.rmtree(tmp_path / "hosts")
    limited = run_push(inventory, "--limit", "host-0,host-4")
    assert limited.returncode == 0, limited.stdout + limited.stderr
    assert snapshot(tmp_path) == {h: everything[h] for h in ("host-0", "host-4")}

    build = tmp_path / "given"
    assert vmesh("compile", "-i", inventory / "hosts.yml", "--out", build).returncode == 0
    shutil.rmtree(tmp_path / "hosts")
    shutil.rmtree(inventory)
    sliced = make_fleet(tmp_path, hosts=6, services=3, only=["host-1", "host-5"])  # no documents, 2 hosts
    proc = run_push(sliced, "-e", f"vmesh_build={build}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert snapshot(tmp_path) == {h: everything[h] for h in ("host-1", "host-5")}


def test_a_host_holds_its_own_part_only_and_a_build_must_cover_the_play(fleet, tmp_path):
    (fleet.parent / "facts.yml").write_text("""---
- name: Vmesh | preflight
  ansible.builtin.import_playbook: vmesh.mesh.preflight
- name: What each host holds
  hosts: vmesh
  gather_facts: false
  tasks:
    - name: Its variables after the compile
      ansible.builtin.copy:
        content: "{{ {'host': preflight_host, 'built': preflight_built} | to_json }}"
        dest: "{{ inventory_dir }}/../held-{{ inventory_hostname }}.json"
        mode: "0600"
""")
    proc = run_push(fleet, play="facts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    held = json.loads((tmp_path / "held-host-0.json").read_text())
    assert held["host"]["identity"] == "spiffe://cluster.local/ns/default/sa/svc-0"
    # the digests of exactly the files the compiler renders for host-0 (vmesh render, on its own)
    rendered = tmp_path / "rendered"
    assert vmesh("render", "-i", fleet / "hosts.yml", "--host", "host-0", "--out", rendered).returncode == 0
    ours = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in rendered.iterdir()
            if p.name not in ("validate.json", "hosts")}
    assert held["host"]["files"] == ours
    text = json.dumps(held)
    assert "sa/svc-2" not in text and "host-1" not in text  # nothing of a host it does not route to
    assert len(text) < 4096, len(text)

    # a build that lacks a host of the play is refused before anything changes
    small = make_fleet(tmp_path / "small", hosts=2, services=2)
    assert vmesh("compile", "-i", small / "hosts.yml", "--out", tmp_path / "small-build").returncode == 0
    proc = run_push(fleet, "-e", f"vmesh_build={tmp_path / 'small-build'}")
    assert proc.returncode != 0
    assert "holds no config for host-2, host-3, host-4, host-5: compile it again" in proc.stdout
    assert not (tmp_path / "hosts").exists()


def test_a_vm_joining_changes_only_its_services_endpoint_files(tmp_path):
    """A new VM of svc-0: its clients get a new endpoint file for svc-0 and no other config (their clusters, hence
    their connection pools, stay: tests/netns/test_traffic_endpoints.py); svc-0's own hosts see only svc-1."""
    docs = {"dr.yaml": DR, "sidecar.yaml": SIDECAR}
    for hosts, build in ((6, "b1"), (7, "b2")):
        inventory = make_fleet(tmp_path, hosts=hosts, services=3, docs=docs)
        proc = vmesh("compile", "-i", inventory / "hosts.yml", "--out", tmp_path / build)
        assert proc.returncode == 0, proc.stderr
    eds = "eds_outbound_8080__svc-0.default.svc.cluster.local.json"
    changes = {c.host: (c.status, c.files) for c in artifact.diff(tmp_path / "b1", tmp_path / "b2")}
    assert changes.pop("host-6")[0] == "added"
    assert {h for h, (_, files) in changes.items() if eds in files} == {"host-1", "host-2", "host-4", "host-5"}
    # beside it, only the peers the metrics name (telemetry.py): the new VM's clients and the hosts it calls
    assert all(status == "changed" and set(files) <= {eds, "peers.json"} for status, files in changes.values())


def test_diff_names_what_a_push_changes_besides_files(tmp_path):
    from vmesh.compile import HostConfig

    files = {"cds.json": '{"resources":[]}'}
    before = {"web-1": HostConfig("web-1", files, ["240.240.0.1 web"], [], [], "spiffe://cluster.local/ns/a/sa/web")}
    after = {"web-1": HostConfig("web-1", files, ["240.240.0.2 web"], [8443], [], "spiffe://cluster.local/ns/b/sa/web")}
    artifact.write(tmp_path / "a", before)
    artifact.write(tmp_path / "b", after)
    (change,) = artifact.diff(tmp_path / "a", tmp_path / "b")
    assert (change.host, change.status, change.files) == ("web-1", "changed",
                                                          ["[hosts_entries]", "[edge_ports]", "[identity]"])


def test_only_hosts_whose_files_change_report_changed(fleet):
    """A routing change to svc-2 changes the hosts that see svc-2 and reports them changed; svc-0's hosts see only
    svc-1 and report nothing, nor does the host that ran the compile."""
    assert run_push(fleet).returncode == 0
    (fleet / "mesh" / "vs2.yaml").write_text(VS_V2.replace("svc-1", "svc-2").replace(", subset: v2}", "}\n    timeout: 3s"))
    proc = run_push(fleet)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", proc.stdout, re.M))
    assert recap == {"host-0": "0", "host-1": "1", "host-2": "1", "host-3": "0", "host-4": "1", "host-5": "1"}, recap
