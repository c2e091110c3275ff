"""``vmesh status``: whether each host's running Envoy has what vmesh would render now, like ``istioctl
proxy-status`` for VMs; ``vmesh proxy-config``: what one host's Envoy runs, as tables.

A host's report comes from ``vmesh/remote/hostinfo.py`` run on it (over SSH: :mod:`vmesh.ssh`). Its status:

- ``NOT RUNNING``: Envoy's admin does not answer;
- ``STALE``: some file of its config differs from the render (``file <name>``), or Envoy does not have a rendered
  file's resources in force (``envoy <name>``: each file carries its version, which Envoy reports per
  subscription in /config_dump), or the bootstrap changed since Envoy started (a hot restart is pending);
- ``SYNCED``: none of that.

Beside it: Envoy's version and uptime, the certificate's identity and expiry (and whether it is the identity the
host should have), whether the redirect rules are intact, when the config was last pushed, and whether the host
is drained.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from typing import Any, Mapping

from vmesh.compile import BOOTSTRAP_FILE, HostConfig

CONFIG_DUMP = "/config_dump?include_eds"
SERVER_INFO = "/server_info"
SYNCED, STALE, NOT_RUNNING, UNREACHABLE = "SYNCED", "STALE", "NOT RUNNING", "UNREACHABLE"
_VERSION_DIR = re.compile(r"^\.\.(\d{8}T\d{6})\.[0-9a-f]{6}$")
_DUMPS = {
    "listeners": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
    "clusters": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
    "routes": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
    "endpoints": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
    "secrets": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
}


def request(config_dir: str, certs_dir: str, redirect: list[str] | None,
            admin_paths: tuple[str, ...] = (SERVER_INFO, CONFIG_DUMP)) -> dict[str, Any]:
    """hostinfo.py's argument."""
    return {"config_dir": config_dir, "certs_dir": certs_dir, "admin": "127.0.0.1:15000", "redirect": redirect,
            "admin_paths": list(admin_paths)}


def dump_section(config_dump: Mapping[str, Any] | None, kind: str) -> dict[str, Any]:
    for section in (config_dump or {}).get("configs", []):
        if section.get("@type") == _DUMPS[kind]:
            return section
    return {}


def running_versions(config_dump: Mapping[str, Any] | None) -> dict[tuple[str, str], str]:
    """{(kind, resource name or ""): version_info} of what Envoy has in force from its files."""
    out: dict[tuple[str, str], str] = {}
    for kind in ("listeners", "clusters"):
        section = dump_section(config_dump, kind)
        if section:
            out[(kind, "")] = section.get("version_info", "")
    for item in dump_section(config_dump, "routes").get("dynamic_route_configs", []):
        out[("routes", item.get("route_config", {}).get("name", ""))] = item.get("version_info", "")
    # Envoy keeps no version of an endpoints file: the endpoints themselves stand for it
    for item in dump_section(config_dump, "endpoints").get("dynamic_endpoint_configs", []):
        assignment = item.get("endpoint_config", {})
        out[("endpoints", assignment.get("cluster_name", ""))] = _endpoints(assignment)
    for item in dump_section(config_dump, "secrets").get("dynamic_active_secrets", []):
        out[("secrets", item.get("name", ""))] = item.get("version_info", "")
    return out


def _endpoints(assignment: Mapping[str, Any]) -> str:
    """A ClusterLoadAssignment's endpoints as one text: addresses, ports and weights, sorted."""
    found = []
    for group in assignment.get("endpoints", []):
        for lb_endpoint in group.get("lb_endpoints", []):
            address = lb_endpoint.get("endpoint", {}).get("address", {}).get("socket_address", {})
            found.append(f"{address.get('address')}:{address.get('port_value')}"
                         f"*{lb_endpoint.get('load_balancing_weight', 1)}")
    return " ".join(sorted(found))


def wanted_versions(files: Mapping[str, str]) -> dict[str, tuple[tuple[str, str], str]]:
    """{file name: ((kind, resource name or ""), version)} of a host's rendered xDS files: the file's
    version_info, or for an endpoints file its endpoints (:func:`_endpoints`)."""
    out = {}
    for name, text in files.items():
        prefix = name.split("_", 1)[0].split(".", 1)[0]
        kind = {"lds": "listeners", "cds": "clusters", "rds": "routes", "eds": "endpoints", "sds": "secrets"}.get(prefix)
        if kind is None:
            continue
        doc = json.loads(text)
        resource = doc["resources"][0] if doc.get("resources") else {}
        key = {"routes": resource.get("name", ""), "endpoints": resource.get("cluster_name", ""),
               "secrets": resource.get("name", "")}.get(kind, "")
        out[name] = ((kind, key), _endpoints(resource) if kind == "endpoints" else doc.get("version_info", ""))
    return out


def _seconds(value: Any) -> int | None:
    try:
        return int(str(value).rstrip("s"))
    except ValueError:
        return None


def _certificate(pem: str | None) -> dict[str, Any]:
    if not pem:
        return {"identity": None, "expires": None}
    from cryptography import x509  # only status reads certificates

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        return {"identity": None, "expires": None}
    return {"identity": uris[0] if uris else None, "expires": cert.not_valid_after_utc.isoformat()}


