"""AuthorizationPolicy: which requests a workload's inbound ports accept (ALLOW, DENY, AUDIT).

Scope, as Istio: a policy applies to the workloads of its own namespace, or of every namespace when it lives in the
root namespace (istio-system); a ``selector`` narrows it to the workloads whose labels carry every selector label.
Evaluation, as Istio: any matching DENY policy refuses the request; then, if any ALLOW policy applies to the
workload, the request must match one of their rules; AUDIT policies only mark requests and never refuse them.

Values use Istio's string matching: ``abc`` exact, ``abc*`` prefix, ``*abc`` suffix, ``*`` any non-empty value.
What vmesh cannot enforce is refused with a message that says so (CUSTOM, JWT principals, request.auth.*).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Callable, Iterable

from vmesh.documents import Document, show
from vmesh.istio import sidecar
from vmesh.istio.fields import Node, root

ROOT_NAMESPACE = sidecar.ROOT_NAMESPACE  # "istio-system", as for every kind
ACTIONS = ("ALLOW", "DENY", "AUDIT")

SOURCE_FIELDS = {"principals": "principals", "namespaces": "namespaces", "ipBlocks": "ip_blocks",
                 "remoteIpBlocks": "remote_ip_blocks"}
OPERATION_FIELDS = {"hosts": "hosts", "ports": "ports", "methods": "methods", "paths": "paths"}
JWT = "needs RequestAuthentication (JWT), which vmesh does not support"
# the `when` keys vmesh compiles; request.headers[<name>] besides
CONDITION_KEYS = ("source.ip", "remote.ip", "source.namespace", "source.principal", "destination.ip",
                  "destination.port", "connection.sni")
HEADER_KEY = re.compile(r"^request\.headers\[(.*)\]$")
HEADER_NAME = re.compile(r"^:?[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
PATH_TEMPLATE = re.compile(r"\{\*\*?\}")


@dataclasses.dataclass(frozen=True)
class Match:
    """One attribute of a source, operation or condition: any of ``values`` and none of ``not_values``."""

    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.values or self.not_values)


@dataclasses.dataclass(frozen=True)
class Source:
    """``from[].source``: every set field must match."""

    principals: Match = Match()
    namespaces: Match = Match()
    ip_blocks: Match = Match()  # CIDRs, a bare address as /32 (/128)
    remote_ip_blocks: Match = Match()


@dataclasses.dataclass(frozen=True)
class Operation:
    """``to[].operation``: every set field must match."""

    hosts: Match = Match()
    ports: Match = Match()  # decimal port numbers
    methods: Match = Match()
    paths: Match = Match()

    @property
    def http_only(self) -> bool:
        return bool(self.hosts or self.methods or self.paths)


@dataclasses.dataclass(frozen=True)
class Condition:
    """One ``when`` entry: ``key`` is one of CONDITION_KEYS or ``request.headers`` (then ``header`` names it)."""

    key: str
    match: Match
    header: str | None = None

    @property
    def http_only(self) -> bool:
        return self.key == "request.headers"


@dataclasses.dataclass(frozen=True)
class Rule:
    """Matches when one source (or ``from`` unset), one operation (or ``to`` unset) and every condition match."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclasses.dataclass
class AuthorizationPolicy:
    doc: Document
    selector: dict[str, str] | None  # spec.selector.matchLabels; None = every workload of its scope
    action: str  # ALLOW, DENY or AUDIT
    rules: list[Rule]  # none: an ALLOW policy allows nothing

    def applies_to(self, namespace: str, labels: dict[str, str]) -> bool:
        if self.doc.namespace not in (namespace, ROOT_NAMESPACE):
            return False
        return self.selector is None or all(labels.get(k) == v for k, v in self.selector.items())


# --- values -------------------------------------------------------------------------------------------------

def _wildcard(node: Node, text: str) -> str:
    """Istio reads ``*`` only alone, first or last; anywhere else it is a literal star that no request carries."""
    if (text != "*" and "*" in text[1:-1]) or (len(text) > 1 and text.startswith("*") and text.endswith("*")):
        raise node.error(f"{show(text)}: '*' may stand alone (any value), first (suffix match) or last (prefix match), "
                         "not in the middle or at both ends")
    return text


