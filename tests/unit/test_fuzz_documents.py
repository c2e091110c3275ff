"""Adversarial mesh documents through the public compile path: refused with a located MeshError, never a traceback
or a hang (issue E, "Mesh documents: strict, like the Kubernetes API server").

The table is generated deterministically from one valid document of each kind: every key duplicated, every field
given a value of the wrong type, alias bombs and recursive aliases, nesting too deep, control characters, bad
names, hosts, regexes and durations, huge strings. Each case names the document and the field the message must
name; a document whose kind or name is itself the mistake is named ``[Kind in ]document N (line L)``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from typing import Any, Iterator

import pytest
import yaml

from harness import DATA
from harness.mesh import bookinfo_hosts
from vmesh import documents, load
from vmesh.compile import render_all
from vmesh.errors import MeshError, MeshErrors

FILE = "mesh/fuzz.yaml"
CASE_SECONDS = 10  # far more than any case needs (each takes milliseconds): a case past it hangs
UNNAMED = "document 1 (line 1)"


def _doc(kind: str, name: str, spec: dict[str, Any], group: str = "networking.istio.io") -> dict[str, Any]:
    return {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


# One valid document of each kind vmesh compiles (checked by test_the_base_documents_are_valid).
BASES = [
    _doc("VirtualService", "reviews", {
        "hosts": ["reviews"],
        "http": [{"name": "main", "match": [{"uri": {"prefix": "/"}, "headers": {"x-user": {"regex": "a.*"}}}],
                  "timeout": "5s", "retries": {"attempts": 2, "perTryTimeout": "1s"},
                  "route": [{"destination": {"host": "reviews", "port": {"number": 9080}}}]}]}),
    _doc("DestinationRule", "reviews", {
        "host": "reviews",
        "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "1s"}},
                          "outlierDetection": {"interval": "10s", "baseEjectionTime": "30s"}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
    _doc("Gateway", "bookinfo-gateway", {
        "selector": {"istio": "ingressgateway"},
        "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                     "hosts": ["bookinfo.example.test"]}]}),
    _doc("ServiceEntry", "api", {
        "hosts": ["api.example.test"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
        "resolution": "DNS", "location": "MESH_EXTERNAL"}),
    _doc("Sidecar", "default", {
        "egress": [{"hosts": ["./reviews.default.svc.cluster.local"]}],
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
    _doc("PeerAuthentication", "strict", {
        "selector": {"matchLabels": {"version": "v1"}}, "mtls": {"mode": "STRICT"},
        "portLevelMtls": {"9080": {"mode": "PERMISSIVE"}}}, "security.istio.io"),
    _doc("AuthorizationPolicy", "deny-admin", {
        "action": "DENY",
        "rules": [{"from": [{"source": {"namespaces": ["prod"]}}],
                   "to": [{"operation": {"methods": ["POST"], "paths": ["/admin*"]}}],
                   "when": [{"key": "request.headers[x-user]", "values": ["bob"]}]}]}, "security.istio.io"),
    _doc("EnvoyFilter", "ratelimit", {
        "workloadSelector": {"labels": {"version": "v1"}},
        "configPatches": [{"applyTo": "HTTP_FILTER",
                           "match": {"context": "SIDECAR_INBOUND", "listener": {"filterChain": {"filter": {
                               "name": "envoy.filters.network.http_connection_manager"}}}},
                           "patch": {"operation": "INSERT_BEFORE",
                                     "value": {"name": "envoy.filters.http.local_ratelimit",
                                               "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                                                                "type_url": "x"}}}}]}),
]
BASE = {doc["kind"]: doc for doc in BASES}


# --- a small YAML writer: block style, scalars as JSON (valid YAML), and a key written twice on request ---------

def to_yaml(value: Any, dup: tuple = (), indent: int = 0) -> str:
    pad = " " * indent
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            lines.append(_entry(pad, json.dumps(key), item, dup[1:] if dup[:1] == (key,) else (), indent))
            if dup == (key,):  # the same key again, with another value: the last one used to win
                lines.append(_entry(pad, json.dumps(key), _other(item), (), indent))
        return "".join(lines)
    if isinstance(value, list) and value:
        return "".join(_entry(pad, "-", item, dup[1:] if dup[:1] == (i,) else (), indent, item=True)
                       for i, item in enumerate(value))
    return json.dumps(value) + "\n"


def _entry(pad: str, head: str, value: Any, dup: tuple, indent: int, item: bool = False) -> str:
    if isinstance(value, (dict, list)) and value:
        return f"{pad}{head}{'' if item else ':'}\n{to_yaml(value, dup, indent + 2)}"
    return f"{pad}{head}{' ' if item else ': '}{to_yaml(value)}"


def _other(value: Any) -> Any:
    return {"mode": "DISABLE"} if isinstance(value, dict) else ["other"] if isinstance(value, list) else \
        value + 1 if isinstance(value, int) and not isinstance(value, bool) else "DISABLE"


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into ``value`` (keys and list indexes), parents first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield prefix + (i,)
            yield from paths(item, prefix + (i,))


def field(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def replaced(doc: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


def _wrong(value: Any) -> Any:
    """A value of another type than ``value``'s, that no field of that type takes."""
    if isinstance(value, dict):
        return ["not", "a", "mapping"]
    if isinstance(value, list):
        return "not a list"
    if isinstance(value, bool) or isinstance(value, int):
        return {"not": "a number"}
    return {"not": "a string"}


