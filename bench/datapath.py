"""Data path: what vmesh's sidecar pair adds to a call, against a minimal hand-written Envoy pair and no proxy.

Two "VMs" in network namespaces (tests/harness/netmesh.py), ``client`` and ``server``; nginx on the server
answers every request with 1 KB. wrk on the client sends a fixed rate (default 1000 requests per second over 10
keep-alive connections, paced by ``paced.lua``) as uid 1000, so its calls are captured like an application's:

    direct   wrk -> nginx                                                    (no proxy, no redirect)
    minimal  wrk -> REDIRECT -> Envoy :15001 (original_dst, HTTP router) -> mTLS -> Envoy :15006 -> nginx
    vmesh    the same path through the files vmesh compiles for the two hosts (no Istio documents: defaults)

The minimal pair is written here by hand (netbench.minimal_client/minimal_server): the router only, a static
cluster, mTLS with the same certificates. Both proxied pairs run behind the real redirect (vmesh-iptables) with
the same Envoy flags (``--concurrency 2``, the proxy role's default). wrk times each request from its write to
the end of the answer in microseconds (hey prints tenths of milliseconds, too coarse for a 5 % comparison).

Each configuration has namespaces of its own, all up at once, and four of them (``--instances``): an Envoy process
keeps for its life what a run cannot choose, most likely how the kernel spread its connections over its workers (in
one run, single instances' rounds gave vmesh/minimal p50 1.01 to 1.13: with one pair each, a run drew one of them).
Rounds run every configuration in turn, the order rotated and the next instance taken each round, after one
unmeasured warm-up each (which also checks that the calls went through both proxies, with a TLS handshake between
them); many short rounds let the machine's drift cancel better than a few long ones. Printed per configuration, the
medians over rounds: p50/p90/p99 latency, the proxies' CPU per 1000 requests (utime + stime from /proc/PID/stat) and
RSS (VmRSS); then vmesh/minimal and minimal/direct, each as the ratio of the medians and as the median
[interquartile range] of the ratios within each round, next to the targets of issue 13. ``--variant`` adds vmesh
configurations with one item of the compiled files removed, or added where vmesh leaves it out unless something
uses it (an edited copy; the compiler is untouched), priced against the full vmesh config the same way. The
proxies, nginx and wrk run at niceness -10 (``--nice``) so that other work on a shared machine disturbs them less;
every configuration is treated alike.

``--instructions`` counts instead of timing: each pair runs under valgrind's callgrind, one configuration at a time,
with one worker each and no request cut off at the end of a run, and the report gives the user-space instructions
a request adds to each proxy (the difference between 10 s at 10 rps and 10 s at 50 rps, over the difference in
requests, so that what Envoy does by the clock cancels). The count is the same for the same files however busy
the machine is (within 1 %), so it prices vmesh's items (``--variant``) where timing cannot; it leaves out the
kernel's share (the sockets, the same for every configuration) and memory stalls.

    sudo .venv/bin/python bench/datapath.py                  # 20 rounds x 3 configs x 3 s: about 4 minutes
    python bench/datapath.py --rounds 5                      # about a minute, noisier
    python bench/datapath.py --variant all                   # + the 17 vmesh variants: about 20 minutes
    python bench/datapath.py --variant bare --variant no-xfcc --json
    python bench/datapath.py --instructions --variant no-metrics   # about 2 minutes a configuration

Needs root, nginx and wrk. Traffic stays inside the namespaces made here; an interrupted run's leftovers are
removed by name at the next start. No figure is a pass or a fail: ratios measured side by side are what holds
on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import netbench
from netbench import APP_PORT, BenchMesh, NetMeshError
from vmesh.compile import routes
from vmesh.compile.envoy_types import CORS, HTTP_FAULT, typed

WRK = "/usr/bin/wrk"
PACED_LUA = Path(__file__).resolve().parent / "paced.lua"
MESH_PREFIX = "benchdp"  # namespaces vm-benchdp<config><instance>-*: never a test's
WARMUP_SECONDS = 2
MAX_INSTANCES = 9  # of each configuration (mesh names end in one digit)
TARGETS = {"p50": 1.05, "p90": 1.05, "p99": 1.10, "cpu": 1.05}  # vmesh/minimal, issue 13
RSS_TARGET_MB = 5.0  # vmesh may use this much more than minimal, per proxy
# --instructions: Envoy runs some 50 times slower under callgrind; low rates keep it far from saturation
IR_RATES = (10, 50)
IR_SECONDS = 10
IR_PAIRS = 3
IR_WARMUP_SECONDS = 5
IR_WARMUPS = 6  # at most, until one has no errors

HOSTS = {
    "client": {"vmesh_service_account": "client"},
    "server": {"vmesh_service": "web", "vmesh_labels": {"app": "web", "version": "v1"},
               "vmesh_ports": [{"port": APP_PORT, "protocol": "http", "name": "http"}]},
}

HCM = "envoy.filters.network.http_connection_manager"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"


# --- variants: the vmesh files with one item taken out ------------------------------------------------------------

def _hcms(files: dict[str, Any], outbound_only: bool = False) -> Iterator[dict[str, Any]]:
    """Every HTTP connection manager of the host's lds.json (``outbound_only``: those of outbound ports)."""
    for listener in files["lds.json"]["resources"]:
        chains = listener.get("filter_chains", []) + [listener.get("default_filter_chain") or {}]
        for chain in chains:
            for item in chain.get("filters", []):
                if item["name"] == HCM and (not outbound_only or item["typed_config"]["stat_prefix"].startswith(
                        "outbound_")):
                    yield item["typed_config"]


