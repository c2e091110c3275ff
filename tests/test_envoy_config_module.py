"""The vmesh_envoy_config module: validate on the host, swap atomically, keep the last good config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.config_push import VS_V3, compiled, push, tree
from vmesh import envoy


def snapshot(dest: Path) -> dict:
    """The config files Envoy reads: ``dest/<name>``, links into the version ``..data`` names."""
    if not dest.exists():
        return {}
    return {p.name: p.read_text() for p in sorted(dest.iterdir()) if not p.name.startswith(".")}


def test_four_steps_and_stale_files(tmp_path):
    dest = tmp_path / "envoy"
    config = compiled(dest)
    checked = push(tmp_path, dest, config.files, config.validation, check=True)
    assert checked["changed"] is True and not dest.exists()
    applied = push(tmp_path, dest, config.files, config.validation)
    assert applied["changed"] is True and applied["bootstrap_changed"] is True
    assert snapshot(dest) == config.files
    for name in config.files:  # each a link into the version in force
        assert os.readlink(dest / name) == f"..data/{name}"
    assert os.readlink(dest / "..data") == applied["version"]
    assert push(tmp_path, dest, config.files, config.validation, check=True)["changed"] is False
    assert push(tmp_path, dest, config.files, config.validation)["changed"] is False
    # a routing change touches only the route file, and needs no restart
    routed = compiled(dest, VS_V3)
    result = push(tmp_path, dest, routed.files, routed.validation)
    assert result["changed_files"] == ["rds_outbound_9080__reviews.default.svc.cluster.local.json"]
    assert result["bootstrap_changed"] is False
    # a file no longer wanted is removed
    fewer = dict(routed.files)
    del fewer["rds_outbound_9080__details.default.svc.cluster.local.json"]
    result = push(tmp_path, dest, fewer, routed.validation)
    assert result["removed_files"] == ["rds_outbound_9080__details.default.svc.cluster.local.json"]
    assert snapshot(dest) == fewer
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".vmesh-staging")]


def test_refused_config_keeps_the_last_good_one(tmp_path):
    dest = tmp_path / "envoy"
    good = compiled(dest)
    push(tmp_path, dest, good.files, good.validation)
    before = tree(dest)
    routed = compiled(dest, VS_V3)
    broken = json.loads(routed.validation)
    broken["static_resources"]["clusters"][0]["lb_policy"] = "NO_SUCH_POLICY"
    result = push(tmp_path, dest, routed.files, json.dumps(broken))
    assert result["failed"] is True
    assert "envoy --mode validate refused the new config; the running config is unchanged" in result["msg"]
    assert tree(dest) == before  # not a file written, not a version left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".vmesh-staging")]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read().decode()


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and ip netns")
def test_running_envoy_hot_reloads_a_pushed_change(tmp_path):
    """A push that changes routing is picked up by the running Envoy: no restart, the new route in force."""
    ns = "vmesh-t-envoy-config"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    dest = tmp_path / "envoy"
    proc = None
    try:
        good = compiled(dest)
        push(tmp_path, dest, good.files, good.validation)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, envoy.binary(), "-c", str(dest / "envoy.json"),
                                 "-l", "error", "--use-dynamic-base-id"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        admin = f"ip netns exec {ns}".split()

        def stats(name: str) -> dict:
            out = subprocess.run(admin + [sys.executable, "-c", "import urllib.request,sys;print(urllib.request."
                                 f"urlopen('http://127.0.0.1:15000/stats?format=json&filter={name}',timeout=2)"
                                 ".read().decode())"], capture_output=True, text=True, timeout=10).stdout
            return {s["name"]: s.get("value") for s in json.loads(out or '{"stats": []}')["stats"]}

        deadline = time.monotonic() + 20
        while not stats("server.state") and time.monotonic() < deadline:
            time.sleep(0.2)
        rds = "rds.outbound.*reviews.*update_success"
        before = stats(rds)
        assert before and all(v >= 1 for v in before.values())
        uptime = stats("server.uptime")["server.uptime"]
        routed = compiled(dest, VS_V3)
        result = push(tmp_path, dest, routed.files, routed.validation, netns=ns)
        assert result["changed"] is True
        # the module waited until this Envoy (its admin endpoint, in the namespace) had read the swap
        assert result["envoy_confirmed"] is True and result["steps"] == ["listeners and routes"]
        deadline = time.monotonic() + 10
        while stats(rds) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stats(rds) != before
        dump = subprocess.run(admin + [sys.executable, "-c", "import urllib.request;print(urllib.request.urlopen("
                              "'http://127.0.0.1:15000/config_dump?resource=dynamic_route_configs',timeout=2)"
                              ".read().decode())"], capture_output=True, text=True, timeout=10).stdout
        assert "outbound|9080|v3|reviews.default.svc.cluster.local" in dump
        assert stats("server.uptime")["server.uptime"] >= uptime
        assert proc.poll() is None  # the same Envoy process, never restarted
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
