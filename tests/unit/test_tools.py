"""``vmesh tools``: a pinned Go program is built once, in a scratch module, and put in place whole or not at all
(a stand-in ``go`` records what it was asked; the real build runs in `make test`'s set-up, and Jaeger from it in
tests/netns/test_bookinfo_observability.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmesh import tools
from vmesh.errors import MeshError

FAKE_GO = """#!/bin/sh
echo "$PWD $*" >> "{log}"
case "$1" in
  build) [ -n "{fail}" ] && {{ echo "compile error: no room left" >&2; exit 1; }}
         while [ "$1" != "-o" ]; do shift; done; printf '#!/bin/sh\\necho built\\n' > "$2" ;;
  get) echo "go: added github.com/jaegertracing/jaeger v1.75.0" ;;
esac
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VMESH_TOOLS_DIR", str(tmp_path / "tools"))
    return tmp_path / "tools"


def fake_go(tmp_path: Path, fail: bool = False) -> tuple[str, Path]:
    log = tmp_path / "go-calls.txt"
    go = tmp_path / "go"
    go.write_text(FAKE_GO.format(log=log, fail="yes" if fail else ""))
    go.chmod(0o755)
    return str(go), log


def test_a_tool_is_built_once_in_a_scratch_module_at_its_pinned_version(cache, tmp_path):
    go, log = fake_go(tmp_path)
    with pytest.raises(MeshError, match=r"jaeger is not built: run `vmesh tools build jaeger`"):
        tools.built("jaeger")
    path, now = tools.build("jaeger", go=go)
    assert now and path == cache / "jaeger-v1.75.0" / "jaeger" and tools.built("jaeger") == path
    assert subprocess.run([str(path)], capture_output=True, text=True, check=True).stdout == "built\n"
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
    scratch = {where for where, _ in calls}
    assert len(scratch) == 1 and not Path(scratch.pop()).exists()  # one scratch module, removed after
    assert [argv for _, argv in calls] == [
        "mod init vmesh-tools", "get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v1.75.0",
        "build -trimpath -ldflags=-s -w -o " + calls[2][0] + "/jaeger github.com/jaegertracing/jaeger/cmd/jaeger"]
    # built: nothing is run again
    assert tools.build("jaeger", go=go) == (path, False) and len(log.read_text().splitlines()) == 3


def test_a_failed_build_leaves_no_program_and_says_why(cache, tmp_path):
    go, _ = fake_go(tmp_path, fail=True)
    with pytest.raises(MeshError, match="building jaeger failed at `.* build -trimpath`:\n(.|\n)*no room left"):
        tools.build("jaeger", go=go)
    assert not tools.path("jaeger").exists() and os.listdir(cache / "jaeger-v1.75.0") == ["build.log"]


def test_unknown_tools_and_a_missing_go_are_clear_errors(cache, monkeypatch):
    with pytest.raises(MeshError, match="unknown tool 'grafana': vmesh builds jaeger"):
        tools.build("grafana")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(tools, "GO_ELSEWHERE", ())
    with pytest.raises(MeshError, match="building jaeger needs Go"):
        tools.build("jaeger")


def test_the_command_says_where_a_tool_is(cache, tmp_path):
    vmesh = [str(Path(sys.executable).with_name("vmesh")), "tools"]
    env = {**os.environ, "VMESH_TOOLS_DIR": str(cache)}
    missing = subprocess.run([*vmesh, "path", "jaeger"], capture_output=True, text=True, env=env, check=False)
    assert missing.returncode == 1 and "jaeger is not built" in missing.stderr
    go, _ = fake_go(tmp_path)
    env["PATH"] = f"{tmp_path}:{env['PATH']}"  # the stand-in go first
    built = subprocess.run([*vmesh, "build"], capture_output=True, text=True, env=env, check=False)
    assert built.returncode == 0, built.stderr
    # all of them, each at its pin
    assert f"jaeger v1.75.0: {cache}/jaeger-v1.75.0/jaeger (built)\n" in built.stdout
    pin = tools.RATELIMIT_VERSION
    assert f"ratelimit {pin}: {cache}/ratelimit-{pin}/ratelimit (built)\n" in built.stdout
    assert built.stdout.endswith(f"ratelimit-check {pin}: {cache}/ratelimit-check-{pin}/ratelimit-check (built)\n")
    found = subprocess.run([*vmesh, "path", "jaeger"], capture_output=True, text=True, env=env, check=False)
    assert found.stdout == f"{cache}/jaeger-v1.75.0/jaeger\n"


def test_make_builds_them_with_the_standard_library_alone(cache, tmp_path):
    # `make prepare` builds the tools while the set-up still installs the project: python3 -I, src on the path
    go, _ = fake_go(tmp_path)
    src = Path(tools.__file__).resolve().parents[1]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "VMESH_TOOLS_DIR": str(cache), "HOME": str(tmp_path)}
    ran = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(src)!r}); "
                          "import runpy; runpy.run_module('vmesh.tools', run_name='__main__')", "ratelimit"],
                         capture_output=True, text=True, env=env, check=False)
    pin = tools.RATELIMIT_VERSION
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.endswith(f"ratelimit {pin}: {cache}/ratelimit-{pin}/ratelimit (built)\n")
    unknown = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(src)!r}); "
                              "import runpy; runpy.run_module('vmesh.tools', run_name='__main__')", "grafana"],
                             capture_output=True, text=True, env=env, check=False)
    assert unknown.returncode == 1 and "unknown tool 'grafana'" in unknown.stderr
