"""vmesh-proxy-run, the sidecar unit's Envoy supervisor: a hot restart under steady requests refuses none.

Runs the real Envoy on loopback ports chosen free, with a base id of its own (several Envoys share this machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from harness import ROOT, TARGET_PYTHON, free_port
from vmesh import envoy as envoy_binary

RUNNER = ROOT / "roles" / "proxy" / "files" / "vmesh-proxy-run"


def _bootstrap(admin: int, listener: int, body: str) -> dict:
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "test",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}]}]},
        "http_filters": [router],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "app",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                             "typed_config": manager}]}],
        }]},
    }


def _server_info(admin: int) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/server_info", timeout=2) as response:
            info = json.load(response)
        return int(info["command_line_options"]["restart_epoch"]), info["state"]
    except OSError:
        return None


@pytest.fixture
def supervised(tmp_path):
    """vmesh-proxy-run running Envoy with config.json in tmp_path; yields (process, admin port, listener port)."""
    admin, listener = free_port(), free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(_bootstrap(admin, listener, "epoch-config-1")))
    base_id = 4000 + os.getpid() % 1000
    argv = [TARGET_PYTHON, str(RUNNER), "--admin", f"127.0.0.1:{admin}", "--", envoy_binary.binary(),
            "-c", str(config), "--base-id", str(base_id), "--log-level", "warning", "--drain-time-s", "2",
            "--drain-strategy", "immediate", "--parent-shutdown-time-s", "4"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while _server_info(admin) != (0, "LIVE"):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "Envoy did not come up"
        time.sleep(0.2)
    try:
        yield process, admin, listener, config
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()


def _reload(process: subprocess.Popen, admin: int) -> subprocess.CompletedProcess:
    return subprocess.run([TARGET_PYTHON, str(RUNNER), "--reload", str(process.pid), "--admin", f"127.0.0.1:{admin}",
                           "--ready-timeout", "30"], capture_output=True, text=True, timeout=60)


def test_a_hot_restart_under_steady_requests_refuses_none(supervised):
    process, admin, listener, config = supervised
    answers: dict[str, int] = {}
    stop = threading.Event()

    def client():
        # New connection per request, as short calls between services do; bounded by count and time.
        deadline = time.monotonic() + 30
        for _ in range(20000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{listener}/", timeout=5) as response:
                    key = response.read().decode()
            except (OSError, urllib.error.URLError) as exc:
                key = f"error: {exc}"
            answers[key] = answers.get(key, 0) + 1

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(1.0)
    # The bootstrap changes, as when vmesh pushes a new one, and the unit's reload hot-restarts Envoy.
    config.write_text(json.dumps(_bootstrap(admin, listener, "epoch-config-2")))
    reloaded = _reload(process, admin)
    time.sleep(1.5)
    stop.set()
    thread.join(timeout=40)

    assert reloaded.returncode == 0, reloaded.stderr
    assert "Envoy epoch 1 is live (was 0)" in reloaded.stderr
    assert _server_info(admin) == (1, "LIVE")
    assert set(answers) == {"epoch-config-1", "epoch-config-2"}, answers
    assert answers["epoch-config-1"] > 20 and answers["epoch-config-2"] > 20, answers
    # A second hot restart waits for the first one's drain, then takes over too.
    again = _reload(process, admin)
    assert again.returncode == 0, again.stderr
    assert _server_info(admin) == (2, "LIVE")
    assert process.poll() is None


def test_a_new_epoch_that_cannot_start_leaves_the_old_one_serving(supervised):
    process, admin, listener, config = supervised
    config.write_text("{not json")  # the new epoch exits at once
    reloaded = _reload(process, admin)
    assert reloaded.returncode == 1
    # told by the supervisor at once, not by the 30 s timeout ("did not come up within")
    assert "did not come up: it exited before it took over" in reloaded.stderr
    assert _server_info(admin) == (0, "LIVE")
    with urllib.request.urlopen(f"http://127.0.0.1:{listener}/", timeout=5) as response:
        assert response.read() == b"epoch-config-1"
    assert process.poll() is None


def test_when_envoy_dies_the_supervisor_exits_with_it(supervised):
    process, admin, _, _ = supervised
    pids = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(pids) == 1
    os.kill(int(pids[0]), signal.SIGKILL)
    assert process.wait(timeout=30) != 0  # systemd's Restart=always starts the unit again
