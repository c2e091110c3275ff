"""The ``vmesh`` command: validate and render a mesh from an inventory, and run local test VMs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from vmesh import artifact, envoy, inputs, load, rollout
from vmesh.istio.model import Mesh
from vmesh.compile import render_all, render_host
from vmesh.errors import MeshError


def _mesh(args: argparse.Namespace, hostvars: dict[str, dict[str, Any]] | None = None) -> Mesh:
    hostvars = inputs.mesh_hostvars(args.inventory) if hostvars is None else hostvars
    paths = args.mesh or [inputs.default_mesh_dir(args.inventory)]
    for path in args.mesh or []:
        if not os.path.exists(path):
            raise MeshError("no such file or directory", file=path)
    sources = [source for path in paths for source in inputs.mesh_sources(path)]
    rollout_dir = args.rollouts or inputs.default_rollout_dir(args.inventory)
    states = inputs.rollout_states(rollout_dir)
    # files named one by one apply in order, like kubectl apply -f a -f b: a later object replaces an earlier one
    return load.mesh(hostvars, sources, later_replaces=len(paths) > 1, rollout_states=states,
                     drained=inputs.drained_hosts(rollout_dir))


def cmd_validate(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    for warning in mesh.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    configs = render_all(mesh)
    if args.skip_envoy:
        results = {host: (True, "not checked by envoy") for host in configs}
    else:
        # certificate files named in the config exist on the VMs, maybe not here: stand-ins take their place
        results = envoy.validate_many({host: c.validation for host, c in configs.items()}, stub_missing=True)
    failed = 0
    for host, (ok, message) in results.items():
        if ok:
            print(f"ok: {host}")
        else:
            failed += 1
            print(f"error: {host}: envoy --mode validate refused the config:\n{message}", file=sys.stderr)
    services = len(mesh.registry.services)
    routed = len({id(vs) for vs in list(mesh.virtual_services.values()) + mesh.gateway_services})
    print(f"{len(configs)} hosts, {services} services, {routed} VirtualServices, "
          f"{len(mesh.destination_rules)} DestinationRules, {len(mesh.gateways)} Gateways, "
          f"{len(mesh.service_entries)} ServiceEntries, {len(mesh.peer_authentications)} PeerAuthentications, "
          f"{len(mesh.authorization_policies)} AuthorizationPolicies: {'valid' if not failed else f'{failed} invalid'}")
    return 1 if failed else 0


def cmd_render(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    config = render_host(mesh, args.host)
    os.makedirs(args.out, exist_ok=True)
    for name, content in {**config.files, "validate.json": config.validation}.items():
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as fh:
            fh.write(content)
    with open(os.path.join(args.out, "hosts"), "w", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in config.hosts_entries))
    print(f"wrote {len(config.files) + 2} files for {args.host} to {args.out}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    for warning in mesh.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    manifest, changed = artifact.write(args.out, render_all(mesh), mesh.warnings)
    state = "wrote" if changed else "unchanged:"
    print(f"{state} {len(manifest.hosts)} hosts to {args.out} (build {manifest.build[:12]})")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    try:
        changes = artifact.diff(args.before, args.after)
    except MeshError as exc:  # as diff(1): 2 for trouble, 1 for differences
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for change in changes:
        print(f"{change.host}: {change.status}: {' '.join(change.files)}")
    hosts = len(set(artifact.read(args.before).hosts) | set(artifact.read(args.after).hosts))
    files = sum(len(c.files) for c in changes)
    print(f"{len(changes)} of {hosts} hosts differ, {files} files" if changes else f"no difference ({hosts} hosts)")
    return 1 if changes else 0


def cmd_rollout_report(args: argparse.Namespace) -> int:
    for i, path in enumerate(args.state):
        print(("\n" if i else "") + rollout.summary(inputs.rollout_state(path)))
    return 0


def cmd_rollout_plot(args: argparse.Namespace) -> int:
    from vmesh import plot

    plot.rollout_png(inputs.rollout_state(args.state), args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from vmesh import graph

    if args.serve is None and args.out is None:
        raise MeshError("give --out FILE (.html, .svg or .png) or --serve PORT")
    if args.out is not None:
        mesh_graph = graph.fetch(args.prometheus, args.window, args.namespace)
        graph.write(mesh_graph, Path(args.out), args.prometheus)
        print(f"wrote {args.out}: {len(mesh_graph.nodes)} workloads, {len(mesh_graph.edges)} edges over the last "
              f"{args.window}")
    if args.serve is not None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Page(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    body = graph.page(graph.fetch(args.prometheus, args.window, args.namespace), args.prometheus,
                                      refresh=args.refresh).encode()
                    self.send_response(200 if self.path in ("/", "/index.html") else 404)
                except MeshError as exc:
                    body = f"<p>{exc}</p>".encode()
                    self.send_response(502)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        server = ThreadingHTTPServer((args.bind, args.serve), Page)
        print(f"serving the graph on http://{args.bind}:{server.server_port}/ (every {args.refresh} s); Ctrl-C stops")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_traces(args: argparse.Namespace) -> int:
    from vmesh import traces

    if (args.service is None) == (args.id is None):
        raise MeshError("give --service NAME (its recent traces) or --id TRACE (one trace)")
    if args.id is not None:
        trace = traces.one(args.jaeger, args.id)
    else:
        found = traces.recent(args.jaeger, args.service, args.limit, args.lookback)
        print(traces.summary(found), end="")
        if not found or args.out is None:
            return 0
        trace = found[0]  # the page shows the newest
    if args.out is not None:
        Path(args.out).write_text(traces.page(trace, args.jaeger), encoding="utf-8")
        print(f"wrote {args.out}: trace {trace.id}, {len(trace.spans)} spans")
    else:
        print(traces.text(trace), end="")
    return 0


def _targets(args: argparse.Namespace, hosts: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The mesh and, per host, what reaching it takes: (mesh, {host: (ssh target, its inventory variables)})."""
    from vmesh import ssh

    hostvars = inputs.mesh_hostvars(args.inventory)
    mesh = _mesh(args, hostvars)
    for host in hosts or []:
        if host not in hostvars:
            raise MeshError(f"host {host!r} is not in the mesh (group vmesh)", file=args.inventory)
    return mesh, {h: (ssh.target(h, v), v) for h, v in hostvars.items() if not hosts or h in hosts}


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import time

    from vmesh import ssh, status

    script = ssh.program("hostinfo")
    rounds = 0
    while True:
        mesh, targets = _targets(args, args.host)
        configs = {h: c for h, c in render_all(mesh).items() if h in targets}
        registry = mesh.registry

        def report(where: Any) -> Any:
            workload = registry.workloads[where.host]
            return ssh.run(where, script, status.request(workload.config_dir, workload.certs_dir,
                                                         status.redirect_command(targets[where.host][1])))
        reports = ssh.run_all((t for t, _ in targets.values()), report)
        drained = {h for h, w in registry.workloads.items() if w.drained}
        lines = status.status_lines(configs, reports, drained)
        if args.watch:
            print("\033[H\033[2J", end="")  # clear the terminal, as watch(1) does
        print(json.dumps(lines, indent=2) if args.json else status.text(lines), end="\n" if args.json else "")
        rounds += 1
        if not args.watch or (args.count and rounds >= args.count):
            return 0 if all(status.healthy(line) for line in lines) else 1
        time.sleep(args.watch)