def no_retry(host: str, files: dict[str, Any]) -> None:
    for name, data in files.items():
        if name.startswith("rds_"):
            for vhost in data["resources"][0]["virtual_hosts"]:
                for route in vhost["routes"]:
                    route.get("route", {}).pop("retry_policy", None)


def any_host(host: str, files: dict[str, Any]) -> None:
    """The outbound port tables with one virtual host for any Host header (its first service's routes): no domain
    lookup."""
    for name, data in files.items():
        if name.startswith("rds_") and not name.startswith("rds_inbound"):
            table = data["resources"][0]
            if len(table["virtual_hosts"]) > 1:
                table["virtual_hosts"] = [{**table["virtual_hosts"][0], "domains": ["*"]}]


def no_xfcc(host: str, files: dict[str, Any]) -> None:
    for hcm in _hcms(files):
        hcm.pop("forward_client_cert_details", None)
        hcm.pop("set_current_client_cert_details", None)


def no_normalize_path(host: str, files: dict[str, Any]) -> None:
    for hcm in _hcms(files):
        hcm.pop("normalize_path", None)


def no_websocket(host: str, files: dict[str, Any]) -> None:
    for hcm in _hcms(files):
        hcm.pop("upgrade_configs", None)


def no_tls_inspector(host: str, files: dict[str, Any]) -> None:
    """Inbound: no TLS inspector; each port's mTLS chain matched by port alone (its plaintext chains go)."""
    for listener in files["lds.json"]["resources"]:
        if listener["name"] != "virtualInbound":
            continue
        listener["listener_filters"] = [f for f in listener["listener_filters"] if f["name"] != TLS_INSPECTOR]
        listener.pop("listener_filters_timeout", None)
        listener.pop("continue_on_listener_filters_timeout", None)
        secured = {c["filter_chain_match"]["destination_port"] for c in listener["filter_chains"]
                   if c["name"].endswith("~mtls")}
        chains = []
        for chain in listener["filter_chains"]:
            port = chain.get("filter_chain_match", {}).get("destination_port")
            if chain["name"].endswith("~mtls"):
                chain["filter_chain_match"] = {"destination_port": port}
            elif port in secured:
                continue
            chains.append(chain)
        listener["filter_chains"] = chains


def no_breaker_tracking(host: str, files: dict[str, Any]) -> None:
    for cluster in files["cds.json"]["resources"]:
        for threshold in cluster.get("circuit_breakers", {}).get("thresholds", []):
            threshold.pop("track_remaining", None)


def no_metrics(host: str, files: dict[str, Any]) -> None:
    for hcm in _hcms(files):
        logs = [log for log in hcm.get("access_log", []) if log["name"] != "envoy.access_loggers.stats"]
        if logs:
            hcm["access_log"] = logs
        else:
            hcm.pop("access_log", None)


def no_overload_manager(host: str, files: dict[str, Any]) -> None:
    files["envoy.json"].pop("overload_manager", None)


