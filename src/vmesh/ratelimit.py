"""The global rate-limit service's limits: envoyproxy/ratelimit's own YAML format, from an inventory variable.

Each domain is one file of the service's config folder (``<domain>.yaml``). The service reads that folder when
it starts and again whenever a file in it is created, written or removed, so new limits take effect with no
restart. ``files`` checks the variable strictly first (every field the service knows, units, counts, duplicates),
so a mistake names its field before any host changes; ``check`` then runs the service's own check
(``ratelimit-check``, built by ``vmesh tools build``) on the same files.

    files([{"domain": "edge", "descriptors": [{"key": "PATH", "value": "/productpage",
            "rate_limit": {"unit": "minute", "requests_per_unit": 5}}]}])
    -> {"edge.yaml": "domain: edge\\ndescriptors: ..."}
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from vmesh.errors import MeshError

UNITS = ("second", "minute", "hour", "day", "week", "month", "year")
FLAGS = ("shadow_mode", "quota_mode", "detailed_metric", "value_to_metric", "share_threshold")
DESCRIPTOR_FIELDS = ("key", "value", "rate_limit", "descriptors") + FLAGS
RATE_LIMIT_FIELDS = ("unit", "requests_per_unit", "unlimited", "name", "replaces")
MAX_DEPTH = 8  # nested descriptors; Envoy's rate_limits actions rarely go past three
CHECK_TIMEOUT = 60
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class _Where:
    """Names the field a mistake is in: ``ratelimit_domains[0].descriptors[1].rate_limit.unit``."""

    def __init__(self, variable: str):
        self.variable = variable

    def error(self, path: str, message: str) -> MeshError:
        return MeshError(message, file="inventory", doc=self.variable, field=path or None)


def _mapping(where: _Where, path: str, value: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.error(path, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if key not in known:
            raise where.error(f"{path}.{key}" if path else str(key),
                              f"unknown field (the service knows {', '.join(known)})")
    return value


def _string(where: _Where, path: str, value: Any, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise where.error(path, "required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise where.error(path, f"expected a string, got {type(value).__name__}")
    if required and not str(value):
        raise where.error(path, "must not be empty")
    return str(value)


def _rate_limit(where: _Where, path: str, value: Any) -> dict[str, Any]:
    given = _mapping(where, path, value, RATE_LIMIT_FIELDS)
    out: dict[str, Any] = {}
    unlimited = given.get("unlimited", False)
    if not isinstance(unlimited, bool):
        raise where.error(f"{path}.unlimited", "expected true or false")
    if unlimited:
        for field in ("unit", "requests_per_unit"):
            if field in given:
                raise where.error(f"{path}.{field}", "an unlimited rate_limit takes no unit or requests_per_unit")
        out["unlimited"] = True
    else:
        unit = _string(where, f"{path}.unit", given.get("unit"), required=True)
        if unit.lower() not in UNITS:
            raise where.error(f"{path}.unit", f"expected one of {', '.join(UNITS)}, got {unit!r}")
        count = given.get("requests_per_unit")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2 ** 32:
            raise where.error(f"{path}.requests_per_unit", f"expected a whole number from 0, got {count!r}")
        out.update(unit=unit.lower(), requests_per_unit=int(count))  # a plain int: Ansible's come tagged
    if "name" in given:
        out["name"] = _string(where, f"{path}.name", given["name"], required=True)
    if "replaces" in given:
        replaces = given["replaces"]
        if not isinstance(replaces, list):
            raise where.error(f"{path}.replaces", "expected a list of {name: ...}")
        out["replaces"] = [{"name": _string(where, f"{path}.replaces[{i}].name",
                                            _mapping(where, f"{path}.replaces[{i}]", r, ("name",)).get("name"),
                                            required=True)} for i, r in enumerate(replaces)]
    return out


def _descriptors(where: _Where, path: str, value: Any, depth: int) -> list[dict[str, Any]]:
    if depth > MAX_DEPTH:
        raise where.error(path, f"descriptors nest deeper than {MAX_DEPTH} levels")
    if value is None:
        return []
    if not isinstance(value, list):
        raise where.error(path, "expected a list of descriptors")
    out, seen = [], {}
    for index, item in enumerate(value):
        at = f"{path}[{index}]"
        given = _mapping(where, at, item, DESCRIPTOR_FIELDS)
        descriptor: dict[str, Any] = {"key": _string(where, f"{at}.key", given.get("key"), required=True)}
        if given.get("value") is not None:
            descriptor["value"] = _string(where, f"{at}.value", given["value"])
        pair = (descriptor["key"], descriptor.get("value", ""))
        if pair in seen:
            raise where.error(at, f"the same key and value as {path}[{seen[pair]}]: the service refuses duplicates")
        seen[pair] = index
        if given.get("rate_limit") is not None:
            descriptor["rate_limit"] = _rate_limit(where, f"{at}.rate_limit", given["rate_limit"])
        for flag in FLAGS:
            if flag in given:
                if not isinstance(given[flag], bool):
                    raise where.error(f"{at}.{flag}", "expected true or false")
                descriptor[flag] = bool(given[flag])
        children = _descriptors(where, f"{at}.descriptors", given.get("descriptors"), depth + 1)
        if children:
            descriptor["descriptors"] = children
        out.append(descriptor)
    return out


def files(domains: Any, variable: str = "ratelimit_domains") -> dict[str, str]:
    """The service's config files, ``{"<domain>.yaml": text}``, from a list of domains in its own format."""
    where = _Where(variable)
    if domains is None:
        return {}
    if not isinstance(domains, list):
        raise where.error("", "expected a list of domains, each {domain: NAME, descriptors: [...]}")
    out: dict[str, str] = {}
    for index, item in enumerate(domains):
        at = f"[{index}]"
        given = _mapping(where, at, item, ("domain", "descriptors"))
        domain = _string(where, f"{at}.domain", given.get("domain"), required=True)
        if not _FILE.fullmatch(domain) or len(domain) > 200:
            raise where.error(f"{at}.domain", "expected letters, digits, '_', '.' and '-' (the domain names its "
                                              f"file), at most 200, not starting with '.' or '-': {domain!r}")
        name = f"{domain}.yaml"
        if name in out:
            raise where.error(f"{at}.domain", f"domain {domain!r} is given twice")
        document = {"domain": domain,
                    "descriptors": _descriptors(where, f"{at}.descriptors", given.get("descriptors"), 1)}
        out[name] = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    return dict(sorted(out.items()))


