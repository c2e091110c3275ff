"""Jaeger (built from its Go module by `vmesh tools build jaeger`, which `make test` runs) for the
network-namespace tests: run in a host of a NetMesh with the config vmesh.monitoring writes for the monitoring
role, and asked through its query API."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest

from harness.prometheus import APP_UID
from vmesh import monitoring, tools


def available() -> bool:
    return os.access(tools.path("jaeger"), os.X_OK)


requires_jaeger = pytest.mark.skipif(not available(),
                                     reason=f"needs Jaeger at {tools.path('jaeger')} (vmesh tools build jaeger)")
QUERY_PORT = monitoring.JAEGER_PORTS["query"]


def start(mesh, host: str, folder: Path) -> str:
    """Jaeger on ``host`` (Zipkin on 9411, OTLP, the query API on 16686); its query URL."""
    config = folder / "jaeger.yaml"
    config.write_text(monitoring.dumps(monitoring.jaeger_config()))
    os.chmod(config, 0o644)
    mesh.start_app(host, [str(tools.built("jaeger")), f"--config={config}"], name="jaeger",
                   wait_port=monitoring.JAEGER_PORTS["zipkin"], timeout=30, uid=APP_UID)
    return f"http://{mesh.address(host)}:{QUERY_PORT}"


def traces(mesh, host: str, service: str, **params: str) -> list[dict]:
    """Jaeger's answer to /api/traces for ``service``, asked from ``host`` (the traces, newest first)."""
    query = urllib.parse.urlencode({"service": service, "limit": "50", "lookback": "1h", **params})
    answer = mesh.request(host, f"http://{mesh.address(host)}:{QUERY_PORT}/api/traces?{query}")
    assert answer.status == 200, answer
    return answer.json()["data"] or []