#: name -> (what goes, the compiler's function that emits it, the edit)
VARIANTS: dict[str, tuple[str, str, Callable[[str, dict[str, Any]], None]]] = {
    "no-retry": ("the default retry policy of every route (2 retries, previous_hosts predicate)",
                 "routes.default_route / routes.DEFAULT_RETRY", no_retry),
    "any-host": ("the Host header lookup of the outbound port tables (one virtual host for any Host)",
                 "routes.port_table", any_host),
    "no-xfcc": ("forward_client_cert_details APPEND_FORWARD + set_current_client_cert_details on inbound",
                "listeners._inbound_filters", no_xfcc),
    "no-normalize-path": ("normalize_path on the inbound HCM", "listeners._inbound_filters", no_normalize_path),
    "no-websocket": ("upgrade_configs websocket on every HCM", "listeners._hcm", no_websocket),
    "no-tls-inspector": ("the inbound TLS inspector and the ALPN/transport filter chain match",
                         "listeners._listener / listeners.inbound", no_tls_inspector),
    "no-breaker-tracking": ("circuit_breakers track_remaining on every cluster", "clusters._circuit_breakers",
                            no_breaker_tracking),
    "no-overload-manager": ("the bootstrap's global downstream connections monitor", "bootstrap.bootstrap",
                            no_overload_manager),
    "no-metrics": ("Istio's metrics: the stats access logger of every HCM (three histograms per request)",
                   "telemetry.http_stats", no_metrics),
}


ITEMS = list(VARIANTS)


def _bare(host: str, files: dict[str, Any]) -> None:
    for item in ITEMS:
        VARIANTS[item][2](host, files)


VARIANTS["bare"] = ("every item above at once", "", _bare)


# --- what the metrics cost: each keeps the stats logger but changes one thing (not part of "bare") -------------

