"""The vmesh_envoy_config module against a running Envoy: real requests on loopback while configs are pushed.

A small Envoy config of our own (free loopback ports, no network namespace): two static backend listeners answer
``A`` and ``B``; the dynamic part is what a push changes — a cluster per backend in ``cds.json``, a listener in
``lds.json`` whose route table (``rds_<name>.json``) picks the cluster. Its xDS sources are the compiler's own
(``envoy_types.file_source``), so the paths Envoy watches are those of a real sidecar. While a load loop sends
requests, pushes change clusters, routes and listeners; the test asserts which answer comes back and that no
request failed. Each test runs its pushes in one ansible-playbook run (the module, as the proxy role calls it).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from harness.config_push import Ports, args, config, in_force, install, pushes, tree, write_plain
from vmesh import envoy

# The mount points of the disk-full test, found and removed by name before it starts.
TMPFS_PREFIX = "vmesh-test-config-push-tmpfs-"
TMPFS_PARENT = Path("/run")
# The sidecar's drain flags (roles/proxy/templates/vmesh-proxy.service.j2), with a short drain time.
ENVOY_FLAGS = ["--drain-time-s", "5", "--drain-strategy", "immediate"]
LOAD_SECONDS_MAX = 120  # the load loop's bound, whatever happens


# --- a running Envoy and steady load ------------------------------------------------------------------------------


class RunningEnvoy:
    def __init__(self, dest: Path, ports: Ports, log: Path):
        self.ports = ports
        self.log = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen([envoy.binary(), "-c", str(dest / "envoy.json"), "--use-dynamic-base-id",
                                      "-l", "warning", *ENVOY_FLAGS], stdout=self._log, stderr=self._log)

    def stats(self, pattern: str) -> dict:
        url = f"http://127.0.0.1:{self.ports.admin}/stats?format=json&filter={pattern}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return {s["name"]: s["value"] for s in json.load(response)["stats"] if "value" in s}

    def wait_live(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(OSError, KeyError, ValueError):
                if self.stats("^server.state$")["server.state"] == 0:
                    return
            time.sleep(0.1)
        raise AssertionError("Envoy did not come up:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def running_envoy(dest: Path, ports: Ports, tmp_path: Path):
    proxy = RunningEnvoy(dest, ports, tmp_path / "envoy.log")
    try:
        proxy.wait_live()
        yield proxy
    finally:
        proxy.stop()


def ask(port: int) -> str:
    """One request on a new connection: the answer's body, or the failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read().decode()
        return body if response.status == 200 else f"{response.status} {body}"
    finally:
        conn.close()


