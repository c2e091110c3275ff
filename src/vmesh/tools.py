"""Programs vmesh deploys that ship neither as a Python nor as a Debian package (Jaeger, Envoy's rate-limit
service): built from their Go module at a pinned version with the machine's ``go``, once, into a cache; never vendored.

``python3 -m vmesh.tools [NAME...]`` (with ``src`` on ``PYTHONPATH``) builds them as ``vmesh tools build`` does, with
nothing but Go and Python's standard library: ``make`` builds them that way while the set-up still installs the
project's own dependencies.

The cache is ``$VMESH_TOOLS_DIR``, else ``~/.cache/vmesh/tools``; a program is ``<cache>/<name>-<version>/<name>``,
so a new pin builds beside the old one and a finished binary is never rebuilt. A build happens in a scratch
module of its own (``go get -tool``, then ``go build``): ``go install module/cmd@version`` refuses modules whose
go.mod has ``replace`` directives, as Jaeger's has.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vmesh.errors import MeshError


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    module: str
    package: str  # the Go package of the command
    version: str  # the module's version, as the Go module proxy serves it
    what: str


JAEGER = "github.com/jaegertracing/jaeger"
RATELIMIT = "github.com/envoyproxy/ratelimit"
# envoyproxy/ratelimit tags no releases: its main branch is what it ships (as container images named by commit)
RATELIMIT_VERSION = "v1.4.1-0.20260122083618-3fb702589d36"
TOOLS = {
    # Jaeger v2 (an OpenTelemetry collector with Jaeger's storage and query): the module's v1.x tags are the
    # v2 releases' Go versions. v1.75.0 is Jaeger 2.12.
    "jaeger": Tool("jaeger", JAEGER, f"{JAEGER}/cmd/jaeger", "v1.75.0",
                   "Jaeger, the trace store and query API (Zipkin and OTLP receivers)"),
    "ratelimit": Tool("ratelimit", RATELIMIT, f"{RATELIMIT}/src/service_cmd", RATELIMIT_VERSION,
                      "Envoy's reference rate-limit service (gRPC, counters in Redis)"),
    "ratelimit-check": Tool("ratelimit-check", RATELIMIT, f"{RATELIMIT}/src/config_check_cmd", RATELIMIT_VERSION,
                            "the rate-limit service's own check of its configuration files"),
}
GO_ELSEWHERE = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")  # where Go's tarball and Debian put it, off PATH
BUILD_TIMEOUT = 3600  # seconds: a first build downloads and compiles several hundred modules


def cache_dir() -> Path:
    given = os.environ.get("VMESH_TOOLS_DIR")
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmesh" / "tools"


def tool(name: str) -> Tool:
    try:
        return TOOLS[name]
    except KeyError:
        raise MeshError(f"unknown tool {name!r}: vmesh builds {', '.join(sorted(TOOLS))}") from None


def path(name: str) -> Path:
    """Where the built program is (whether or not it has been built)."""
    wanted = tool(name)
    return cache_dir() / f"{wanted.name}-{wanted.version}" / wanted.name


def built(name: str) -> Path:
    """The built program; a clear error when it is not there yet."""
    found = path(name)
    if not os.access(found, os.X_OK):
        raise MeshError(f"{name} is not built: run `vmesh tools build {name}` (needs Go; `make setup` runs it)",
                        file=str(found))
    return found


def build(name: str, go: str | None = None, log: Path | None = None) -> tuple[Path, bool]:
    """Build ``name`` unless it is there; (its path, whether it was built now). The build's output goes to
    ``log`` (default: beside the program) and its tail into the error when it fails."""
    wanted, target = tool(name), path(name)
    if os.access(target, os.X_OK):
        return target, False
    go = go or shutil.which("go") or next((g for g in GO_ELSEWHERE if os.access(g, os.X_OK)), None)
    if not go:
        raise MeshError(f"building {name} needs Go (the go command): install it, or put a built {name} at {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    log = log or target.parent / "build.log"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "LC_ALL": "C"}
    with tempfile.TemporaryDirectory(prefix=f"vmesh-build-{name}-", dir=target.parent) as scratch, \
            open(log, "w", encoding="utf-8") as out:
        partial = Path(scratch) / name
        steps = [
            [go, "mod", "init", "vmesh-tools"],
            [go, "get", "-tool", f"{wanted.package}@{wanted.version}"],
            [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), wanted.package],
        ]
        for argv in steps:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            try:
                ran = subprocess.run(argv, cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     timeout=BUILD_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                raise MeshError(f"building {name} took over {BUILD_TIMEOUT} s", file=str(log)) from None
            if ran.returncode != 0:
                out.flush()
                tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
                raise MeshError(f"building {name} failed at `{' '.join(argv[:3])}`:\n" + "\n".join(tail),
                                file=str(log))
        os.chmod(partial, 0o755)
        os.replace(partial, target)  # whole or not at all: a build cut short leaves no program behind
    return target, True


def build_all(names: list[str] | None = None) -> None:
    """Build each named tool (default: all) unless built, saying what it does."""
    for name in names or sorted(TOOLS):
        wanted = tool(name)
        if not path(name).exists():
            print(f"building {name} {wanted.version} from {wanted.module} with go (minutes the first time)",
                  flush=True)
        found, now = build(name)
        print(f"{name} {wanted.version}: {found}{' (built)' if now else ''}", flush=True)


def main(argv: list[str]) -> int:
    try:
        build_all(argv)
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
