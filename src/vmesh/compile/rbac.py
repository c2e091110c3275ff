"""Envoy RBAC filters from the AuthorizationPolicies of one workload port, as Istio builds them.

One filter per action, each only when policies of that action apply: AUDIT (Envoy action LOG, never refuses),
then DENY, then ALLOW. Istio's order: the AUDIT filter sees every request, also those DENY or ALLOW refuse. An
ALLOW filter whose policies map is empty refuses everything: that is how allow-nothing compiles. Refused HTTP
requests get Envoy's own answer, 403 "RBAC: access denied"; refused TCP connections are closed.

Each Istio rule becomes one Envoy policy named ``ns[<namespace>]-policy[<name>]-rule[<index>]``: its permissions
are the rule's ``to`` entries (any may match), its principals the ``from`` entries (any may match), and each
``when`` condition is added to every one of them (all must match). A filter serves one port, so ``ports``,
``notPorts`` and ``destination.port`` are decided here, once: an entry or rule that cannot match this port is left
out. HTTP-only fields (hosts, methods, paths, request headers) on a TCP port: an ALLOW rule using them never
matches; DENY and AUDIT rules go on without those fields, so they cover more (Istio: "more restrictive").
"""

from __future__ import annotations

import json
from typing import Any, Callable

from vmesh.compile.envoy_types import typed
from vmesh.istio.authorizationpolicy import AuthorizationPolicy, Condition, Match, Operation, Rule, Source
from vmesh.registry import Port

HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
ORDER = ("AUDIT", "DENY", "ALLOW")
ENVOY_ACTION = {"AUDIT": "LOG", "DENY": "DENY", "ALLOW": "ALLOW"}
SPIFFE = "spiffe://"
LOCAL_TRUST_DOMAIN = "cluster.local"  # in a principal, Istio reads it as "this mesh's trust domain"
_RE2_SPECIAL = set("\\.+*?()|[]{}^$")

Matcher = dict[str, Any]


class _RuleNeverMatches(Exception):
    """The rule cannot match on this port: leave it out."""


class _EntryNeverMatches(Exception):
    """This ``to`` entry cannot match on this port: leave it out of the rule."""


def http_filters(policies: list[AuthorizationPolicy], port: Port, trust_domain: str) -> list[dict[str, Any]]:
    """The HTTP RBAC filters for one inbound HTTP port, to go before the router; [] when no policy applies."""
    return [typed("envoy.filters.http.rbac", HTTP_RBAC, rules=rules, rules_stat_prefix=f"vmesh_{action.lower()}_")
            for action, rules in _rules(policies, port, trust_domain, tcp=False)]


def network_filters(policies: list[AuthorizationPolicy], port: Port, trust_domain: str) -> list[dict[str, Any]]:
    """The network RBAC filters for one inbound TCP port, to go before tcp_proxy; [] when no policy applies."""
    return [typed("envoy.filters.network.rbac", NETWORK_RBAC, rules=rules,
                  stat_prefix=f"tcp.inbound_{port.number}.{action.lower()}.")
            for action, rules in _rules(policies, port, trust_domain, tcp=True)]


def policy_name(policy: AuthorizationPolicy, index: int) -> str:
    return f"ns[{policy.doc.namespace}]-policy[{policy.doc.name}]-rule[{index}]"


def _rules(policies: list[AuthorizationPolicy], port: Port, trust_domain: str,
           tcp: bool) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for action in ORDER:
        mine = sorted((p for p in policies if p.action == action), key=lambda p: (p.doc.namespace, p.doc.name))
        if not mine:
            continue
        compiled: dict[str, Any] = {}
        for policy in mine:
            for index, rule in enumerate(policy.rules):
                built = _Builder(port, trust_domain, tcp, lenient=action != "ALLOW").policy(rule)
                if built is not None:
                    compiled[policy_name(policy, index)] = built
        if compiled or action == "ALLOW":  # an empty DENY or LOG filter would do nothing
            out.append((action, {"action": ENVOY_ACTION[action], "policies": dict(sorted(compiled.items()))}))
    return out


