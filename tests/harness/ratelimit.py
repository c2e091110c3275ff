"""Envoy's rate-limit service (built from its Go module by `vmesh tools build`, which `make test` runs) and Redis
(Debian's redis-server) for the network-namespace tests: run in a host of a NetMesh with the settings and config
files the ratelimit role gives them, stopped and started again as a test needs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.prometheus import APP_UID
from vmesh import ratelimit, tools

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_PORT = 6379
SETTINGS = ratelimit.environment("", log_level="info")  # RUNTIME_ROOT is set per run
GRPC_PORT = int(SETTINGS["GRPC_PORT"])
DEBUG_PORT = int(SETTINGS["DEBUG_PORT"])


def available() -> bool:
    return os.access(tools.path("ratelimit"), os.X_OK) and os.access(REDIS, os.X_OK)


requires_ratelimit = pytest.mark.skipif(
    not available(), reason=f"needs the rate-limit service at {tools.path('ratelimit')} (vmesh tools build) "
                            f"and {REDIS} (Debian's redis-server)")


class Service:
    """Redis and the rate-limit service on one host of ``mesh``; its config folder is ``folder/config``."""

    def __init__(self, mesh, host: str, folder: Path):
        self.mesh, self.host, self.folder = mesh, host, folder
        self.config = folder / "config"
        self.config.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)
        os.chmod(self.config, 0o755)
        self.redis: subprocess.Popen | None = None
        self.service: subprocess.Popen | None = None

    def write(self, domains: list[dict]) -> None:
        """The limits, as the role writes them: each file whole, by rename; files of domains gone, removed."""
        files = ratelimit.files(domains)
        for name, text in files.items():
            partial = self.config / f".{name}.partial"
            partial.write_text(text, encoding="utf-8")
            os.chmod(partial, 0o644)
            os.replace(partial, self.config / name)
        for old in self.config.iterdir():
            if old.name not in files and not old.name.startswith("."):
                old.unlink()

    def start_redis(self) -> None:
        self.redis = self.mesh.start_app(
            self.host, [REDIS, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--dir", "/tmp"], name="redis", wait_port=REDIS_PORT, uid=APP_UID)

    def start_service(self) -> None:
        env = {**SETTINGS, "RUNTIME_ROOT": str(self.folder)}
        self.service = self.mesh.start_app(self.host, [str(tools.built("ratelimit"))], env, name="ratelimit",
                                           wait_port=GRPC_PORT, timeout=30, uid=APP_UID)

    def start(self, domains: list[dict]) -> Service:
        self.write(domains)
        self.start_redis()
        self.start_service()
        return self

    @staticmethod
    def _stop(proc: subprocess.Popen | None) -> None:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def stop_redis(self) -> None:
        self._stop(self.redis)

    def stop_service(self) -> None:
        self._stop(self.service)

    def flush(self) -> None:
        """Every counter back to zero (a fresh minute for each test)."""
        argv = ["redis-cli", "-p", str(REDIS_PORT), "FLUSHALL"]
        out = subprocess.run(["ip", "netns", "exec", self.mesh.namespace(self.host), *argv], capture_output=True,
                             text=True, timeout=10, check=False)
        assert out.stdout.strip() == "OK", out

    def loaded(self) -> str:
        """The limits in force, as the service's debug port tells them (/rlconfig)."""
        answer = self.mesh.request(self.host, f"http://127.0.0.1:{DEBUG_PORT}/rlconfig")
        assert answer.status == 200, answer
        return answer.text

    def wait_loaded(self, expected: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.loaded()
            if expected in text or time.monotonic() > deadline:
                return text
            time.sleep(0.2)
