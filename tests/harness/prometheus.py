"""Prometheus (Debian's package) for the network-namespace tests: run in a host of a NetMesh (one outside the mesh)
with the targets, rules and config vmesh.monitoring writes for the monitoring role, scraping every second, and the
role's console pages."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from harness import ROOT
from vmesh import monitoring

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
APP_UID = 1000  # NetMesh.start_app runs apps as this user
CONSOLES = ROOT / "roles" / "monitoring" / "files"  # the mesh, service and workload pages the role installs
requires_prometheus = pytest.mark.skipif(not os.path.exists(BINARY), reason="needs Debian's prometheus (make setup)")


@pytest.fixture(scope="module")
def prometheus_dir() -> Iterator[Path]:
    """A folder Prometheus's user can reach (pytest's own are root's alone), removed after the module."""
    folder = Path(tempfile.mkdtemp(prefix="vmesh-netns-prometheus-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start(mesh, host: str, folder: Path) -> str:
    """Prometheus on ``host`` scraping the mesh's proxies; its URL (reached from inside the mesh's network)."""
    targets, rules, config = (folder / name for name in ("targets.json", "rules.yml", "prometheus.yml"))
    targets.write_text(monitoring.dumps(monitoring.targets(mesh.registry)))
    rules.write_text(yaml.safe_dump(monitoring.RULES))
    config.write_text(monitoring.dumps(monitoring.config(str(targets), str(rules), scrape_interval="1s",
                                                         evaluation_interval="1s")))
    data = folder / "data"
    data.mkdir()
    os.chown(data, APP_UID, APP_UID)
    mesh.start_app(host, [BINARY, f"--config.file={config}", f"--storage.tsdb.path={data}",
                          "--web.listen-address=0.0.0.0:9090", f"--web.console.templates={CONSOLES}/consoles",
                          f"--web.console.libraries={CONSOLES}/console_libraries"],
                   name="prometheus", wait_port=9090, timeout=30)
    return f"http://{mesh.address(host)}:9090"
