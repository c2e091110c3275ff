"""vmesh status's verdicts from a host's report (the real reports are in tests/netns/test_status.py and on the
test VMs): what differs is named, and anything but a synced proxy with its redirect intact fails the command."""

from __future__ import annotations

import hashlib
import json

from harness.mesh import build
from vmesh import ssh, status
from vmesh.compile import render_host
from vmesh.errors import MeshError

IN_SYNC = "# iptables -t nat\n-A PREROUTING -p tcp -j VMESH_INBOUND\n# in sync with /etc/vmesh/redirect.json\n"


def report(config, **changes):
    """A report of a host that runs exactly ``config``."""
    files = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in config.files.items()}
    dump = {"configs": []}
    versions = status.wanted_versions(config.files)
    dump["configs"].append({"@type": status._DUMPS["listeners"], "version_info": versions["lds.json"][1]})
    dump["configs"].append({"@type": status._DUMPS["clusters"], "version_info": versions["cds.json"][1]})
    dump["configs"].append({"@type": status._DUMPS["routes"], "dynamic_route_configs": [
        {"route_config": {"name": key[1]}, "version_info": v} for key, v in versions.values() if key[0] == "routes"]})
    dump["configs"].append({"@type": status._DUMPS["endpoints"], "dynamic_endpoint_configs": [
        {"endpoint_config": json.loads(config.files[n])["resources"][0]} for n, (key, _) in versions.items()
        if key[0] == "endpoints"]})
    dump["configs"].append({"@type": status._DUMPS["secrets"], "dynamic_active_secrets": [
        {"name": key[1], "version_info": v} for key, v in versions.values() if key[0] == "secrets"]})
    out = {"files": files, "version": "..20261204T031500.abcdef", "bootstrap_mtime": 1000.0, "now": 5000.0,
           "admin": {status.SERVER_INFO: {"version": "x/1.40.0/Clean/RELEASE/BoringSSL", "state": "LIVE",
                                          "uptime_current_epoch": "600s", "uptime_all_epochs": "3600s"},
                     status.CONFIG_DUMP: dump},
           "cert": None, "redirect": {"rc": 0, "output": IN_SYNC}}
    out.update(changes)
    return out


def config():
    return render_host(build(), "productpage-v1")


def test_a_proxy_running_its_render_is_synced():
    got = status.host_status(config(), report(config()))
    assert (got["status"], got["differs"], got["envoy"], got["redirect"]) == ("SYNCED", [], "1.40.0", "intact")
    assert got["last_push"] == "2026-12-04T03:15:00+00:00" and got["uptime"] == 3600


def test_a_file_and_what_envoy_runs_are_named_when_they_differ():
    wanted = config()
    stale = report(wanted)
    stale["files"]["lds.json"] = "0" * 64
    stale["admin"][status.CONFIG_DUMP]["configs"][0]["version_info"] = "old"
    got = status.host_status(wanted, stale)
    assert got["status"] == "STALE" and got["differs"] == ["file lds.json", "envoy lds.json"]
    assert not status.healthy(got)


def test_a_bootstrap_newer_than_the_running_epoch_is_a_pending_restart():
    got = status.host_status(config(), report(config(), bootstrap_mtime=4900.0))
    assert got["status"] == "STALE" and got["differs"] == ["envoy envoy.json (a hot restart is pending)"]


def test_not_running_unreachable_and_the_redirect():
    down = report(config())
    down["admin"] = {status.SERVER_INFO: None, status.CONFIG_DUMP: None}
    assert status.host_status(config(), down)["status"] == "NOT RUNNING"
    gone = status.host_status(config(), MeshError("cannot reach 10.0.0.1:22 over SSH: timed out", doc="host x"))
    assert gone["status"] == "UNREACHABLE" and "timed out" in gone["differs"][0]
    drift = IN_SYNC.replace("# in sync with /etc/vmesh/redirect.json\n", "--- current\n+++ /etc/vmesh/redirect.json\n")
    assert status.host_status(config(), report(config(), redirect={"rc": 0, "output": drift}))["redirect"] == "DRIFT"
    missing = "# iptables -t nat\n# no vmesh rules\n--- current\n"
    assert status.host_status(config(), report(config(), redirect={"rc": 0, "output": missing}))["redirect"] == \
        "missing"


def test_the_table_names_what_differs():
    lines = [status.host_status(config(), report(config(), bootstrap_mtime=4900.0), drained=True)]
    text = status.text(lines)
    assert text.splitlines()[0].split() == ["HOST", "STATUS", "ENVOY", "UPTIME", "IDENTITY", "CERT", "EXPIRES",
                                            "REDIRECT", "LAST", "PUSH"]
    assert "STALE (drained)" in text and "productpage-v1: envoy envoy.json (a hot restart is pending)" in text


def test_ssh_targets_from_the_inventory():
    lab = {"ansible_host": "10.213.0.11", "ansible_user": "vmesh-admin", "ansible_become": True,
           "ansible_ssh_private_key_file": "~/.ssh/lab", "ansible_ssh_common_args": "-o StrictHostKeyChecking=no"}
    got = ssh.target("productpage-v1", lab, environ={})
    assert (got.address, got.port, got.user, got.become, got.check_host_key) == \
        ("10.213.0.11", 22, "vmesh-admin", True, False)
    assert got.key_file.endswith("/.ssh/lab") and not got.key_file.startswith("~")
    assert ssh.target("web", {"ansible_port": 2222}, environ={}).check_host_key
    assert not ssh.target("web", {}, environ={"ANSIBLE_HOST_KEY_CHECKING": "False"}).check_host_key
    assert "def main" in ssh.program("hostinfo")


def test_a_route_table_no_listener_names_is_not_expected_in_envoy():
    wanted = config()
    text = '{"resources":[{"name":"unused"}],"version_info":"0123456789ab"}'
    wanted.files["rds_unused.json"] = text
    host = report(wanted)  # Envoy has no subscription for it: no listener names the file
    assert status.host_status(wanted, host)["status"] == "SYNCED"