class Load:
    """Steady requests to the listener from a few keep-alive clients (they reconnect when Envoy says close, as
    HTTP clients do when a listener drains); counts every answer and failure."""

    def __init__(self, port: int, clients: int = 3):
        self.port = port
        self.results: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        conn = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode()
                outcome = body if response.status == 200 else f"{response.status} {body}"
                if (response.getheader("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                conn = None
            with self._lock:
                self.results[outcome] += 1
        if conn is not None:
            conn.close()

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.3)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def failures(self) -> dict:
        return {k: v for k, v in self.results.items() if k not in ("A", "B")}


# --- tests -------------------------------------------------------------------------------------------------------


def test_pushes_under_load_fail_no_request(tmp_path):
    """Clusters, routes and listeners change under steady load: every push goes make-before-break, confirmed by the
    running Envoy, and not one request fails; the last push's answer is the one that comes back."""
    dest, ports = tmp_path / "envoy", Ports()
    install(dest, config(dest, ports, "A"))
    steps = [
        config(dest, ports, "B"),  # a new cluster routed to; the old one removed
        config(dest, ports, "A", cluster="to-A-again", route="front2"),  # a new listener, route table and cluster
        config(dest, ports, "A", cluster="to-A-again", route="front2", vhosts=3),  # routes only: one swap
        config(dest, ports, "B"),  # back to the first listener, route table and B
    ]
    with running_envoy(dest, ports, tmp_path) as proxy, Load(ports.front) as load:
        results = pushes(tmp_path, *(args(dest, files) for files in steps))
        assert ask(ports.front) == "B"
    for result in results:
        assert not result.get("failed"), result.get("msg")
        assert result["changed"] is True and result["envoy_confirmed"] is True
    assert [r["steps"] for r in results] == [
        ["clusters", "listeners and routes", "final"], ["clusters", "listeners and routes", "final"],
        ["listeners and routes"], ["clusters", "listeners and routes", "final"]]
    assert load.failures() == {}, (load.results, proxy.log.read_text())
    assert load.results["A"] > 50 and load.results["B"] > 50, load.results
    assert in_force(dest) == steps[-1]
    assert {p.name for p in dest.iterdir() if p.name.startswith("..")} == \
        {"..data", "..previous", results[-1]["version"], results[-1]["previous_version"]}


def test_migration_from_plain_files_under_load(tmp_path):
    """A directory the module filled before versions (plain files) is adopted while Envoy serves from it: no
    request fails, the new config takes effect, and the push after it changes nothing."""
    dest, ports = tmp_path / "envoy", Ports()
    old = config(dest, ports, "A")
    write_plain(dest, old)
    new = config(dest, ports, "B", route="front2")
    with running_envoy(dest, ports, tmp_path) as proxy, Load(ports.front) as load:
        assert ask(ports.front) == "A"
        result, again = pushes(tmp_path, args(dest, new), args(dest, new))
        assert ask(ports.front) == "B"
    assert not result.get("failed"), result.get("msg")
    assert result["migrated"] is True and result["envoy_confirmed"] is True
    assert result["steps"] == ["clusters", "listeners and routes", "final"]
    assert again["changed"] is False and again["migrated"] is False
    assert load.failures() == {}, (load.results, proxy.log.read_text())
    assert load.results["A"] > 10 and load.results["B"] > 10, load.results
    assert in_force(dest) == new
    for name in new:
        assert os.readlink(dest / name) == f"..data/{name}"
    # the plain files are the version kept for rollback
    previous = dest / os.readlink(dest / "..previous")
    assert {p.name: p.read_text() for p in previous.iterdir()} == old


def test_envoy_refusing_a_step_undoes_the_push(tmp_path):
    """Envoy refuses a cluster that validation let through (the validator given here is true(1), so only the
    running Envoy judges): the push fails, the steps swapped are swapped back, the last good config is in force on
    disk and in Envoy."""
    dest, ports = tmp_path / "envoy", Ports()
    install(dest, config(dest, ports, "A"))
    before = tree(dest)
    bad = config(dest, ports, "B", bad_address=True)
    with running_envoy(dest, ports, tmp_path) as proxy, Load(ports.front) as load:
        (result,) = pushes(tmp_path, args(dest, bad, reload_timeout=10, envoy="/bin/true"))
        rejected = proxy.stats("cds.update_rejected")["cluster_manager.cds.update_rejected"]
        assert ask(ports.front) == "A"
    assert result["failed"] is True
    assert "step 'clusters' of the push: Envoy rejected it (cluster_manager.cds.update_rejected" in result["msg"]
    assert "undone" in result["msg"]
    assert rejected >= 1
    assert load.failures() == {}, load.results
    assert tree(dest) == before


# --- a full disk -------------------------------------------------------------------------------------------------


def _unmount_leftovers() -> None:
    """Mount points an interrupted run of this test left, found by name (``<prefix><pid>``; a live test process's
    own is left alone)."""
    for path in TMPFS_PARENT.glob(TMPFS_PREFIX + "*"):
        pid = path.name[len(TMPFS_PREFIX):]
        if pid.isdigit() and int(pid) != os.getpid() and Path(f"/proc/{pid}").exists():
            continue
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def small_disk():
    """A 256 KiB tmpfs, root's, mode 0755, unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    _unmount_leftovers()
    mount = TMPFS_PARENT / f"{TMPFS_PREFIX}{os.getpid()}"
    mount.mkdir(mode=0o755)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "vmesh-test", str(mount)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=False)
    finally:
        with contextlib.suppress(OSError):
            mount.rmdir()


def test_full_disk_leaves_the_last_good_config_in_force(tmp_path, small_disk):
    """A push whose files do not fit fails naming the file and ENOSPC; nothing of it is in force (the running Envoy
    goes on answering as before, the directory is as it was); a push that fits works afterwards."""
    dest, ports = small_disk / "envoy", Ports()
    too_big = config(dest, ports, "B", vhosts=3000)
    assert len(too_big["rds_front.json"]) > 256 * 1024
    fits = config(dest, ports, "B")
    install(dest, config(dest, ports, "A"))
    before, free_before = tree(dest), os.statvfs(small_disk).f_bfree
    with running_envoy(dest, ports, tmp_path) as proxy, Load(ports.front) as load:
        (failed,) = pushes(tmp_path, args(dest, too_big))
        assert ask(ports.front) == "A"
        after_failure = tree(dest)
        free_after = os.statvfs(small_disk).f_bfree
        (works,) = pushes(tmp_path, args(dest, fits))
        assert ask(ports.front) == "B"
    assert failed["failed"] is True
    message = failed["msg"]
    assert f"writing {dest}/.." in message and "/rds_front.json: No space left on device (ENOSPC)" in message
    assert "nothing of the new config is in force" in message
    assert after_failure == before  # no half-written version left behind
    assert free_after == free_before
    assert not works.get("failed"), works.get("msg")
    assert works["changed"] is True and works["envoy_confirmed"] is True
    assert in_force(dest) == fits
    assert load.failures() == {}, (load.results, proxy.log.read_text())
    assert load.results["A"] > 10 and load.results["B"] > 10, load.results