class _Builder:
    """Turns one rule into one Envoy policy for one port."""

    def __init__(self, port: Port, trust_domain: str, tcp: bool, lenient: bool):
        self.port = port
        self.trust_domain = trust_domain
        self.tcp = tcp
        self.lenient = lenient  # DENY, AUDIT: drop what TCP cannot see and go on; ALLOW: the rule never matches

    def policy(self, rule: Rule) -> dict[str, Any] | None:
        try:
            permission_conditions, principal_conditions = self._conditions(rule.conditions)
            permissions = []
            for operation in rule.operations or (None,):
                try:
                    permissions.append(_and("and_rules", "rules", self._operation(operation)
                                            + permission_conditions))
                except _EntryNeverMatches:
                    continue
            if not permissions:
                raise _RuleNeverMatches
            principals = [_and("and_ids", "ids", self._source(source) + principal_conditions)
                          for source in rule.sources or (None,)]
        except _RuleNeverMatches:
            return None
        return {"permissions": _unique(permissions), "principals": _unique(principals)}

    def _http_only(self) -> bool:
        """On a TCP port: True to drop an HTTP-only field (DENY, AUDIT); an ALLOW rule never matches."""
        if not self.tcp:
            return False
        if self.lenient:
            return True
        raise _RuleNeverMatches

    # --- to ---------------------------------------------------------------------------------------------------

    def _port_matches(self, match: Match) -> bool:
        ours = {self.port.number, self.port.target_port}
        if match.values and not ours & {int(v) for v in match.values}:
            return False
        return not ours & {int(v) for v in match.not_values}

    def _operation(self, operation: Operation | None) -> list[Matcher]:
        if operation is None:
            return []
        if not self._port_matches(operation.ports):
            raise _EntryNeverMatches
        if operation.http_only and self._http_only():
            return []
        return (_field(operation.hosts, _host, "or_rules", "rules", "not_rule")
                + _field(operation.methods, _method, "or_rules", "rules", "not_rule")
                + _field(operation.paths, _path, "or_rules", "rules", "not_rule"))

    # --- from -------------------------------------------------------------------------------------------------

    def _source(self, source: Source | None) -> list[Matcher]:
        if source is None:
            return []
        return (_field(source.principals, self._principal, "or_ids", "ids", "not_id")
                + _field(source.namespaces, _namespace, "or_ids", "ids", "not_id")
                + _field(source.remote_ip_blocks, _remote_ip, "or_ids", "ids", "not_id")
                + _field(source.ip_blocks, _direct_remote_ip, "or_ids", "ids", "not_id"))

    def _principal(self, value: str) -> Matcher:
        parts = value.split("/")
        if len(parts) == 5 and parts[0] == LOCAL_TRUST_DOMAIN:  # trust-domain/ns/<ns>/sa/<sa>
            value = "/".join([self.trust_domain] + parts[1:])
        return {"authenticated": {"principal_name": _string(value, SPIFFE)}}

    # --- when -------------------------------------------------------------------------------------------------

    def _conditions(self, conditions: tuple[Condition, ...]) -> tuple[list[Matcher], list[Matcher]]:
        """(permission matchers, principal matchers) that every entry of the rule must also match."""
        permissions: list[Matcher] = []
        principals: list[Matcher] = []
        for condition in conditions:
            match = condition.match
            if condition.key == "destination.port":
                if not self._port_matches(match):
                    raise _RuleNeverMatches
            elif condition.http_only and self._http_only():
                continue
            elif condition.key == "request.headers":
                header = condition.header or ""
                principals += _field(match, lambda v: {"header": _header(header, v)}, "or_ids", "ids", "not_id")
            elif condition.key == "source.ip":
                principals += _field(match, _direct_remote_ip, "or_ids", "ids", "not_id")
            elif condition.key == "remote.ip":
                principals += _field(match, _remote_ip, "or_ids", "ids", "not_id")
            elif condition.key == "source.namespace":
                principals += _field(match, _namespace, "or_ids", "ids", "not_id")
            elif condition.key == "source.principal":
                principals += _field(match, self._principal, "or_ids", "ids", "not_id")
            elif condition.key == "destination.ip":
                permissions += _field(match, lambda v: {"destination_ip": _cidr(v)}, "or_rules", "rules", "not_rule")
            elif condition.key == "connection.sni":
                permissions += _field(match, lambda v: {"requested_server_name": _string(v)},
                                      "or_rules", "rules", "not_rule")
            else:  # the model refuses every other key
                raise AssertionError(f"unexpected condition {condition.key}")
        return permissions, principals


# --- Envoy matchers -------------------------------------------------------------------------------------------

def _key(matcher: Matcher) -> str:
    return json.dumps(matcher, sort_keys=True)


def _unique(matchers: list[Matcher]) -> list[Matcher]:
    """Without repeats, in a stable order: the order of an OR does not change what it matches."""
    return [m for _, m in sorted({_key(m): m for m in matchers}.items())]


def _and(kind: str, items: str, matchers: list[Matcher]) -> Matcher:
    if not matchers:
        return {"any": True}
    return matchers[0] if len(matchers) == 1 else {kind: {items: matchers}}


def _field(match: Match, build: Callable[[str], Matcher], or_kind: str, items: str, not_kind: str) -> list[Matcher]:
    """Any of the values and none of the not-values."""
    out = []
    for values, negate in ((match.values, False), (match.not_values, True)):
        if not values:
            continue
        matchers = _unique([build(v) for v in values])
        either = matchers[0] if len(matchers) == 1 else {or_kind: {items: matchers}}
        out.append({not_kind: either} if negate else either)
    return out


def _re2_quote(text: str) -> str:
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in text)


def _string(value: str, prefix: str = "", ignore_case: bool = False) -> Matcher:
    """Istio's string match: '*' any non-empty value, '*abc' suffix, 'abc*' prefix, else exact."""
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.startswith("*"):
        if prefix:  # the fixed prefix still has to be there
            return {"safe_regex": {"regex": _re2_quote(prefix) + ".*" + _re2_quote(value[1:])}}
        matcher: Matcher = {"suffix": value[1:]}
    elif value.endswith("*"):
        matcher = {"prefix": prefix + value[:-1]}
    else:
        matcher = {"exact": prefix + value}
    if ignore_case:
        matcher["ignore_case"] = True
    return matcher


def _header(name: str, value: str, ignore_case: bool = False) -> Matcher:
    if value == "*":
        return {"name": name, "present_match": True}
    return {"name": name, "string_match": _string(value, ignore_case=ignore_case)}


def _host(value: str) -> Matcher:
    return {"header": _header(":authority", value, ignore_case=True)}


def _method(value: str) -> Matcher:
    return {"header": _header(":method", value)}


def _path(value: str) -> Matcher:
    return {"url_path": {"path": _string(value)}}


def _namespace(value: str) -> Matcher:
    pattern = ".*".join(_re2_quote(part) for part in value.split("*"))
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": f".*/ns/{pattern}/.*"}}}}


def _cidr(value: str) -> Matcher:
    address, _, length = value.partition("/")
    return {"address_prefix": address, "prefix_len": int(length)}


def _direct_remote_ip(value: str) -> Matcher:
    return {"direct_remote_ip": _cidr(value)}


def _remote_ip(value: str) -> Matcher:
    return {"remote_ip": _cidr(value)}