def cmd_proxy_config(args: argparse.Namespace) -> int:
    import json

    from vmesh import proxyconfig, ssh

    mesh, targets = _targets(args, [args.host])
    where, hostvars = targets[args.host]
    workload = mesh.registry.workloads[args.host]
    request = {"config_dir": workload.config_dir, "certs_dir": workload.certs_dir, "admin": "127.0.0.1:15000",
               "redirect": None, "admin_paths": list(proxyconfig.ADMIN_PATHS[args.kind])}
    report = ssh.run(where, ssh.program("hostinfo"), request)
    admin = report.get("admin") or {}
    if any(admin.get(path) is None for path in proxyconfig.ADMIN_PATHS[args.kind]):
        raise MeshError("Envoy's admin does not answer (is vmesh-proxy running?)", doc=f"host {args.host}")
    if args.output == "json":
        print(json.dumps(proxyconfig.resources(args.kind, admin), indent=2))
    else:
        print(proxyconfig.render(args.kind, admin), end="")
    return 0


def cmd_tools_build(args: argparse.Namespace) -> int:
    from vmesh import tools

    tools.build_all(args.name)
    return 0


def cmd_tools_path(args: argparse.Namespace) -> int:
    from vmesh import tools

    print(tools.built(args.name))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vmesh", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    def mesh_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--inventory", "-i", required=True, help="Ansible inventory (file or directory)")
        p.add_argument("--mesh", action="append", metavar="PATH",
                       help="a file or directory of Istio YAML (default: <inventory>/mesh); give it several times "
                            "to apply files in order, a later object replacing an earlier one of the same "
                            "kind/namespace/name")
        p.add_argument("--rollouts", metavar="DIR",
                       help="the canary rollouts' saved state (default: <inventory>/rollouts): a service under "
                            "rollout is routed by the stage it is at; the hosts in its drained/ are in no "
                            "client's endpoints")

    p = sub.add_parser("validate", help="check inventory + mesh documents and every host's Envoy config")
    mesh_args(p)
    p.add_argument("--skip-envoy", action="store_true", help="do not run envoy --mode validate")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("render", help="write one host's Envoy files to a directory")
    mesh_args(p)
    p.add_argument("--host", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("compile", help="write every host's files to a build directory (content-addressed, with a "
                                       "manifest) that push.yml and site.yml take as vmesh_build")
    mesh_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="the build directory (replaced whole)")
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser("diff", help="which hosts and files differ between two build directories (exit 1 if any, "
                                    "2 on trouble)")
    p.add_argument("before", metavar="DIR1")
    p.add_argument("after", metavar="DIR2")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("graph", help="draw the mesh from Prometheus, as Kiali does: workloads by service and "
                                     "version, request rate, errors, p99, mTLS, each version's share")
    p.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus, e.g. http://10.213.0.20:9090")
    p.add_argument("--window", default="5m", help="the time window, a Prometheus duration (default 5m)")
    p.add_argument("--namespace", help="only what reached workloads of this namespace")
    p.add_argument("--out", metavar="FILE", help="write the graph: FILE.html (a page), .svg, or .png (needs Chromium)")
    p.add_argument("--serve", type=int, metavar="PORT", help="serve the page live on PORT (0: any free port)")
    p.add_argument("--bind", default="127.0.0.1", help="the address --serve listens on (default 127.0.0.1)")
    p.add_argument("--refresh", type=int, default=10, metavar="SECONDS", help="the served page reloads this often")
    p.set_defaults(func=cmd_graph)
    p = sub.add_parser("traces", help="traces from Jaeger: a service's recent ones, or one as a tree of spans "
                                      "(text, or an HTML waterfall)")
    p.add_argument("--jaeger", required=True, metavar="URL", help="Jaeger's query API, e.g. http://10.213.0.13:16686")
    p.add_argument("--service", metavar="NAME", help="list this service's recent traces (Istio's app.namespace, "
                                                     "e.g. productpage.default)")
    p.add_argument("--id", metavar="TRACE", help="show this trace: its spans, each under its parent")
    p.add_argument("--limit", type=int, default=20, help="with --service: at most this many (default 20)")
    p.add_argument("--lookback", default="1h", help="with --service: how far back, e.g. 30m, 1h, 2d (default 1h)")
    p.add_argument("--out", metavar="FILE", help="write the trace (with --service: the newest) as an HTML page")
    p.set_defaults(func=cmd_traces)
    p = sub.add_parser("status", help="whether each host's running Envoy has what vmesh renders now (SYNCED, STALE, "
                                      "NOT RUNNING), its version, uptime, certificate, redirect and last push, "
                                      "over SSH as the inventory reaches it; exit 1 on any drift")
    mesh_args(p)
    p.add_argument("--host", action="append", metavar="HOST", help="only this host (give it several times)")
    p.add_argument("--json", action="store_true", help="a JSON list, a line per host")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="again every SECONDS, until Ctrl-C")
    p.add_argument("--count", type=int, help="with --watch: stop after this many rounds")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("proxy-config", help="one host's running Envoy: its clusters, listeners, routes, endpoints "
                                            "or secrets, as tables (-o json: the resources)")
    p.add_argument("host", metavar="HOST")
    p.add_argument("kind", choices=("clusters", "listeners", "routes", "endpoints", "secrets"))
    mesh_args(p)
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_proxy_config)
    sub.add_parser("lab", help="local test VMs (podman): vmesh lab --help", add_help=False)
    rollouts = sub.add_parser("rollout", help="canary rollouts: the report and the plot of a saved state")
    verbs = rollouts.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("report", help="print the table of the stages of each saved state")
    p.add_argument("state", nargs="+", help="a rollout's state, <inventory>/rollouts/<service>.json")
    p.set_defaults(func=cmd_rollout_report)
    p = verbs.add_parser("plot", help="write a PNG of success rate and p99 per stage, canary against stable")
    p.add_argument("state", help="a rollout's state, <inventory>/rollouts/<service>.json")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.set_defaults(func=cmd_rollout_plot)
    tools = sub.add_parser("tools", help="programs vmesh deploys that come as Go modules (Jaeger, ratelimit): build, "
                                                 "locate")
    verbs = tools.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("build", help="build each named tool (default: all) at its pinned version, unless built; "
                                       "the cache is $VMESH_TOOLS_DIR, else ~/.cache/vmesh/tools")
    p.add_argument("name", nargs="*")
    p.set_defaults(func=cmd_tools_build)
    p = verbs.add_parser("path", help="print where a built tool is (exit 1 when it is not built)")
    p.add_argument("name")
    p.set_defaults(func=cmd_tools_path)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lab"]:
        from vmesh import lab

        return lab.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
