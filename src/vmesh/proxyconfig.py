"""``vmesh proxy-config HOST KIND``: one host's running Envoy, summarised per kind as ``istioctl proxy-config``
does (a table), or the resources themselves (``-o json``). Reads the admin answers :mod:`vmesh.status` fetches."""

from __future__ import annotations

from typing import Any, Mapping

from vmesh.status import dump_section, table

KINDS = ("clusters", "listeners", "routes", "endpoints", "secrets")
CONFIG_DUMP = "/config_dump"
CLUSTERS = "/clusters?format=json"
CERTS = "/certs"
#: the admin answers each kind is made from
ADMIN_PATHS = {"clusters": (CONFIG_DUMP,), "listeners": (CONFIG_DUMP,), "routes": (CONFIG_DUMP,),
               "endpoints": (CLUSTERS,), "secrets": (CONFIG_DUMP, CERTS)}


def _cluster_row(cluster: Mapping[str, Any]) -> list[str]:
    name = cluster.get("name", "")
    parts = name.split("|")
    kind = str(cluster.get("type", "EDS" if "eds_cluster_config" in cluster else "STATIC"))
    if len(parts) == 4 and parts[0] in ("outbound", "inbound"):
        return [parts[3] or "-", parts[1], parts[2] or "-", parts[0], kind]
    return [name, "-", "-", "-", kind]


def clusters(dump: Mapping[str, Any]) -> list[list[str]]:
    section = dump_section(dump, "clusters")
    items = [c.get("cluster", {}) for c in section.get("static_clusters", []) + section.get("dynamic_active_clusters", [])]
    return [["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE"]] + sorted(_cluster_row(c) for c in items)


def _destination(chain: Mapping[str, Any]) -> str:
    for item in chain.get("filters", []):
        config = item.get("typed_config", {})
        if "rds" in config:
            return f"Route: {config['rds'].get('route_config_name', '')}"
        if "route_config" in config:
            return f"Inline route: {config['route_config'].get('name', '')}"
        if "cluster" in config:
            return f"Cluster: {config['cluster']}"
        if "weighted_clusters" in config:
            return "Clusters: " + ", ".join(c.get("name", "") for c in config["weighted_clusters"].get("clusters", []))
    return "-"


def _match(chain: Mapping[str, Any]) -> str:
    match = chain.get("filter_chain_match", {})
    parts = []
    if "destination_port" in match:
        parts.append(f"port {match['destination_port']}")
    if match.get("prefix_ranges"):
        parts.append("to " + ",".join(f"{r.get('address_prefix')}/{r.get('prefix_len', 32)}"
                                      for r in match["prefix_ranges"]))
    if match.get("server_names"):
        parts.append("SNI " + ",".join(match["server_names"]))
    if match.get("transport_protocol"):
        parts.append(match["transport_protocol"])
    if match.get("application_protocols"):
        parts.append("ALPN " + ",".join(match["application_protocols"]))
    return "; ".join(parts) or "ALL"


def listeners(dump: Mapping[str, Any]) -> list[list[str]]:
    section = dump_section(dump, "listeners")
    items = [item.get("listener", {}) for item in section.get("static_listeners", [])]
    items += [item.get("active_state", {}).get("listener", {}) for item in section.get("dynamic_listeners", [])]
    rows = []
    for listener in items:
        address = listener.get("address", {}).get("socket_address", {})
        chains = listener.get("filter_chains", []) + ([listener["default_filter_chain"]]
                                                        if "default_filter_chain" in listener else [])
        for chain in chains:
            rows.append([listener.get("name", ""), address.get("address", ""), str(address.get("port_value", "")),
                         _match(chain), _destination(chain)])
    return [["LISTENER", "ADDRESS", "PORT", "MATCH", "DESTINATION"]] + rows


def _route_match(route: Mapping[str, Any]) -> str:
    match = route.get("match", {})
    for key, shown in (("path", "{}"), ("prefix", "{}*"), ("path_separated_prefix", "{}/*")):
        if key in match:
            text = shown.format(match[key])
            break
    else:
        text = f"~{match['safe_regex'].get('regex', '')}" if "safe_regex" in match else "*"
    headers = match.get("headers", [])
    return text + (f" +{len(headers)} header{'s' if len(headers) > 1 else ''}" if headers else "")