_FAMILIES = ("# iptables -t nat", "# ip6tables -t filter")


def _redirect(report: Mapping[str, Any] | None) -> str:
    """From ``vmesh-iptables show --config``: each family's rules, then "# in sync with ..." or a diff."""
    if not report or report.get("rc") != 0:
        return "unknown"
    lines = report.get("output", "").splitlines()
    families = sum(1 for line in lines if line in _FAMILIES)
    if not families:
        return "unknown"
    if lines.count("# no vmesh rules") == families:
        return "missing"
    return "intact" if sum(1 for line in lines if line.startswith("# in sync with ")) == families else "DRIFT"


def last_push(version_dir: str | None) -> str | None:
    match = _VERSION_DIR.match(version_dir or "")
    if not match:
        return None
    stamp = datetime.datetime.strptime(match[1], "%Y%m%dT%H%M%S").replace(tzinfo=datetime.timezone.utc)
    return stamp.isoformat()


def host_status(config: HostConfig, report: Mapping[str, Any] | Exception, drained: bool = False,
                now: datetime.datetime | None = None) -> dict[str, Any]:
    """One host's line of ``vmesh status`` from the render and its report (or the error reaching it)."""
    out: dict[str, Any] = {"host": config.host, "status": SYNCED, "differs": [], "envoy": None, "uptime": None,
                           "identity": None, "expires": None, "identity_ok": None, "redirect": "unknown",
                           "last_push": None, "drained": drained}
    if isinstance(report, Exception):
        return {**out, "status": UNREACHABLE, "differs": [str(report)]}
    now = now or datetime.datetime.now(datetime.timezone.utc)
    wanted = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in config.files.items()}
    have = report.get("files") or {}
    differs = [f"file {name}" for name in sorted(set(wanted) | set(have)) if wanted.get(name) != have.get(name)]
    info = (report.get("admin") or {}).get(SERVER_INFO)
    cert = _certificate(report.get("cert"))
    out.update(cert, identity_ok=cert["identity"] == config.identity if config.identity else None,
               redirect=_redirect(report.get("redirect")), last_push=last_push(report.get("version")))
    if info is None:
        return {**out, "status": NOT_RUNNING, "differs": differs}
    version = str(info.get("version", "")).split("/")
    out["envoy"] = version[1] if len(version) > 1 else info.get("version")
    out["uptime"] = _seconds(info.get("uptime_all_epochs"))
    running = running_versions((report.get("admin") or {}).get(CONFIG_DUMP))
    # Envoy reads a route table, endpoints or secret file only when a listener or cluster names it
    sources = config.files.get("lds.json", "") + config.files.get("cds.json", "")
    for name, (key, version_info) in sorted(wanted_versions(config.files).items()):
        if key[0] in ("routes", "endpoints", "secrets") and f"/{name}\"" not in sources:
            continue
        if running.get(key) != version_info:
            differs.append(f"envoy {name}")
    epoch_uptime = _seconds(info.get("uptime_current_epoch"))
    mtime, then = report.get("bootstrap_mtime"), report.get("now")
    if mtime and then and epoch_uptime is not None and mtime > then - epoch_uptime + 1:
        differs.append(f"envoy {BOOTSTRAP_FILE} (a hot restart is pending)")
    out["differs"] = differs
    out["status"] = STALE if differs else SYNCED
    return out


def healthy(line: Mapping[str, Any]) -> bool:
    """Whether a host's line calls for no action: synced, its redirect intact, its certificate its own."""
    return line["status"] == SYNCED and line["redirect"] == "intact" and line["identity_ok"] is not False


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def text(lines: list[Mapping[str, Any]]) -> str:
    rows = [["HOST", "STATUS", "ENVOY", "UPTIME", "IDENTITY", "CERT EXPIRES", "REDIRECT", "LAST PUSH"]]
    notes = []
    for line in lines:
        status = line["status"] + (" (drained)" if line["drained"] else "")
        identity = (line["identity"] or "-") + ("" if line["identity_ok"] is not False else " (NOT ITS OWN)")
        rows.append([line["host"], status, line["envoy"] or "-", _age(line["uptime"]), identity,
                     (line["expires"] or "-")[:16], line["redirect"], (line["last_push"] or "-")[:16]])
        notes += [f"{line['host']}: {what}" for what in line["differs"]]
    return table(rows) + "".join(f"  {note}\n" for note in notes)


def redirect_command(hostvars: Mapping[str, Any]) -> list[str]:
    """The redirect role's own check on the host: its rules against the config it applied."""
    install = hostvars.get("redirect_install_dir", "/opt/vmesh")
    return [f"{install}/bin/vmesh-iptables", "show", "--config",
            hostvars.get("redirect_config_path", "/etc/vmesh/redirect.json")]


def status_lines(configs: Mapping[str, HostConfig], reports: Mapping[str, Any],
                 drained: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    return [host_status(configs[host], reports[host], host in drained) for host in sorted(configs)]
