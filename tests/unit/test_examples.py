"""The examples as a user runs them from the checkout: paths and addresses in the demo's inventory resolve to
where the demo's scripts and lab put things."""

from __future__ import annotations

import json
import os
import subprocess

import yaml

from harness import BIN, ROOT
from vmesh.lab import inventory, podman


def test_the_demo_gateway_credential_is_where_demo_certs_writes_it():
    """make demo runs scripts/demo-certs.sh (which writes .cache/demo-certs/ of the checkout), then the playbooks
    with no vmesh_demo_certs_dir: the ingress VM's credential must name those files."""
    proc = subprocess.run([str(BIN / "ansible"), "istio-ingressgateway", "-i", "examples/bookinfo/inventory",
                           "-m", "ansible.builtin.debug", "-a", "var=vmesh_credentials", "-o"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    credentials = json.loads(proc.stdout.split("=>", 1)[1])["vmesh_credentials"]
    demo_certs = ROOT / ".cache" / "demo-certs"
    files = credentials["bookinfo-credential"]
    assert os.path.realpath(files["cert"]) == str(demo_certs / "bookinfo.crt")
    assert os.path.realpath(files["key"]) == str(demo_certs / "bookinfo.key")


def test_the_demo_sends_spans_to_the_address_the_lab_gives_the_monitoring_vm():
    """mesh/tracing.yaml names Jaeger on the monitoring VM by address: it must be the one `vmesh lab up` gives
    that VM (hosts sorted by name from .10 of the lab's subnet), or the demo's spans go nowhere."""
    listed = subprocess.run([str(BIN / "ansible-inventory"), "-i", "examples/bookinfo/inventory", "--list"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    addresses = inventory.assign_ips(inventory.hosts_from_inventory(data), podman.DEFAULT_SUBNET)
    monitoring = data["_meta"]["hostvars"]["istio-ingressgateway"]["vmesh_monitoring"]
    docs = list(yaml.safe_load_all((ROOT / "examples/bookinfo/inventory/mesh/tracing.yaml").read_text()))
    (entry,) = [d for d in docs if d["kind"] == "ServiceEntry"]
    assert [e["address"] for e in entry["spec"]["endpoints"]] == [addresses[monitoring]]
    provider = data["_meta"]["hostvars"]["productpage-v1"]["vmesh_mesh_config"]["extensionProviders"][0]
    assert provider["zipkin"]["service"] in entry["spec"]["hosts"]
