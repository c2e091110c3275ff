"""Typed, located access to a document's fields: every mistake names file, document and field.

A typo must never silently do nothing, so every mapping is checked against the fields vmesh knows; known Istio
fields that vmesh does not implement are refused with a message that says so.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

from vmesh.documents import Document
from vmesh.errors import MeshError

_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", bool: "true or false"}


class Node:
    """The value at one path of a document."""

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
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Node:
        value = self.value.get(key) if isinstance(self.value, dict) else None
        return Node(self.doc, self.child_path(key), value)

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
                raise self.get(key).error(f"{key} is not supported by vmesh yet (see README, 'Not supported')")
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
        return [Node(self.doc, self.child_path(i), v) for i, v in enumerate(self.value)]

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
        return ((str(k), Node(self.doc, self.child_path(str(k)), v)) for k, v in self.value.items())


def root(doc: Document) -> Node:
    return Node(doc, "spec", doc.spec)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} ({value!r})" if not isinstance(value, (dict, list)) \
        else _TYPE_NAMES[type(value)]


def _close(key: str, known: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
    return matches[0] if matches else None


# --- durations: Go/Istio syntax such as 10s, 0.5s, 1m30s, 250ms ---------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_NS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "µs": 10**3, "ns": 1}


def duration_ns(node: Node, *, minimum_ns: int = 0) -> int | None:
    """Parse a duration; None when absent."""
    if node.value is None:
        return None
    text = node.value
    if isinstance(text, bool) or not isinstance(text, str):
        raise node.error(f"expected a duration such as '10s' or '250ms', got {_describe(text)}")
    pos, total = 0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        number, unit = match.groups()
        whole, _, frac = number.partition(".")
        total += int(whole or 0) * _UNIT_NS[unit] + (int(frac) * _UNIT_NS[unit] // 10 ** len(frac) if frac else 0)
        pos = match.end()
    if pos != len(text) or not text:
        raise node.error(f"invalid duration {text!r}: use a number and a unit (h, m, s, ms), e.g. '10s' or '1.5s'")
    if total < minimum_ns:
        raise node.error(f"duration {text!r} is too short, must be at least {envoy_duration(minimum_ns)}")
    return total


def envoy_duration(ns: int) -> str:
    """Nanoseconds as the protobuf JSON duration Envoy reads ('1.5s')."""
    seconds, rest = divmod(ns, 10**9)
    if not rest:
        return f"{seconds}s"
    return f"{seconds}.{rest:09d}".rstrip("0") + "s"


# --- regular expressions: Istio and Envoy use RE2 ------------------------------------------------------------

_RE2_UNSUPPORTED = [
    (re.compile(r"\(\?[=!]"), "lookahead"),
    (re.compile(r"\(\?<[=!]"), "lookbehind"),
    (re.compile(r"\\[1-9]"), "backreferences"),
    (re.compile(r"\(\?P="), "named backreferences"),
    (re.compile(r"(?<!\\)[*+?}]\+"), "possessive quantifiers"),
    (re.compile(r"\(\?>"), "atomic groups"),
]


def check_regex(node: Node) -> str:
    pattern = node.string(required=True)
    for finder, what in _RE2_UNSUPPORTED:
        if finder.search(pattern):
            raise node.error(f"invalid regex {pattern!r}: RE2 (used by Istio and Envoy) has no {what}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise node.error(f"invalid regex {pattern!r}: {exc}") from None
    return pattern


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