def _namespace(node: Node, text: str) -> str:
    # Istio reads every '*' of a namespace as any run of characters; the rest is (part of) a DNS label
    if len(text) > 63 or not re.fullmatch(r"[a-z0-9*-]+", text):
        raise node.error(f"{show(text)}: expected a namespace (a DNS label, at most 63 characters), where '*' "
                         "stands for any characters")
    return text


def _path(node: Node, text: str) -> str:
    if PATH_TEMPLATE.search(text):
        raise node.error(f"{show(text)}: path templates ({{*}}, {{**}}) are not supported by vmesh yet; use a prefix "
                         "('/api/*') or suffix ('*.html') match")
    return _wildcard(node, text)


def _ip_block(node: Node, text: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=False) if "/" in text else ipaddress.ip_network(text)
    except ValueError:
        raise node.error(f"invalid IP address or CIDR range {show(text)}, expected e.g. '10.0.0.1' or '10.0.0.0/16'") \
            from None
    return str(network)


def _port(node: Node, text: str) -> str:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise node.error(f"expected a port number 1-65535, got {show(text)}")
    return str(int(text))


Check = Callable[[Node, str], str]


def _strings(node: Node, check: Check) -> tuple[str, ...]:
    out = []
    for item in node.items():
        if isinstance(item.value, int) and not isinstance(item.value, bool) and check is _port:
            raise item.error(f'write ports as strings, e.g. "{item.value}" (Istio\'s ports are strings)')
        text = item.string(required=True)
        assert text is not None
        out.append(check(item, text))
    return tuple(out)


def _match(node: Node, field: str, check: Check) -> Match:
    negated = "not" + field[0].upper() + field[1:]
    return Match(_strings(node.get(field), check), _strings(node.get(negated), check))


# --- rules ----------------------------------------------------------------------------------------------------

_SOURCE_CHECKS: dict[str, Check] = {"principals": _wildcard, "namespaces": _namespace, "ipBlocks": _ip_block,
                                    "remoteIpBlocks": _ip_block}
_OPERATION_CHECKS: dict[str, Check] = {"hosts": _wildcard, "ports": _port, "methods": _wildcard, "paths": _path}


def _negated(fields: Iterable[str]) -> list[str]:
    return [f for name in fields for f in (name, "not" + name[0].upper() + name[1:])]


def _source(node: Node) -> Source:
    node.mapping(("source",), required=True)
    source = node.get("source")
    if not source.present:
        raise source.error("required: a from entry names its source, e.g. source: {namespaces: [prod]}")
    refused = {"requestPrincipals": JWT, "notRequestPrincipals": JWT}
    for key in _negated(("serviceAccounts", "trustDomains")):
        refused[key] = ("is not supported by vmesh yet; use principals such as "
                        "'cluster.local/ns/<namespace>/sa/<service account>'")
    if isinstance(source.value, dict):
        for key, why in refused.items():
            if key in source.value:
                raise source.get(key).error(f"{key} {why}")
    source.mapping(_negated(SOURCE_FIELDS))
    if not any(source.value.get(k) for k in _negated(SOURCE_FIELDS)):
        raise source.error("must not be empty: set principals, namespaces, ipBlocks or remoteIpBlocks "
                           "(or their not- forms); leave out from to match any source")
    return Source(**{attr: _match(source, field, _SOURCE_CHECKS[field]) for field, attr in SOURCE_FIELDS.items()})


def _operation(node: Node) -> Operation:
    node.mapping(("operation",), required=True)
    operation = node.get("operation")
    if not operation.present:
        raise operation.error("required: a to entry names its operation, e.g. operation: {methods: [GET]}")
    operation.mapping(_negated(OPERATION_FIELDS))
    if not any(operation.value.get(k) for k in _negated(OPERATION_FIELDS)):
        raise operation.error("must not be empty: set hosts, ports, methods or paths (or their not- forms); "
                              "leave out to to match any operation")
    return Operation(**{attr: _match(operation, field, _OPERATION_CHECKS[field])
                        for field, attr in OPERATION_FIELDS.items()})


_CONDITION_CHECKS: dict[str, Check] = {"source.ip": _ip_block, "remote.ip": _ip_block, "destination.ip": _ip_block,
                                       "source.namespace": _namespace, "source.principal": _wildcard,
                                       "destination.port": _port, "connection.sni": _wildcard}