def _stats_loggers(files: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for hcm in _hcms(files):
        for log in hcm.get("access_log", []):
            if log["name"] == "envoy.access_loggers.stats":
                yield log["typed_config"]


def metrics_one_histogram(host: str, files: dict[str, Any]) -> None:
    for config in _stats_loggers(files):
        config["histograms"] = config["histograms"][:1]


def metrics_fixed_tag(host: str, files: dict[str, Any]) -> None:
    for config in _stats_loggers(files):
        for histogram in config["histograms"]:
            histogram["stat"]["tags"] = [{"name": "k", "value_format": "fixed"}]


def metrics_no_tags(host: str, files: dict[str, Any]) -> None:
    for config in _stats_loggers(files):
        for histogram in config["histograms"]:
            histogram["stat"].pop("tags", None)


VARIANTS.update({
    "metrics-one-histogram": ("the metrics with the duration histogram only (as with REQUEST_SIZE and "
                              "RESPONSE_SIZE disabled)", "telemetry.http_stats", metrics_one_histogram),
    "metrics-fixed-tag": ("the three histograms with a constant tag instead of the per-request key",
                          "telemetry.KEY_SOURCE / KEY_DESTINATION", metrics_fixed_tag),
    "metrics-no-tags": ("the three histograms without tags", "telemetry.http_stats", metrics_no_tags),
})


# --- what Envoy's own statistics cost: vmesh records fewer than the minimal pair (not part of "bare") ----------

def no_stats_matcher(host: str, files: dict[str, Any]) -> None:
    files["envoy.json"].pop("stats_config", None)


def _routers(files: dict[str, Any], outbound_only: bool = False) -> Iterator[dict[str, Any]]:
    for hcm in _hcms(files, outbound_only):
        for item in hcm["http_filters"]:
            if item["name"] == "envoy.filters.http.router":
                yield item["typed_config"]


def dynamic_stats(host: str, files: dict[str, Any]) -> None:
    for router in _routers(files):
        router.pop("dynamic_stats", None)


def rollout_stats(host: str, files: dict[str, Any]) -> None:
    """The client's outbound routers record their dynamic stats, as where a rollout is declared."""
    for router in _routers(files, outbound_only=True):
        router.pop("dynamic_stats", None)


VARIANTS.update({
    "no-stats-matcher": ("no stats matcher: Envoy's unread histograms recorded again", "bootstrap.UNRECORDED_STATS",
                         no_stats_matcher),
    "rollout-stats": ("the outbound routers' dynamic stats (per-code counters and timings), as on the ports of a "
                      "service under a declared rollout", "listeners.HttpNeeds", rollout_stats),
    "dynamic-stats": ("every router's dynamic stats, the inbound ones too", "listeners.HttpNeeds", dynamic_stats),
})


# --- what a port pays where a VirtualService configures a fault or CORS (not part of "bare") -------------------

def fault_cors(host: str, files: dict[str, Any]) -> None:
    for hcm in _hcms(files, outbound_only=True):
        hcm["http_filters"][0:0] = [typed(routes.FAULT_FILTER, HTTP_FAULT), typed(routes.CORS_FILTER, CORS)]


VARIANTS["fault-cors"] = ("the fault and CORS HTTP filters on the outbound connection manager, as where routes "
                          "configure them (no fault or CORS policy set)", "listeners.HttpNeeds", fault_cors)


# --- running -------------------------------------------------------------------------------------------------------

def mesh_name(config: str, instance: int | None = 0) -> str:
    """benchdp<config><instance> (letters and digits only, at most 24: the harness's rule for mesh names);
    ``instance`` None: benchdp<config>, the name of runs made before there were instances."""
    name = MESH_PREFIX + re.sub(r"[^a-z0-9]", "", config)
    return name[:24] if instance is None else name[:23] + str(instance)


def make_mesh(config: str, tmp: Path, concurrency: int, callgrind: bool = False, instance: int = 0) -> BenchMesh:
    proxies = {"direct": "none", "minimal": "minimal"}.get(config, "vmesh")
    edit = VARIANTS[config][2] if config in VARIANTS else None
    return BenchMesh(mesh_name(config, instance), HOSTS, [], tmp / f"{config}.{instance}", proxies=proxies,
                     edit=edit, concurrency=concurrency, callgrind=callgrind)


def start(mesh: BenchMesh, nice: int = 0) -> None:
    """The mesh up, nginx on its server, wrk's pacing script on its client; the measured path at ``nice``."""
    mesh.start()
    nginx = netbench.start_nginx(mesh, "server")
    if nice:
        netbench.renice([*mesh.proxy_pids().values(), nginx.pid], nice)
    lua = mesh.file("client", "paced.lua")
    shutil.copyfile(PACED_LUA, lua)
    os.chmod(lua, 0o644)


def target_url(mesh: BenchMesh) -> str:
    if mesh.proxies == "none":
        return f"http://{mesh.address('server')}:{APP_PORT}/"
    return f"http://{mesh.resolve('client', 'web')}:{APP_PORT}/"  # the service VIP: captured


def measure(mesh: BenchMesh, seconds: float, rate: int, connections: int, nice: int = 0,
            quiet_end: float = 0) -> dict[str, Any]:
    """One wrk run at ``rate``; the proxies' CPU over it and their RSS after it. With ``quiet_end``, no request
    is sent in the run's last ``quiet_end`` seconds."""
    pids = mesh.proxy_pids()
    before = {host: netbench.cpu_seconds(pid) for host, pid in pids.items()}
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", "-s",
            str(mesh.file("client", "paced.lua")), target_url(mesh), "--", str(1000 / rate),
            *([str(int((seconds - quiet_end) * 1000))] if quiet_end else [])]
    out = netbench.run_as_app(mesh, "client", argv, timeout=seconds + 30, nice=nice)
    after = {host: netbench.cpu_seconds(pid) for host, pid in pids.items()}
    result = json.loads(out.strip().splitlines()[-1])
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    requests = max(result["requests"], 1)
    result["cpu_ms_per_1000"] = {host: (after[host] - before[host]) * 1e6 / requests for host in pids}
    result["rss_mb"] = {host: netbench.rss_mb(pid) for host, pid in pids.items()}
    return result


