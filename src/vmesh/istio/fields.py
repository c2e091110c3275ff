"""Typed, located access to a document's fields: every mistake names file, document and field.

A typo must never silently do nothing, so every mapping is checked against the fields vmesh knows; known Istio
fields that vmesh does not implement are refused with a message that says so.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable, Iterator

import re2

from vmesh.documents import Document, dns_label_problem, path_key, show
from vmesh.errors import MeshError

_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", bool: "true or false"}


class Node:
    """The value at one path of a document. Its children are of its own class (a subclass that says its errors
    otherwise keeps doing so down the tree)."""

    def __init__(self, doc: Document, path: str, value: Any):
        self.doc = doc
        self.path = path
        self.value = value

    def error(self, message: str) -> MeshError:
        return self.doc.error(self.path or None, message)

    @property
    def present(self) -> bool:
        return self.value is not None

    def child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        key = path_key(str(key))
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Node:
        value = self.value.get(key) if isinstance(self.value, dict) else None
        return type(self)(self.doc, self.child_path(key), value)

    def _expect(self, kind: type) -> Any:
        if kind is int and isinstance(self.value, bool):
            raise self.error("expected an integer, got true/false")
        if not isinstance(self.value, kind):
            raise self.error(f"expected {_TYPE_NAMES[kind]}, got {_describe(self.value)}")
        return self.value

    def mapping(self, known: Iterable[str], unsupported: Iterable[str] = (), *, required: bool = False) -> Node:
        """Check this is a mapping whose keys are all known; return self for chaining."""
        if self.value is None:
            if required:
                raise self.error("required")
            self.value = {}
            return self
        self._expect(dict)
        known = set(known)
        unsupported = set(unsupported)
        for key in self.value:
            if key in unsupported:
                raise self.get(key).error(f"{key} is not supported by vmesh yet (see docs/reference/istio.md, 'Not supported yet')")
            if key not in known:
                hint = _close(key, known)
                raise self.get(key).error("unknown field" + (f"; did you mean {hint!r}?" if hint else ""))
        return self

    def items(self, *, required: bool = False, non_empty: bool = False) -> list[Node]:
        if self.value is None:
            if required:
                raise self.error("required")
            return []
        self._expect(list)
        if non_empty and not self.value:
            raise self.error("must not be empty")
        return [type(self)(self.doc, self.child_path(i), v) for i, v in enumerate(self.value)]

    def string(self, *, required: bool = False, default: str | None = None) -> str | None:
        if self.value is None:
            if required:
                raise self.error("required")
            return default
        value = self._expect(str)
        if required and not value:
            raise self.error("must not be empty")
        return value

    def integer(self, *, required: bool = False, default: int | None = None, minimum: int | None = None,
                maximum: int | None = None) -> int | None:
        if self.value is None:
            if required:
                raise self.error("required")
            return default
        value = self._expect(int)
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(f"must be at most {maximum}, got {value}")
        return value

    def boolean(self, *, default: bool = False) -> bool:
        if self.value is None:
            return default
        return self._expect(bool)

    def strings(self, *, required: bool = False) -> list[str]:
        out = []
        for item in self.items(required=required, non_empty=required):
            out.append(item.string(required=True))
        return out

    def string_map(self) -> dict[str, str]:
        if self.value is None:
            return {}
        self._expect(dict)
        out = {}
        for key, value in self.value.items():
            node = self.get(str(key))
            if not isinstance(value, str):
                raise node.error(f"expected a string, got {_describe(value)}")
            out[str(key)] = value
        return out

    def entries(self) -> Iterator[tuple[str, Node]]:
        if self.value is None:
            return iter(())
        self._expect(dict)
        # YAML gives 8080 as an int key: the child keeps the value, the path says the key as written
        return ((str(k), type(self)(self.doc, self.child_path(str(k)), v)) for k, v in self.value.items())


def root(doc: Document) -> Node:
    return Node(doc, "spec", doc.spec)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} ({show(value)})" if not isinstance(value, (dict, list)) \
        else _TYPE_NAMES[type(value)]


def _close(key: str, known: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
    return matches[0] if matches else None


# --- durations: Go/Istio syntax such as 10s, 0.5s, 1m30s, 250ms ---------------------------------------------

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|us|µs|ns|h|m|s)")  # ASCII digits only
_UNIT_NS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "µs": 10**3, "ns": 1}
MAX_DURATION_NS = 315_576_000_000 * 10**9  # the largest google.protobuf.Duration, so the largest Envoy reads
MS = 10**6
_MAX_DURATION_CHARS = 64


def duration_ns(node: Node, *, minimum_ns: int = 0) -> int | None:
    """Parse a duration; None when absent. Negative durations and ones past protobuf's range are refused; with a
    ``minimum_ns`` of 1ms or more (Istio's ValidateDuration) so are durations finer than a millisecond."""
    if node.value is None:
        return None
    text = node.value
    if isinstance(text, bool) or not isinstance(text, str):
        raise node.error(f"expected a duration such as '10s' or '250ms', got {_describe(text)}")
    if text.startswith("-"):
        raise node.error(f"duration {show(text)} is negative")
    pos, total = 0, 0
    if len(text) <= _MAX_DURATION_CHARS:
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            number, unit = match.groups()
            whole, _, frac = number.partition(".")
            total += int(whole or 0) * _UNIT_NS[unit] + (int(frac) * _UNIT_NS[unit] // 10 ** len(frac) if frac else 0)
            pos = match.end()
    if pos != len(text) or not text:
        raise node.error(f"invalid duration {show(text)}: use a number and a unit (h, m, s, ms), e.g. '10s' or '1.5s'")
    if total > MAX_DURATION_NS:
        raise node.error(f"duration {show(text)} is too long: Envoy takes at most {MAX_DURATION_NS // 10**9}s "
                         "(10,000 years)")
    if total < minimum_ns:
        raise node.error(f"duration {show(text)} is too short, must be at least {envoy_duration(minimum_ns)}")
    if minimum_ns >= MS and total % MS:
        raise node.error(f"duration {show(text)} is finer than a millisecond; Istio takes durations to the ms")
    return total


def envoy_duration(ns: int) -> str:
    """Nanoseconds as the protobuf JSON duration Envoy reads ('1.5s')."""
    seconds, rest = divmod(ns, 10**9)
    if not rest:
        return f"{seconds}s"
    return f"{seconds}.{rest:09d}".rstrip("0") + "s"


# --- regular expressions: Istio and Envoy use RE2 ------------------------------------------------------------

MAX_REGEX_CHARS = 1024  # Istio's limit (validateStringRegexp)
# Envoy refuses a regex whose RE2 program is larger than re2.max_program_size.error_level, 100 unless the runtime
# says otherwise (vmesh's bootstrap does not).
ENVOY_MAX_PROGRAM_SIZE = 100


def _re2_options(encoding: Any) -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print each refused pattern on stderr
    options.encoding = encoding
    return options


_UTF8 = _re2_options(re2.Options.Encoding.UTF8)
# The size Envoy 1.40 counts is that of the pattern's UTF-8 bytes compiled as Latin-1 (measured with `envoy
# --mode validate`: '\pL{20}' is 144 to Envoy, as it is here, where a UTF-8 compilation makes it 23924).
_ENVOY = _re2_options(re2.Options.Encoding.LATIN1)


def _re2_error(exc: Exception) -> str:
    message = exc.args[0] if exc.args else str(exc)
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return text if len(text) <= 120 else text[:120] + "..."  # RE2 quotes the rest of the pattern


def check_regex(node: Node) -> str:
    """A regex Istio accepts (RE2 syntax, at most 1024 characters) and Envoy compiles (RE2, within its program
    size limit). Checked with RE2 itself, so the message names the field instead of Envoy refusing the config."""
    pattern = node.string(required=True)
    assert pattern is not None
    if len(pattern) > MAX_REGEX_CHARS:
        raise node.error(f"regex of {len(pattern)} characters is too long: Istio takes at most {MAX_REGEX_CHARS}")
    try:
        re2.compile(pattern, _UTF8)
        size = re2.compile(pattern.encode("utf-8"), _ENVOY).programsize
    except re2.error as exc:
        raise node.error(f"invalid regex {show(pattern)}: {_re2_error(exc)} (Istio and Envoy read RE2 syntax: "
                         "https://github.com/google/re2/wiki/Syntax)") from None
    if size > ENVOY_MAX_PROGRAM_SIZE:
        raise node.error(f"regex {show(pattern)} is too complex for Envoy: its RE2 program size is {size}, Envoy "
                         f"takes at most {ENVOY_MAX_PROGRAM_SIZE} (re2.max_program_size.error_level); simplify it")
    return pattern


# --- host names, as Istio's validation reads them ----------------------------------------------------------------

def _wildcard_label(label: str) -> bool:
    """Istio's IsWildcardDNS1123Label: '*', or a DNS label, optionally after a leading '*' or '*-'."""
    if label == "*":
        return True
    rest = label[2:] if label.startswith("*-") else label[1:] if label.startswith("*") else label
    return len(label) <= 63 and bool(_LABEL_ANY_CASE.fullmatch(rest))


_LABEL_ANY_CASE = re.compile(r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?")


def host_problem(host: str, *, ip: bool = False) -> str | None:
    """Why ``host`` is no host name Istio accepts (ValidateWildcardDomain: at most 255 characters, a wildcard only
    in the first label, DNS-1123 labels, a top-level domain that is not all digits), or None. ``ip``: an IP
    address is a host too."""
    if ip and _is_ip(host):
        return None
    if not host:
        return "must not be empty"
    if len(host) > 255:
        return f"must be at most 255 characters (got {len(host)})"
    first, _, rest = host.partition(".")
    if not _wildcard_label(first):
        return f"label {show(first)} is not a DNS-1123 label (letters, digits and '-'; a wildcard only first)"
    labels = rest.split(".") if rest else []
    if labels and labels[-1] == "":  # a trailing dot, as in 'istio.io.'
        labels = labels[:-1]
    last = labels[-1] if labels else first
    if last.isdigit():
        return f"the top-level domain {show(last)} cannot be all digits"
    for label in labels:
        if len(label) > 63 or not _LABEL_ANY_CASE.fullmatch(label):
            return f"label {show(label)} is not a DNS-1123 label (letters, digits and '-', at most 63)"
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_host(node: Node, host: str, *, ip: bool = False, what: str = "host") -> str:
    problem = host_problem(host, ip=ip)
    if problem:
        raise node.error(f"invalid {what} {show(host)}: {problem}")
    return host


def gateway_host_problem(host: str, *, ip: bool = True) -> str | None:
    """Why ``host`` cannot be a Gateway server's host (``ip``: an IPv4 address is one too) or a Sidecar's host part
    (Istio's validateSidecarOrGatewayHostnamePart): a fully qualified name or '*', a wildcard only as a whole
    first label."""
    if host != "*" and "." not in host:
        return "short names are not allowed here: write the fully qualified name (e.g. 'bookinfo.example.com')"
    problem = host_problem(host, ip=ip)
    if problem:
        return problem
    if "*" in host and host != "*" and not host.startswith("*."):
        return "a wildcard must be the whole first label, as in '*.example.com'"
    return None


def namespace_problem(namespace: str, allowed: Iterable[str]) -> str | None:
    """Why ``namespace`` (of a 'namespace/host' reference) is neither one of ``allowed`` nor a DNS label."""
    if namespace in allowed:
        return None
    return dns_label_problem(namespace)


STRING_MATCH_KINDS = ("exact", "prefix", "regex")


def string_match(node: Node) -> tuple[str, str] | None:
    """An Istio StringMatch: exactly one of exact, prefix, regex. Returns (kind, value); None for ``{}``."""
    node.mapping(STRING_MATCH_KINDS)
    given = [k for k in STRING_MATCH_KINDS if k in node.value]
    if not given:
        return None
    if len(given) > 1:
        raise node.error(f"set only one of exact, prefix, regex (got {', '.join(given)})")
    kind = given[0]
    field = node.get(kind)
    value = check_regex(field) if kind == "regex" else field.string(required=kind != "exact", default="")
    if value is None:
        raise field.error("required")
    return kind, value