def _condition(node: Node) -> Condition:
    node.mapping(("key", "values", "notValues"), required=True)
    key_node = node.get("key")
    key = key_node.string(required=True)
    assert key is not None
    header = None
    header_match = HEADER_KEY.match(key)
    if header_match:
        header = header_match.group(1)
        if not HEADER_NAME.match(header):
            raise key_node.error(f"{show(key)}: expected a header name in the brackets, e.g. request.headers[x-user]")
        header = header.lower()  # Envoy compares header names without case
        check: Check = _wildcard
    elif key.startswith("request.auth."):
        raise key_node.error(f"{key} {JWT}")
    elif key.startswith("experimental."):
        raise key_node.error(f"{key}: experimental attributes are not supported by vmesh")
    elif key in ("source.serviceAccount", "source.trustDomain"):
        raise key_node.error(f"{key} is not supported by vmesh yet; use source.principal")
    elif key == "destination.namespace":
        raise key_node.error(f"{key}: the policy's own namespace (metadata.namespace) says which workloads it covers")
    elif key.startswith("destination.labels"):
        raise key_node.error(f"{key}: use spec.selector.matchLabels to pick workloads")
    elif key in _CONDITION_CHECKS:
        check = _CONDITION_CHECKS[key]
    else:
        known = ", ".join(CONDITION_KEYS + ("request.headers[<name>]",))
        raise key_node.error(f"unknown attribute {show(key)}; vmesh knows {known}")
    match = Match(_strings(node.get("values"), check), _strings(node.get("notValues"), check))
    if not match:
        raise node.error(f"set values or notValues (or both) for {key}")
    return Condition("request.headers" if header else key, match, header)


def _rule(node: Node) -> Rule:
    if node.value is None:
        raise node.error("a rule must be a mapping; write {} for a rule that matches every request")
    node.mapping(("from", "to", "when"))
    for field in ("from", "to", "when"):
        if node.get(field).value == []:
            raise node.get(field).error(f"must not be empty; leave out {field} to match any request")
    return Rule(tuple(_source(item) for item in node.get("from").items()),
                tuple(_operation(item) for item in node.get("to").items()),
                tuple(_condition(item) for item in node.get("when").items()))


def parse(doc: Document) -> AuthorizationPolicy:
    spec = root(doc).mapping(("selector", "action", "rules", "provider", "targetRef", "targetRefs"))
    for field in ("targetRef", "targetRefs"):
        if spec.get(field).present:
            raise spec.get(field).error(f"{field} is not supported: vmesh selects workloads by spec.selector "
                                        "(matchLabels)")
    action_node = spec.get("action")
    action = action_node.string(default="ALLOW")
    assert action is not None
    if action == "CUSTOM":
        raise action_node.error("CUSTOM (external authorization) is not supported by vmesh")
    if action not in ACTIONS:
        raise action_node.error(f"expected one of {', '.join(ACTIONS)}, got {show(action)}")
    if spec.get("provider").present:
        raise spec.get("provider").error("provider goes with action CUSTOM (external authorization), which is not "
                                         "supported by vmesh")
    selector = None
    if spec.get("selector").present:
        labels_node = spec.get("selector").mapping(("matchLabels",)).get("matchLabels")
        labels = labels_node.string_map()
        for key, value in labels.items():
            if "*" in key or "*" in value:
                raise labels_node.get(key).error(f"wildcards are not supported in a selector: {key}={value}")
        selector = labels or None  # an empty selector selects every workload, as none does
    rules = [_rule(item) for item in spec.get("rules").items()]
    if action == "DENY" and not rules:
        raise spec.get("rules").error("a DENY policy without rules never denies anything (Istio refuses it); add the "
                                      "empty rule {} to deny every request")
    return AuthorizationPolicy(doc, selector, action, rules)


def for_workload(policies: list[AuthorizationPolicy], namespace: str,
                 labels: dict[str, str]) -> list[AuthorizationPolicy]:
    """The policies that apply to one workload, by namespace and name."""
    return sorted((p for p in policies if p.applies_to(namespace, labels)),
                  key=lambda p: (p.doc.namespace, p.doc.name))
