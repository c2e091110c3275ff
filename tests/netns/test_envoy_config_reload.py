"""The vmesh_envoy_config module and a running Envoy, in a network namespace of its own: a pushed change is
read without a restart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from harness.config_push import VS_V1, VS_V3, compiled, push
from vmesh import envoy


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
        good = compiled(dest, VS_V1)
        push(tmp_path, dest, good.files)
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
        rds = "rds.9080.update_success"  # the route table of port 9080, reviews in it
        before = stats(rds)
        assert before and all(v >= 1 for v in before.values())
        uptime = stats("server.uptime")["server.uptime"]
        routed = compiled(dest, VS_V3)
        result = push(tmp_path, dest, routed.files, netns=ns)
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
        # with no VirtualService, productpage sends to every reviews host: that cluster comes first, the routes
        # move to it, then the subsets' clusters (no longer used) go
        result = push(tmp_path, dest, compiled(dest).files, netns=ns)
        assert result["envoy_confirmed"] is True
        assert result["steps"] == ["clusters", "listeners and routes", "final"]
        clusters = subprocess.run(admin + [sys.executable, "-c", "import urllib.request;print(urllib.request.urlopen("
                                  "'http://127.0.0.1:15000/clusters',timeout=2).read().decode())"],
                                  capture_output=True, text=True, timeout=10).stdout
        names = {line.split("::")[0] for line in clusters.splitlines() if "reviews" in line}
        assert names == {"outbound|9080||reviews.default.svc.cluster.local"}
        assert stats("server.uptime")["server.uptime"] >= uptime
        assert proc.poll() is None  # the same Envoy process, never restarted
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
