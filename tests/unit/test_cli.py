"""The vmesh CLI on a real inventory directory (read through ansible-inventory)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from harness import BIN, DATA, ROOT
from harness.mesh import outbound_vhost

VMESH = str(BIN / "vmesh")
SAMPLES = DATA / "bookinfo"

ADDRESSES = """all:
  hosts:
    productpage-v1: {ansible_host: 10.213.0.10}
    details-v1: {ansible_host: 10.213.0.11}
    reviews-v1: {ansible_host: 10.213.0.12}
    reviews-v2: {ansible_host: 10.213.0.13}
    reviews-v3: {ansible_host: 10.213.0.14}
    ratings-v1: {ansible_host: 10.213.0.15}
    ratelimit-1: {ansible_host: 10.213.0.16}
"""


@pytest.fixture
def inventory(tmp_path):
    inv = tmp_path / "bookinfo"
    shutil.copytree(ROOT / "examples" / "bookinfo" / "inventory", inv, ignore=shutil.ignore_patterns("lab-hosts.yml", "ca", "rollouts"))
    (inv / "addresses.yml").write_text(ADDRESSES)
    return inv


def run(*args, cwd=None):
    return subprocess.run([VMESH, *map(str, args)], capture_output=True, text=True, cwd=cwd, check=False)


def test_validate_the_bookinfo_inventory(inventory):
    proc = run("validate", "--inventory", inventory)
    assert proc.returncode == 0, proc.stderr
    assert ("8 hosts, 6 services, 1 VirtualServices, 4 DestinationRules, 1 Gateways, 1 ServiceEntries, "
            "1 PeerAuthentications, 6 AuthorizationPolicies: valid") in proc.stdout
    assert proc.stdout.count("ok: ") == 8


# Our own copies of the shapes of Istio's Bookinfo networking samples (tests/data/bookinfo).
ACCEPTED = sorted(p.name for p in SAMPLES.glob("*.yaml") if p.name not in ("destination-rule-all.yaml",
                                                                            "certmanager-gateway.yaml"))


@pytest.mark.parametrize("sample", ACCEPTED)
def test_validate_accepts_istio_bookinfo_samples(inventory, sample):
    # as in Istio's tasks: kubectl apply -f destination-rule-all.yaml, then the sample (which may redefine a rule);
    # the inventory's tracing provider names Jaeger's ServiceEntry, which stays
    proc = run("validate", "--inventory", inventory, "--mesh", inventory / "mesh" / "tracing.yaml",
               "--mesh", SAMPLES / "destination-rule-all.yaml", "--mesh", SAMPLES / sample)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ok: ") == 8


def test_validate_refuses_a_sample_naming_a_service_outside_the_inventory(inventory):
    proc = run("validate", "--inventory", inventory, "--mesh", SAMPLES / "destination-rule-all.yaml",
               "--mesh", SAMPLES / "certmanager-gateway.yaml")
    assert proc.returncode == 1
    assert "certmanager-gateway.yaml: VirtualService/istio-system/cert-manager: " \
           "spec.http[0].route[0].destination.host: host 'cert-manager-resolver' " in proc.stderr
    assert "is not a service in the inventory" in proc.stderr


def test_objects_defined_twice_in_one_directory_are_refused(inventory):
    shutil.copy(SAMPLES / "destination-rule-reviews.yaml", inventory / "mesh" / "reviews.yaml")
    proc = run("validate", "--inventory", inventory)
    assert proc.returncode == 1
    assert "DestinationRule/reviews: metadata.name: defined twice" in proc.stderr


def test_validate_refuses_bad_weights_naming_file_document_field(inventory):
    (inventory / "mesh" / "reviews.yaml").write_text((SAMPLES / "virtual-service-reviews-90-10.yaml").read_text()
                                                     .replace("weight: 10", "weight: 20"))
    proc = run("validate", "--inventory", inventory, cwd=inventory.parent)
    assert proc.returncode == 1
    assert "error: bookinfo/mesh/reviews.yaml: VirtualService/reviews: spec.http[0].route: weights sum to 110, " \
           "expected 100" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_refuses_host_without_address(tmp_path):
    inv = tmp_path / "inv"
    shutil.copytree(ROOT / "examples" / "bookinfo" / "inventory", inv, ignore=shutil.ignore_patterns("lab-hosts.yml", "ca", "rollouts"))
    proc = run("validate", "--inventory", inv)
    assert proc.returncode == 1
    assert "inventory: host details-v1: vmesh_address:" in proc.stderr


def test_validate_refuses_inventory_without_mesh_group(tmp_path):
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    a: {ansible_host: 10.0.0.1}\n")
    proc = run("validate", "--inventory", tmp_path / "hosts.yml")
    assert proc.returncode == 1
    assert "no host is in group 'vmesh'" in proc.stderr


def test_render_writes_one_hosts_files(inventory, tmp_path):
    out = tmp_path / "out"
    proc = run("render", "--inventory", inventory, "--host", "productpage-v1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert {"envoy.json", "lds.json", "cds.json", "validate.json", "hosts"} <= set(names)
    assert json.loads((out / "envoy.json").read_text())["admin"]["address"]["socket_address"]["port_value"] == 15000
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    run("render", "--inventory", inventory, "--host", "productpage-v1", "--out", out)
    assert first == {p.name: p.read_bytes() for p in out.iterdir()}


def test_render_unknown_host(inventory, tmp_path):
    proc = run("render", "--inventory", inventory, "--host", "nope", "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert "host 'nope' is not in the mesh" in proc.stderr
    assert not (tmp_path / "out").exists()


# --- canary rollouts: the CLI routes a service by its rollout's saved state, and prints and plots it -----------------

def rollout_state(inventory):
    """A rollout of reviews v2 at its second stage (25%), saved where canary.yml keeps it."""
    from vmesh import inputs, registry, rollout

    with open(inventory / "group_vars" / "all.yml", "a", encoding="utf-8") as fh:
        fh.write("vmesh_rollouts:\n  reviews: {stable: v1, canary: v2, steps: [10, 25, 100]}\n")
    hostvars = inputs.mesh_hostvars(str(inventory))
    mesh_registry = registry.build(hostvars)
    declared = rollout.parse(mesh_registry.rollout_settings, mesh_registry)
    (entry,) = rollout.plan(declared, {}, now=1.0)
    state = {**entry["state"], "stage": 1}
    (inventory / "rollouts").mkdir()
    path = inventory / "rollouts" / "reviews.json"
    path.write_text(json.dumps(state))
    return path


def reviews_weights(out):
    (route,) = outbound_vhost({"rds_9080.json": (out / "rds_9080.json").read_text()},
                              "reviews.default.svc.cluster.local")["routes"]
    return {c["name"].split("|")[2]: c["weight"] for c in route["route"]["weighted_clusters"]["clusters"]}


def test_render_routes_a_service_under_rollout_by_its_saved_stage(inventory, tmp_path):
    rollout_state(inventory)
    out = tmp_path / "out"
    proc = run("render", "--inventory", inventory, "--host", "productpage-v1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert reviews_weights(out) == {"v1": 75, "v2": 25}


def test_rollout_report_and_plot(inventory, tmp_path):
    path = rollout_state(inventory)
    proc = run("rollout", "report", path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["reviews: v2 against v1, running", "(no stage judged yet)",
                                        "reviews: at stage 25%"]
    proc = run("rollout", "plot", path, "--out", tmp_path / "reviews.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "reviews.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text("{not json")
    proc = run("rollout", "report", tmp_path / "bad.json")
    assert proc.returncode == 1 and f"{tmp_path / 'bad.json'}: cannot read the rollout state" in proc.stderr