def _ref(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _wrapped(kind: str, spec_yaml: str, name: str | None = None) -> str:
    base = BASE[kind]
    head = {k: v for k, v in base.items() if k != "spec"}
    if name is not None:
        head = replaced(head, ("metadata", "name"), name)
    return to_yaml(head) + "spec:\n" + spec_yaml


# Paths whose values vmesh passes on untouched (Envoy configuration, labels) or that take any type.
OPAQUE = (("spec", "configPatches", 0, "patch", "value"),)


def _typed_cases() -> Iterator[tuple]:
    for doc in BASES:
        kind = doc["kind"]
        for path in paths(doc):
            if any(path[:len(o)] == o and len(path) > len(o) for o in OPAQUE) or path[:1] == ("metadata",) \
                    and path not in (("metadata",), ("metadata", "name")):
                continue
            text = to_yaml(replaced(doc, path, _wrong(_get(doc, path))))
            where = UNNAMED if path == ("kind",) else f"{kind} in {UNNAMED}" if path[0] == "metadata" else _ref(doc)
            yield f"wrong type {kind} {field(path)}", text, where, field(path)
        for path in paths(doc):
            if isinstance(path[-1], int) or any(path[:len(o)] == o and len(path) > len(o) for o in OPAQUE):
                continue
            where = UNNAMED if path == ("kind",) else f"{kind} in {UNNAMED}" if path[0] == "metadata" else _ref(doc)
            yield f"duplicate key {kind} {field(path)}", to_yaml(doc, dup=path), where, field(path)


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _vs(http: dict[str, Any], hosts: Any = ("reviews",), name: str = "reviews", **spec: Any) -> str:
    doc = _doc("VirtualService", name, {"hosts": list(hosts), **spec, "http": [http]})
    return to_yaml(doc)


ROUTE = [{"destination": {"host": "reviews"}}]
BAD_NAMES = ["-reviews", "reviews-", "Reviews", "re_views", "re views", "re/views", "../../etc/passwd", "a..b",
             ".reviews", "reviews.", "x" * 254, "x" * 100_000, "reviews\u200b", "\u202eweiver", "ｒｅｖｉｅｗｓ",
             "révïews", "'quoted'", '"dq"', "re;views", "re\\views", "%2e%2e", "*", "a@b", "\u00a0reviews",
             "0x" + "f" * 300]
BAD_NAMESPACES = ["Default", "a.b", "n" * 64, "ns_1", "../etc", "ns\u200b", "-ns"]
BAD_HOSTS = ["re_views", "a..b", "-a.example.test", "a-.example.test", "a.example.123", "x" * 256,
             ".".join(["x" * 64, "test"]), "bad host.test", "a*b.example.test", "*.*.example.test",
             "a.example.test\u200b", "ａ.example.test", "a/b.example.test", "a:80.example.test"]
BAD_REGEXES = ["\\Z", "(a)\\1", "(?=a)", "(?<!a)b", "(?P<n>a)(?P=n)", "a{1001}", "a{2,1}", "[z-a]", "(", "a**+",
               "[a-z]{97}", "\\pL{20}", "(abcdefghij){12}", "x" * 1025, "(?i)\\C+\\8"]
BAD_DURATIONS = ["-1s", "1 s", "10", "1d", "1.5ms", "100us", "0s", "315576000001s", "9" * 70 + "s",
                 "99999999999999999999h", "1e3s", "PT1S", "\u0661s", "1s2"]


def _special_cases() -> Iterator[tuple]:
    vs = BASE["VirtualService"]
    ef = BASE["EnvoyFilter"]
    # alias bombs and recursive aliases, anywhere
    bomb = "".join(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n"
                   for i in range(9))
    value = "      value:\n        name: bomb\n" + bomb.replace("    l", "        l")
    yield ("alias bomb in an EnvoyFilter value", to_yaml({k: v for k, v in ef.items() if k != "spec"})
           + "spec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    patch:\n      operation: ADD\n" + value,
           "EnvoyFilter/ratelimit", "spec.configPatches[0].patch.value.l0")
    yield ("alias bomb as spec", _wrapped("VirtualService", "  x: &x [a, a]\n  y: [*x, *x]\n"),
           "VirtualService/reviews", "spec.x")
    yield ("recursive alias", to_yaml({k: v for k, v in vs.items() if k != "spec"}) + "spec: &s {hosts: [*s]}\n",
           "VirtualService/reviews", "spec")
    yield ("recursive alias in a list", _wrapped("EnvoyFilter", "  configPatches: &p [*p]\n"),
           "EnvoyFilter/ratelimit", "spec.configPatches")
    yield ("alias of a scalar", _wrapped("VirtualService", "  hosts: [&h reviews, *h]\n"),
           "VirtualService/reviews", "spec.hosts[0]")
    yield ("merge key", _wrapped("DestinationRule", "  <<: {host: reviews}\n  host: ratings\n"),
           "DestinationRule/reviews", "spec")
    yield ("python tag", _wrapped("Sidecar", "  egress: !!python/object/apply:os.system [id]\n"),
           "Sidecar/default", "spec.egress")
    yield ("set tag", _wrapped("Sidecar", "  egress: !!set {a, b}\n"), "Sidecar/default", "spec.egress")
    yield ("local tag", _wrapped("Gateway", "  selector: !secret {istio: ingressgateway}\n"),
           "Gateway/bookinfo-gateway", "spec.selector")
    yield ("mapping as a key", _wrapped("Gateway", "  ? {a: b}\n  : c\n"), "Gateway/bookinfo-gateway", "spec")
    # nesting
    for depth, style in ((101, "flow"), (600, "flow"), (5000, "flow"), (150, "block")):
        if style == "flow":
            spec = "  x: " + "[" * depth + "]" * depth + "\n"
        else:
            spec = "".join(" " * (2 + 2 * i) + f"k{i}:\n" for i in range(depth)) + " " * (2 + 2 * depth) + "v: 1\n"
        yield (f"nesting {depth} deep ({style})", _wrapped("EnvoyFilter", spec), UNNAMED,
               "spec.x[0][0][0][0][0][0][..." if style == "flow" else "spec.k0.k1.k2.k3.k4.k5.k6[...")
    yield ("nesting in an EnvoyFilter value", _wrapped("EnvoyFilter", "  configPatches:\n  - patch:\n      value: "
                                                      + "{a: " * 200 + "1" + "}" * 200 + "\n"),
           UNNAMED, "spec.configPatches[0].patch.value.a.a.a[...")
    # control characters: raw (the YAML reader refuses the whole file) and escaped in double quotes
    for char in ("\0", "\x01", "\x07", "\x1b", "\x7f", "\x9b", "\ufffe"):
        text = to_yaml(vs).replace('"reviews"', f'"rev{char}iews"', 1)
        yield f"raw U+{ord(char):04X} in a name", text, f"VirtualService in {UNNAMED}", "metadata.name"
    for escape in ("\\0", "\\x01", "\\e", "\\x7f", "\\x85x\\x9f", "\\ud800", "\\udfff\\ud800"):
        text = _vs({"route": ROUTE, "headers": {"request": {"set": {"x-a": "PLACEHOLDER"}}}}) \
            .replace('"PLACEHOLDER"', f'"a{escape}b"')
        yield (f"escaped {escape} in a header value", text, "VirtualService/reviews",
               "spec.http[0].headers.request.set.x-a")
    yield ("NUL in a comment", to_yaml(vs) + "# \0\n", UNNAMED, None)
    # names, namespaces
    for i, name in enumerate(BAD_NAMES):
        yield f"bad name {i} {name[:20]!r}", to_yaml(replaced(vs, ("metadata", "name"), name)), \
            f"VirtualService in {UNNAMED}", "metadata.name"
    for name in ("bookinfo.gateway", "a.b.c"):
        yield f"dotted Gateway name {name}", to_yaml(replaced(BASE["Gateway"], ("metadata", "name"), name)), \
            f"Gateway in {UNNAMED}", "metadata.name"
    for i, namespace in enumerate(BAD_NAMESPACES):
        yield f"bad namespace {i} {namespace[:20]!r}", to_yaml(replaced(vs, ("metadata", "namespace"), namespace)), \
            "VirtualService/reviews", "metadata.namespace"
    # hosts, wherever a document names one
    for i, host in enumerate(BAD_HOSTS):
        yield f"bad destination host {i}", _vs({"route": [{"destination": {"host": host}}]}), \
            "VirtualService/reviews", "spec.http[0].route[0].destination.host"
        if "/" in host:  # namespace/host: good ones in a Gateway
            continue
        yield f"bad gateway host {i}", to_yaml(replaced(BASE["Gateway"], ("spec", "servers", 0, "hosts", 0), host)), \
            "Gateway/bookinfo-gateway", "spec.servers[0].hosts[0]"
    for kind, path in (("VirtualService", ("spec", "hosts", 0)), ("DestinationRule", ("spec", "host")),
                       ("ServiceEntry", ("spec", "hosts", 0)), ("Sidecar", ("spec", "egress", 0, "hosts", 0))):
        for i, host in enumerate(("re_views", "x" * 256, "a..b", "h\u200b.example.test")):
            value = f"./{host}" if kind == "Sidecar" else host
            yield f"bad {kind} host {i}", to_yaml(replaced(BASE[kind], path, value)), _ref(BASE[kind]), field(path)
    yield ("short gateway host", to_yaml(replaced(BASE["Gateway"], ("spec", "servers", 0, "hosts", 0), "bookinfo")),
           "Gateway/bookinfo-gateway", "spec.servers[0].hosts[0]")
    yield ("bad SNI host", to_yaml(_doc("VirtualService", "reviews", {
        "hosts": ["reviews"],
        "tls": [{"match": [{"sniHosts": ["a..b"]}], "route": ROUTE}]})),
        "VirtualService/reviews", "spec.tls[0].match[0].sniHosts[0]")
    # regexes
    for i, regex in enumerate(BAD_REGEXES):
        yield f"bad uri regex {i}", _vs({"match": [{"uri": {"regex": regex}}], "route": ROUTE}), \
            "VirtualService/reviews", "spec.http[0].match[0].uri.regex"
    for i, regex in enumerate(BAD_REGEXES[:5]):
        yield f"bad header regex {i}", _vs({"match": [{"headers": {"x-a": {"regex": regex}}}], "route": ROUTE}), \
            "VirtualService/reviews", "spec.http[0].match[0].headers.x-a.regex"
    # durations, in each field that takes one
    for i, duration in enumerate(BAD_DURATIONS):
        yield f"bad timeout {i}", _vs({"timeout": duration, "route": ROUTE}), "VirtualService/reviews", \
            "spec.http[0].timeout"
    for path in (("spec", "trafficPolicy", "connectionPool", "tcp", "connectTimeout"),
                 ("spec", "trafficPolicy", "outlierDetection", "interval"),
                 ("spec", "trafficPolicy", "outlierDetection", "baseEjectionTime")):
        for duration in ("-5s", "0.1ms", "315576000001s"):
            yield f"bad {path[-1]} {duration}", to_yaml(replaced(BASE["DestinationRule"], path, duration)), \
                "DestinationRule/reviews", field(path)
    for duration in ("-5s", "100ns", "1e9h"):
        yield f"bad perTryTimeout {duration}", _vs({"retries": {"attempts": 1, "perTryTimeout": duration},
                                                    "route": ROUTE}), \
            "VirtualService/reviews", "spec.http[0].retries.perTryTimeout"
        yield f"bad fixedDelay {duration}", _vs({"fault": {"delay": {"fixedDelay": duration}}, "route": ROUTE}), \
            "VirtualService/reviews", "spec.http[0].fault.delay.fixedDelay"
    # numbers no JSON carries
    for number in ("9" * 5000, ".nan", "-.inf", "1e999"):
        route = [{"destination": {"host": "reviews", "port": {"number": 9080}}}]
        yield f"number {number[:10]}", _vs({"route": route}).replace('"number": 9080', f'"number": {number}'), \
            "VirtualService/reviews", "spec.http[0].route[0].destination.port.number"
    # huge strings
    yield ("huge subset name", _vs({"route": [{"destination": {"host": "reviews", "subset": "v" * 200_000}}]}),
           "VirtualService/reviews", "spec.http[0].route[0].destination.subset")
    yield ("huge regex", _vs({"match": [{"uri": {"regex": "(a|b)" * 100_000}}], "route": ROUTE}),
           "VirtualService/reviews", "spec.http[0].match[0].uri.regex")
    yield ("huge key", _wrapped("Sidecar", f"  ? {'k' * 100_000}\n  : 1\n"), "Sidecar/default", "spec.'kkkk")
    # malformed YAML: no field, a line and column instead
    yield "unclosed flow list", _wrapped("VirtualService", "  hosts: [reviews\n"), UNNAMED, None
    yield "tab indentation", _wrapped("VirtualService", "\thosts: [reviews]\n"), UNNAMED, None
    yield "undefined alias", _wrapped("VirtualService", "  hosts: *nowhere\n"), "VirtualService/reviews", "spec.hosts"


CASES = list(_typed_cases()) + list(_special_cases())


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail a case that runs longer than ``seconds`` (a hang) instead of waiting for it."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def compile_mesh(text: str) -> None:
    mesh = load.mesh(bookinfo_hosts(), [(FILE, text)])
    render_all(mesh)


def test_the_table_is_large_and_deterministic():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)
    assert [c[1] for c in CASES] == [c[1] for c in list(_typed_cases()) + list(_special_cases())]


