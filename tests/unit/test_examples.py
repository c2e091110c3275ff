"""The examples as a user runs them from the checkout: paths in the demo's inventory resolve to where the demo's
scripts put things."""

from __future__ import annotations

import json
import os
import subprocess

from harness import BIN, ROOT


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