def environment(config_root: str, *, grpc_port: int = 8081, http_port: int = 8080, debug_port: int = 6070,
                redis_url: str = "127.0.0.1:6379", log_level: str = "warn") -> dict[str, str]:
    """The service's settings (it reads only its environment): every port on loopback, where only the host's
    sidecar reaches it (mTLS where the mesh is STRICT); its limits from ``<config_root>/config``, watched
    there, dot files (editors', Ansible's temporary ones) ignored; counters in Redis; no statsd."""
    return {
        "HOST": "127.0.0.1", "PORT": str(http_port),
        "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(grpc_port),
        "DEBUG_HOST": "127.0.0.1", "DEBUG_PORT": str(debug_port),
        "RUNTIME_ROOT": config_root, "RUNTIME_SUBDIRECTORY": "", "RUNTIME_APPDIRECTORY": "config",
        "RUNTIME_WATCH_ROOT": "false", "RUNTIME_IGNOREDOTFILES": "true",
        "REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": redis_url,
        "USE_STATSD": "false", "LOG_LEVEL": log_level, "LOG_FORMAT": "text",
    }


def environment_file(settings: dict[str, str]) -> str:
    """systemd's EnvironmentFile text of ``settings``, values quoted."""
    for key, value in settings.items():
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) or any(c in value for c in '"\\\n$`'):
            raise MeshError(f"{key}={value!r}: not a setting the service's environment file can carry",
                            file="inventory", doc="ratelimit")
    return "".join(f'{key}="{value}"\n' for key, value in sorted(settings.items()))


def check(config: dict[str, str], binary: str | Path) -> None:
    """Run the service's own check (``ratelimit-check -config_dir``) on ``config``; a MeshError with its words
    when it refuses them."""
    with tempfile.TemporaryDirectory(prefix="vmesh-ratelimit-") as folder:
        for name, text in config.items():
            Path(folder, name).write_text(text, encoding="utf-8")
        try:
            ran = subprocess.run([os.fspath(binary), "-config_dir", folder], capture_output=True, text=True,
                                 timeout=CHECK_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MeshError(f"the rate-limit service's check did not run: {exc}", file=os.fspath(binary)) from None
    if ran.returncode != 0:
        said = [line for line in (ran.stdout + ran.stderr).splitlines() if "error" in line.lower()] or \
            (ran.stdout + ran.stderr).splitlines()[-3:]
        raise MeshError("the rate-limit service refuses these limits: " + " ".join(said).replace(folder, "."),
                        file="inventory", doc="ratelimit_domains")
