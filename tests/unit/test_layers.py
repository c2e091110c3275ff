"""The compiler's layers point down: each module imports on its own, in a fresh interpreter, and imports nothing
from a layer above it (cli -> artifact, monitoring, graph, traces -> compile -> load -> rollout -> istio ->
registry/documents -> names/errors)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT

SRC = ROOT / "src"
# Every module but the package's own __init__ (a version string) and the __main__ modules (which run a CLI).
MODULES = sorted(
    ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    for path in (SRC / "vmesh").rglob("*.py")
    if path.relative_to(SRC).as_posix() != "vmesh/__init__.py" and path.name != "__main__.py"
)

# Lower number, lower layer. A module may import only from its own layer or below.
LAYERS = [
    (0, ("vmesh.names", "vmesh.errors", "vmesh.envoy", "vmesh.tools", "vmesh.remote")),
    (1, ("vmesh.documents", "vmesh.registry", "vmesh.inputs")),
    (2, ("vmesh.istio",)),
    # A rollout's routing is a transform of the documents, applied before the model is built (vmesh.load).
    (3, ("vmesh.rollout",)),
    (4, ("vmesh.load",)),
    (5, ("vmesh.compile",)),
    (6, ("vmesh.plot", "vmesh.lab", "vmesh.artifact", "vmesh.monitoring", "vmesh.graph",
          "vmesh.traces", "vmesh.ratelimit", "vmesh.ssh", "vmesh.status", "vmesh.proxyconfig")),
    (7, ("vmesh.cli",)),
]


def layer(module: str) -> int:
    for number, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    raise AssertionError(f"{module}: no layer; add it to LAYERS in {__file__}")


def imports(module: str) -> set[str]:
    """The vmesh modules ``module`` imports, anywhere in it (also inside functions)."""
    path = SRC / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name != "vmesh" and name in MODULES}


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", MODULES)
def test_no_import_from_a_layer_above(module):
    above = sorted(name for name in imports(module) if layer(name) > layer(module))
    assert not above, f"{module} (layer {layer(module)}) imports {above} from above it"