def _route_to(route: Mapping[str, Any]) -> str:
    action = route.get("route")
    if action is None:
        if "redirect" in route:
            return "redirect"
        if "direct_response" in route:
            return f"direct {route['direct_response'].get('status', '')}"
        return "-"
    if "cluster" in action:
        return action["cluster"]
    weighted = action.get("weighted_clusters", {}).get("clusters", [])
    return ", ".join(f"{c.get('name')} {c.get('weight')}" for c in weighted) or "-"


def routes(dump: Mapping[str, Any]) -> list[list[str]]:
    section = dump_section(dump, "routes")
    configs = [c.get("route_config", {}) for c in section.get("static_route_configs", [])
               + section.get("dynamic_route_configs", [])]
    rows = []
    for config in configs:
        for vhost in config.get("virtual_hosts", []):
            domains = vhost.get("domains", [])
            shown = ",".join(domains[:2]) + (f" +{len(domains) - 2} more" if len(domains) > 2 else "")
            for route in vhost.get("routes", []):
                rows.append([config.get("name", ""), vhost.get("name", ""), shown, _route_match(route), _route_to(route)])
    return [["NAME", "VHOST", "DOMAINS", "MATCH", "ROUTE TO"]] + rows


def endpoints(answer: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for cluster in answer.get("cluster_statuses", []):
        for host in cluster.get("host_statuses", []):
            address = host.get("address", {}).get("socket_address", {})
            health = host.get("health_status", {})
            flags = [flag for flag, key in (("FAILED HEALTH CHECK", "failed_active_health_check"),
                                            ("EJECTED", "failed_outlier_check")) if health.get(key)]
            status = "UNHEALTHY" if flags and "FAILED HEALTH CHECK" in flags else health.get("eds_health_status",
                                                                                            "HEALTHY")
            rows.append([f"{address.get('address', '')}:{address.get('port_value', '')}", status,
                         "EJECTED" if "EJECTED" in flags else "OK", cluster.get("name", "")])
    return [["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]] + sorted(rows, key=lambda r: (r[3], r[0]))


def secrets(dump: Mapping[str, Any], certs: Mapping[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """The secrets Envoy has from its files, and the certificates it holds (admin /certs)."""
    rows = []
    for secret in dump_section(dump, "secrets").get("dynamic_active_secrets", []):
        body = secret.get("secret", {})
        kind = "Cert Chain" if "tls_certificate" in body else "CA" if "validation_context" in body else "-"
        rows.append([secret.get("name", ""), kind, "ACTIVE", secret.get("version_info", "")])
    out = [["RESOURCE NAME", "TYPE", "STATUS", "VERSION"]] + rows
    details = [["CERTIFICATE", "SERIAL NUMBER", "SUBJECT ALT NAME", "NOT AFTER", "DAYS LEFT"]]
    for entry in certs.get("certificates", []):
        for kind, items in (("CA", entry.get("ca_cert", [])), ("Cert Chain", entry.get("cert_chain", []))):
            for cert in items:
                names = [n.get("uri") or n.get("dns") or "" for n in cert.get("subject_alt_names", [])]
                details.append([f"{kind} {cert.get('path', '')}", cert.get("serial_number", ""),
                                ",".join(names) or "-", cert.get("expiration_time", ""),
                                str(cert.get("days_until_expiration", ""))])
    return out, details


def render(kind: str, admin: Mapping[str, Any]) -> str:
    """The table of ``kind`` from the admin answers (``ADMIN_PATHS[kind]`` -> parsed JSON)."""
    if kind == "endpoints":
        return table(endpoints(admin.get(CLUSTERS) or {}))
    dump = admin.get(CONFIG_DUMP) or {}
    if kind == "secrets":
        named, held = secrets(dump, admin.get(CERTS) or {})
        return table(named) + "\n" + table(held)
    return table({"clusters": clusters, "listeners": listeners, "routes": routes}[kind](dump))


def resources(kind: str, admin: Mapping[str, Any]) -> Any:
    """What ``-o json`` prints: the kind's own part of the admin answers."""
    if kind == "endpoints":
        return admin.get(CLUSTERS)
    if kind == "secrets":
        return {"secrets": dump_section(admin.get(CONFIG_DUMP), "secrets"), "certs": admin.get(CERTS)}
    return dump_section(admin.get(CONFIG_DUMP), kind)
