"""The preflight playbook on the controller: a missing certificate, or no way to become root, is named, and
nothing runs past it. (A missing prerequisite, in a network namespace: tests/netns/test_preflight_prerequisites.py.)"""

from __future__ import annotations

from harness.preflight import run_preflight


def test_a_missing_gateway_certificate_is_named(tmp_path):
    present = tmp_path / "shop.crt"
    present.write_text("not checked here\n")
    missing = tmp_path / "nowhere" / "shop.key"
    proc = run_preflight(tmp_path, {"shop-credential": {"cert": str(present), "key": str(missing)}})
    assert proc.returncode != 0
    assert "vmesh_credentials names files that are not on the controller" in proc.stdout
    assert f"shop-credential.key: {missing}" in proc.stdout
    assert str(present) not in proc.stdout.split("not on the controller:")[1].split("\n")[0]
    assert "Unknown error" not in proc.stdout


def test_present_certificates_pass(tmp_path):
    files = {}
    for part in ("cert", "key"):
        path = tmp_path / f"shop.{part}"
        path.write_text("x\n")
        files[part] = str(path)
    proc = run_preflight(tmp_path, {"shop-credential": files})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_way_to_become_root_is_named(tmp_path):
    """Where become does not give root (here: su to nobody, whose shell refuses logins), the check says so for
    the host instead of reporting what is missing."""
    present = tmp_path / "shop.crt"
    present.write_text("x\n")
    proc = run_preflight(tmp_path, {"shop-credential": {"cert": str(present), "key": str(present)}},
                         "-e", "ansible_become_method=su", "-e", "ansible_become_user=nobody",
                         check_prerequisites=True)
    assert proc.returncode != 0
    assert "edge: could not run the prerequisite check as root: " in proc.stdout, proc.stdout
    assert "the Ansible user needs become, e.g. sudo, on this host" in proc.stdout
    assert "look for the gateway certificates" not in proc.stdout
