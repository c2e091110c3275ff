"""The static equivalent of a compiled Envoy config directory, for ``envoy --mode validate``.

Envoy's validate mode reads the bootstrap only: the listeners, clusters, endpoints, route tables and secrets it
names as files (file-based xDS) are not loaded, so a mistake in them would pass. ``bundle`` folds those files
into the bootstrap's static resources (route tables inline in their connection managers, endpoints in their
clusters, secrets as static secrets), the same config with nothing left to fetch. It is built only when a config is validated: on the host by the
envoy_config module from the files it is about to install, and on the controller by ``vmesh validate``.

Standard library only: it runs on the hosts and inside the compiler alike.
"""

from __future__ import annotations

import copy
import json
import os

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_LOAD_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
FILE_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


class BundleError(ValueError):
    """The files are not a config directory the compiler writes (a file missing, or not xDS JSON)."""


def _read(files, name):
    if name not in files:
        raise BundleError("%s is named by the config but not among its files" % name)
    try:
        data = json.loads(files[name])
    except ValueError as exc:
        raise BundleError("%s is not JSON: %s" % (name, exc)) from None
    if not isinstance(data, dict):
        raise BundleError("%s: expected a JSON object" % name)
    return data


def _resources(files, name):
    resources = _read(files, name).get("resources")
    if not isinstance(resources, list) or not all(isinstance(r, dict) for r in resources):
        raise BundleError("%s: expected {\"resources\": [objects]}" % name)
    return resources


def _static_refs(node, folder):
    """SDS references read from files become references to static secrets of the same names."""
    if isinstance(node, dict):
        for key in ("tls_certificate_sds_secret_configs", "validation_context_sds_secret_config"):
            refs = node.get(key)
            for ref in refs if isinstance(refs, list) else [refs]:
                if isinstance(ref, dict) and "sds_config" in ref:
                    _file_of(ref.pop("sds_config"), "secret %s" % ref.get("name"), folder)
        for value in node.values():
            _static_refs(value, folder)
    elif isinstance(node, list):
        for value in node:
            _static_refs(value, folder)


def _quiet_logs(node):
    """Access log files become /dev/null: validation (as root on the host) must not create the files the proxy
    writes, nor follow a link its user put where they go."""
    if isinstance(node, dict):
        if node.get("@type") == FILE_LOGGER:
            node["path"] = os.devnull
        for value in node.values():
            _quiet_logs(value)
    elif isinstance(node, list):
        for value in node:
            _quiet_logs(value)


def _file_of(source, what, folder):
    path = (source or {}).get("path_config_source", {}).get("path")
    if not isinstance(path, str):
        raise BundleError("%s is not read from a file" % what)
    if folder is not None and os.path.dirname(path) != folder:
        raise BundleError("%s is read from %s, not from %s where the config goes (compiled for another "
                          "vmesh_config_dir?)" % (what, path, folder))
    return os.path.basename(path)


def bundle(files, bootstrap="envoy.json", folder=None):
    """The static bootstrap (JSON text) equivalent to ``files`` (file name -> content) of one config directory;
    given ``folder``, the directory they are installed in, every file the config reads must be read from there."""
    boot = _read(files, bootstrap)
    dynamic = boot.pop("dynamic_resources", None) or {}
    listeners = _resources(files, _file_of(dynamic.get("lds_config"), "the bootstrap's lds_config", folder))
    clusters = _resources(files, _file_of(dynamic.get("cds_config"), "the bootstrap's cds_config", folder))
    routes, secrets = {}, []
    for name in sorted(files):
        if name == bootstrap or not name.endswith(".json") or not name.startswith(("rds_", "sds_")):
            continue  # endpoints are read below, by the clusters that name them; peers.json is no xDS
        resources = _resources(files, name)
        if len(resources) == 1 and resources[0].get("@type") == ROUTE_CONFIGURATION:
            routes[resources[0].get("name")] = resources[0]
        elif len(resources) == 1 and resources[0].get("@type") == SECRET:
            secret = copy.deepcopy(resources[0])
            del secret["@type"]
            for part in ("tls_certificate", "validation_context"):
                if isinstance(secret.get(part), dict):
                    secret[part].pop("watched_directory", None)
            secrets.append(secret)
    static = boot.setdefault("static_resources", {})
    if secrets:
        static["secrets"] = secrets
    listeners = copy.deepcopy(listeners)
    _static_refs(listeners, folder)
    _quiet_logs(listeners)
    for listener in listeners:
        chains = listener.get("filter_chains", []) + ([listener["default_filter_chain"]]
                                                       if "default_filter_chain" in listener else [])
        for chain in chains:
            for flt in chain.get("filters", []):
                config = flt.get("typed_config", {})
                if config.get("@type") == HCM and "rds" in config:
                    rds = config.pop("rds")
                    name = rds.get("route_config_name")
                    _file_of(rds.get("config_source"), "route table %s" % name, folder)
                    if name not in routes:
                        raise BundleError("listener %s uses route table %s, which no file holds"
                                          % (listener.get("name"), name))
                    config["route_config"] = {k: v for k, v in routes[name].items() if k != "@type"}
    clusters = copy.deepcopy(clusters)
    _static_refs(clusters, folder)
    for cluster in clusters:
        eds = cluster.pop("eds_cluster_config", None)
        if eds is None:
            continue
        name = _file_of(eds.get("eds_config"), "cluster %s's endpoints" % cluster.get("name"), folder)
        resources = _resources(files, name)
        if len(resources) != 1 or resources[0].get("@type") != CLUSTER_LOAD_ASSIGNMENT:
            raise BundleError("%s: expected one ClusterLoadAssignment" % name)
        cluster["type"] = "STATIC"
        cluster["load_assignment"] = {k: v for k, v in resources[0].items() if k != "@type"}
    static["listeners"] = static.get("listeners", []) + [{k: v for k, v in l.items() if k != "@type"}
                                                         for l in listeners]
    static["clusters"] = static.get("clusters", []) + [{k: v for k, v in c.items() if k != "@type"}
                                                       for c in clusters]
    return json.dumps(boot, sort_keys=True, separators=(",", ":"))