@pytest.mark.parametrize("doc", BASES, ids=[d["kind"] for d in BASES])
def test_the_base_documents_are_valid(doc):
    with deadline(CASE_SECONDS):
        compile_mesh(to_yaml(doc))


@pytest.mark.parametrize("text,where,path", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_adversarial_document_is_refused_with_a_located_message(text, where, path):
    started = time.monotonic()
    with deadline(CASE_SECONDS):
        try:
            compile_mesh(text)
        except MeshError as exc:
            error = exc.errors[0] if isinstance(exc, MeshErrors) else exc
        else:
            pytest.fail("accepted")
    assert time.monotonic() - started < CASE_SECONDS
    message = str(error)
    assert message.startswith(f"{FILE}: "), message
    assert error.file == FILE, message
    assert error.doc == where, message
    if path is None:  # the YAML itself is malformed: the place is a line and column
        assert error.field is None and " line " in message and "column" in message, message
    else:
        assert error.field is not None and error.field.startswith(path), message
    assert len(message) < 2000, message[:300]  # huge values are cut
    assert message.isprintable(), message  # no control, zero-width or bidi character reaches a terminal


def _read(text: str, loader: type) -> Any:
    try:
        return list(documents._read_yaml(text, FILE, loader))
    except documents._Slower:
        return "refused by libyaml: read again by PyYAML"
    except MeshError as exc:
        return str(exc)


def test_libyaml_reads_what_pyyaml_reads():
    """Documents are read with libyaml (five times faster) where PyYAML has it: every valid document of the
    project's own and every adversarial case gives the same data, lines and message as PyYAML's own reader, or
    goes back to it."""
    assert yaml.__with_libyaml__ and documents._StrictLoader is documents._CLoader
    texts = [p.read_text() for p in sorted(DATA.rglob("*.yaml"))] + [c[1] for c in CASES]
    fallbacks = 0
    for text in texts:
        fast = _read(text, documents._CLoader)
        if fast == "refused by libyaml: read again by PyYAML":
            fallbacks += 1
            continue
        assert fast == _read(text, documents._PyLoader), text[:200]
    assert fallbacks < len(CASES) // 10  # the fast reader is the one in use