def check_path(mesh: BenchMesh, run: dict[str, Any]) -> None:
    """The warm-up went where it should: no errors; with proxies, through both of them, over TLS between them."""
    if run["errors"] or not run["requests"]:
        raise NetMeshError(f"{mesh.name}: warm-up had {run['errors']} errors in {run['requests']} requests: {run}")
    if mesh.proxies == "none":
        return
    outbound = mesh.stats("client", "listener.0.0.0.0_15001.downstream_cx_total")
    inbound = mesh.stats("server", "listener.0.0.0.0_15006.")
    if not outbound.get("listener.0.0.0.0_15001.downstream_cx_total") or \
            not inbound.get("listener.0.0.0.0_15006.ssl.handshake"):
        raise NetMeshError(f"{mesh.name}: the calls did not go through both proxies with mTLS: client {outbound}, "
                           f"server {inbound}")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = netbench.median
    hosts = sorted(runs[0]["cpu_ms_per_1000"])
    cpu = {h: med([r["cpu_ms_per_1000"][h] for r in runs]) for h in hosts}
    rss = {h: med([r["rss_mb"][h] for r in runs]) for h in hosts}
    return {
        "rounds": len(runs),
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "rps": med([r["rps"] for r in runs]),
        "p50_ms": med([r["p50_us"] for r in runs]) / 1000,
        "p90_ms": med([r["p90_us"] for r in runs]) / 1000,
        "p99_ms": med([r["p99_us"] for r in runs]) / 1000,
        "cpu_ms_per_1000": cpu,
        "cpu_pair_ms_per_1000": med([sum(r["cpu_ms_per_1000"].values()) for r in runs]) if hosts else 0.0,
        "rss_mb": rss,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _value(run: dict[str, Any], key: str) -> float:
    return sum(run["cpu_ms_per_1000"].values()) if key == "cpu" else run[key + "_us"]


def per_round(runs: dict[str, list[dict[str, Any]]], a: str, b: str, key: str) -> list[float]:
    """a/b within each round (key: p50, p90, p99 or cpu), sorted: the drift of the machine between rounds cancels."""
    return sorted(ratio(_value(x, key), _value(y, key)) for x, y in zip(runs[a], runs[b]))


def paired(runs: dict[str, list[dict[str, Any]]], a: str, b: str, key: str) -> float:
    """The median over rounds of a/b within each round."""
    return netbench.median(per_round(runs, a, b, key))


def spread(runs: dict[str, list[dict[str, Any]]], a: str, b: str, key: str) -> str:
    """The per-round ratios' median and interquartile range, as text: how far one round is from another."""
    values = per_round(runs, a, b, key)
    return (f"{netbench.median(values):.3f} [{netbench.percentile(values, 25):.3f}-"
            f"{netbench.percentile(values, 75):.3f}]")


def _instance_ratio(runs: dict[str, list[dict[str, Any]]], instance: int, instances: int, key: str) -> float:
    """vmesh/minimal, the median of the per-round ratios of the rounds that measured this instance."""
    mine = {c: runs[c][instance::instances] for c in ("vmesh", "minimal")}
    return paired(mine, "vmesh", "minimal", key)


def report(summaries: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace,
           wall: float) -> None:
    print(f"\nData path, {args.rate} rps over {args.connections} connections, 1 KB answers, "
          f"{args.rounds} rounds x {args.seconds} s per configuration, Envoy --concurrency {args.concurrency}, "
          f"nice {args.nice}, {os.cpu_count()} CPUs, {wall:.0f} s in all")
    print(f"{'config':22} {'rps':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'errors':>6}   "
          f"{'CPU ms/1000 req client+server=pair':>36}   {'RSS MB client/server':>20}")
    for config, s in summaries.items():
        cpu = s["cpu_ms_per_1000"]
        cpu_text = (f"{cpu['client']:.0f} + {cpu['server']:.0f} = {s['cpu_pair_ms_per_1000']:.0f}" if cpu else "-")
        rss_text = f"{s['rss_mb']['client']:.1f} / {s['rss_mb']['server']:.1f}" if s["rss_mb"] else "-"
        print(f"{config:22} {s['rps']:6.0f} {s['p50_ms']:7.3f} {s['p90_ms']:7.3f} {s['p99_ms']:7.3f} "
              f"{s['errors']:6d}   {cpu_text:>36}   {rss_text:>20}")
    direct, minimal, vmesh = (summaries.get(c) for c in ("direct", "minimal", "vmesh"))
    if minimal and vmesh:
        print("\nvmesh / minimal: ratio of the medians; median [interquartile range] of the per-round ratios; target")
        for p in ("p50", "p90", "p99"):
            print(f"  {p}  {ratio(vmesh[p + '_ms'], minimal[p + '_ms']):.3f}; {spread(runs, 'vmesh', 'minimal', p)}; "
                  f"<= {TARGETS[p]:.2f}")
        cpu_v, cpu_m = vmesh["cpu_ms_per_1000"], minimal["cpu_ms_per_1000"]
        pair = ratio(vmesh["cpu_pair_ms_per_1000"], minimal["cpu_pair_ms_per_1000"])
        print(f"  CPU per 1000 requests, pair  {pair:.3f}; {spread(runs, 'vmesh', 'minimal', 'cpu')}; "
              f"<= {TARGETS['cpu']:.2f} (client {ratio(cpu_v['client'], cpu_m['client']):.3f}, "
              f"server {ratio(cpu_v['server'], cpu_m['server']):.3f})")
        for host in ("client", "server"):
            delta = vmesh["rss_mb"][host] - minimal["rss_mb"][host]
            print(f"  RSS {host}  {delta:+.1f} MB (<= +{RSS_TARGET_MB:.0f} MB)")
        if args.instances > 1:
            print("  per instance (its rounds' median p50 / CPU ratio): " + ", ".join(
                f"{i + 1}: {_instance_ratio(runs, i, args.instances, 'p50'):.3f} / "
                f"{_instance_ratio(runs, i, args.instances, 'cpu'):.3f}" for i in range(args.instances)))
    if direct and minimal:
        print("\nminimal / direct:  " + ", ".join(f"{p} {ratio(minimal[p + '_ms'], direct[p + '_ms']):.2f}; "
                                                  f"{spread(runs, 'minimal', 'direct', p)}"
                                                  for p in ("p50", "p90", "p99")))
        print("added over direct (ms):")
        for config in [c for c in summaries if c != "direct"]:
            s = summaries[config]
            print(f"  {config:20} " + ", ".join(f"{p} +{s[p + '_ms'] - direct[p + '_ms']:.3f}"
                                                for p in ("p50", "p90", "p99")))
        if vmesh:
            added = {p: ratio(vmesh[p + "_ms"] - direct[p + "_ms"], minimal[p + "_ms"] - direct[p + "_ms"])
                     for p in ("p50", "p90", "p99")}
            print("  vmesh's added latency / minimal's: " + ", ".join(f"{p} {v:.2f}" for p, v in added.items()))
    variants = [c for c in summaries if c in VARIANTS]
    if vmesh and variants:
        print("\nvariants / full vmesh, median [interquartile range] of the per-round ratios (below 1: the item "
              "removed cost that much; above 1: the item added):")
        for config in variants:
            s = summaries[config]
            print(f"  {config:20} p50 {spread(runs, config, 'vmesh', 'p50')}  "
                  f"p90 {spread(runs, config, 'vmesh', 'p90')}  CPU pair {spread(runs, config, 'vmesh', 'cpu')}  RSS "
                  f"{s['rss_mb']['client'] - vmesh['rss_mb']['client']:+.1f}/"
                  f"{s['rss_mb']['server'] - vmesh['rss_mb']['server']:+.1f} MB  [{VARIANTS[config][1]}]")


# --- instructions: what a request costs each proxy, counted rather than timed -----------------------------------

def count_instructions(configs: list[str], tmp: Path, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Each configuration's proxies under callgrind, one mesh at a time. After a warm-up, ``IR_PAIRS`` pairs of
    windows of ``IR_SECONDS`` s each, one at ``IR_RATES[0]`` rps and one at ``IR_RATES[1]``, each counted from zero;
    per pair and proxy, the instructions a request adds: the difference of the two windows' counts over the
    difference of their requests (what a proxy does by the clock, as the same in both windows, cancels).

    Envoy runs one worker here (valgrind runs one thread at a time anyway). Every run ends with a quiet second, so
    that no request is cut off, which would close the pooled connection it was on: after the warm-up, no window
    pays for a new connection and its TLS handshake (as much as a few dozen requests); a pair in which one did
    anyway is measured again."""
    pairs: dict[str, list[dict[str, float]]] = {}
    for config in configs:
        mesh = make_mesh(config, tmp, 1, callgrind=True)
        try:
            start(mesh)
            for _ in range(IR_WARMUPS):  # the first calls (handshakes, code seen for the first time) may time out
                warm = measure(mesh, IR_WARMUP_SECONDS, IR_RATES[1], args.connections, quiet_end=1)
                if warm["requests"] and not warm["errors"]:
                    break
            check_path(mesh, warm)
            pairs[config] = []
            attempts = 0
            while len(pairs[config]) < IR_PAIRS:
                attempts += 1
                if attempts > 2 * IR_PAIRS:
                    raise NetMeshError(f"{config}: new mTLS connections in most windows; no count is clean")
                counted = []
                handshakes = _handshakes(mesh)
                for rate in IR_RATES:
                    mesh.zero_instructions()
                    run = measure(mesh, IR_SECONDS, rate, args.connections, quiet_end=1)
                    counted.append((run["requests"], mesh.instructions()))
                    if run["errors"]:
                        raise NetMeshError(f"{config}: {run['errors']} errors at {rate} rps: {run}")
                if _handshakes(mesh) != handshakes:
                    print(f"{config:22} a new mTLS connection during the pair: measured again", file=sys.stderr)
                    continue
                (low, at_low), (high, at_high) = counted
                if high <= low:
                    raise NetMeshError(f"{config}: {high} requests at {IR_RATES[1]} rps, {low} at {IR_RATES[0]}")
                per_request = {host: (at_high[host] - at_low[host]) / (high - low) for host in at_high}
                pairs[config].append(per_request)
                print(f"{config:22} pair {len(pairs[config])}: {low} and {high} requests, instructions per request "
                      + ", ".join(f"{h} {v:,.0f}" for h, v in per_request.items()), file=sys.stderr, flush=True)
        finally:
            mesh.stop()
    return pairs


def _handshakes(mesh: BenchMesh) -> int:
    """The mTLS connections the server's proxy has accepted so far."""
    return mesh.stats("server", "listener.0.0.0.0_15006.ssl.handshake").get("listener.0.0.0.0_15006.ssl.handshake", 0)


def report_instructions(pairs: dict[str, list[dict[str, float]]]) -> None:
    print(f"\nUser-space instructions a request adds, counted by callgrind ({IR_PAIRS} pairs of {IR_SECONDS} s windows "
          f"at {IR_RATES[0]} and {IR_RATES[1]} rps; the median pair; the spread is how far the pairs differ):")
    print(f"{'config':22} {'client':>10} {'server':>10} {'pair':>10}   spread")
    pair: dict[str, float] = {}
    for config, runs in pairs.items():
        totals = sorted(sum(p.values()) for p in runs)
        pair[config] = netbench.median(totals)
        print(f"{config:22} {netbench.median([p['client'] for p in runs]):10,.0f} "
              f"{netbench.median([p['server'] for p in runs]):10,.0f} {pair[config]:10,.0f}   "
              f"{(totals[-1] - totals[0]) / pair[config] * 100:.1f} %")
    if "minimal" in pair and "vmesh" in pair:
        side = {h: ratio(netbench.median([p[h] for p in pairs["vmesh"]]),
                         netbench.median([p[h] for p in pairs["minimal"]])) for h in ("client", "server")}
        print(f"\nvmesh / minimal, instructions per request: pair {ratio(pair['vmesh'], pair['minimal']):.3f} "
              f"(client {side['client']:.3f}, server {side['server']:.3f}); CPU target <= {TARGETS['cpu']:.2f}")
    variants = [c for c in pair if c in VARIANTS]
    if "vmesh" in pair and variants:
        print("\nvariants / full vmesh, instructions per request of the pair (below 1: the item removed cost that "
              "much; above 1: the item added):")
        for config in variants:
            print(f"  {config:20} {ratio(pair[config], pair['vmesh']):.3f}  [{VARIANTS[config][1]}]")


def run_rounds(configs: list[str], tmp: Path, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every configuration's instances up at once, each warmed up and its path checked; then ``args.rounds`` rounds,
    each measuring every configuration in turn (the order rotated) on the round's instance. {config: its runs}."""
    meshes: dict[str, list[BenchMesh]] = {c: [] for c in configs}
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    try:
        for config in configs:
            for instance in range(args.instances):
                mesh = make_mesh(config, tmp, args.concurrency, instance=instance)
                meshes[config].append(mesh)
                start(mesh, args.nice)
        for instances in meshes.values():
            for mesh in instances:
                check_path(mesh, measure(mesh, WARMUP_SECONDS, args.rate, args.connections, args.nice))
        for round_ in range(args.rounds):
            order = configs[round_ % len(configs):] + configs[:round_ % len(configs)]
            instance = round_ % args.instances
            for config in order:
                run = measure(meshes[config][instance], args.seconds, args.rate, args.connections, args.nice)
                runs[config].append(run)
                if args.json:
                    print(json.dumps({"round": round_ + 1, "instance": instance, "config": config, **run},
                                     sort_keys=True), flush=True)
                else:
                    cpu = "+".join(f"{v:.0f}" for v in run["cpu_ms_per_1000"].values()) or "-"
                    print(f"round {round_ + 1} {config:20} {run['rps']:5.0f} rps  p50 {run['p50_us'] / 1000:.3f}  "
                          f"p90 {run['p90_us'] / 1000:.3f}  p99 {run['p99_us'] / 1000:.3f} ms  errors {run['errors']}"
                          f"  CPU ms/1000 req {cpu}", file=sys.stderr, flush=True)
    finally:
        for mesh in reversed([m for instances in meshes.values() for m in instances]):
            mesh.stop()
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds over all configurations (default 20)")
    parser.add_argument("--seconds", type=int, default=3, help="seconds per measurement (default 3)")
    parser.add_argument("--rate", type=int, default=1000, help="requests per second (default 1000)")
    parser.add_argument("--connections", type=int, default=10, help="keep-alive connections (default 10)")
    parser.add_argument("--instances", type=int, default=4,
                        help="pairs of proxies started per configuration, measured in turn, one a round (default 4): "
                             "how one Envoy process happens to spread its connections over its workers no longer "
                             "weighs on a whole run")
    parser.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads (default 2, the role's)")
    parser.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS) + ["all"],
                        help="also run vmesh with this item removed (repeatable; all: every variant)")
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness of the processes on the measured path (the proxies, nginx, wrk; the same "
                             "for every configuration), so that other work on the machine disturbs them less "
                             "(default -10; 0: as any process)")
    parser.add_argument("--instructions", action="store_true",
                        help="count the proxies' user-space instructions per request under valgrind's callgrind "
                             "instead of timing the calls (minimal, vmesh and the variants; about 2 minutes a "
                             "configuration)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per measurement and summary")
    parser.add_argument("--keep", action="store_true", help="keep the logs and Envoy files (path printed)")
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 50 and 1 <= args.instances <= MAX_INSTANCES and 1 <= args.seconds <= 120
            and 1 <= args.rate <= 5000 and 1 <= args.connections <= 100 and 1 <= args.concurrency <= 8
            and -20 <= args.nice <= 19):
        parser.error(f"rounds 1-50, instances 1-{MAX_INSTANCES}, seconds 1-120, rate 1-5000, connections 1-100, "
                     "concurrency 1-8, nice -20-19")
    if not netbench.can_run() or not shutil.which(WRK) or not shutil.which(netbench.NGINX):
        parser.error("needs root, ip, setpriv, iptables, nginx and wrk")
    variants = sorted(VARIANTS) if "all" in args.variant else list(dict.fromkeys(args.variant))
    configs = ["direct", "minimal", "vmesh"] + variants
    every_name = [mesh_name(c, i) for c in ["direct", "minimal", "vmesh", *VARIANTS]
                  for i in [*range(MAX_INSTANCES), None]]
    if args.instructions and not (shutil.which(netbench.VALGRIND) and shutil.which(netbench.CALLGRIND_CONTROL)):
        parser.error("--instructions needs valgrind")
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="vmesh-bench-datapath."))
    netbench.remove_leftovers(every_name, tmp / "leftovers")
    try:
        if args.instructions:
            pairs = count_instructions(["minimal", "vmesh"] + variants, tmp, args)
        else:
            runs = run_rounds(configs, tmp, args)
    finally:
        if args.keep:
            print(f"logs and Envoy files: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.instructions:
        if args.json:
            print(json.dumps({"instructions_per_request": pairs}, sort_keys=True))
        else:
            report_instructions(pairs)
        return 0
    summaries = {config: summarize(runs[config]) for config in configs}
    if args.json:
        for config, summary in summaries.items():
            print(json.dumps({"summary": config, **summary}, sort_keys=True))
        if "minimal" in runs and "vmesh" in runs:
            print(json.dumps({"ratios": "vmesh/minimal, median of per-round ratios",
                              **{key: paired(runs, "vmesh", "minimal", key) for key in ("p50", "p90", "p99", "cpu")}},
                             sort_keys=True))
    else:
        report(summaries, runs, args, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
