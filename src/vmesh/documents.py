"""Load Istio documents (multi-document YAML) and know where each one came from."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable

import yaml

from vmesh.errors import MeshError

# Istio API groups and the versions of them vmesh reads. v1alpha3/v1beta1 are the older names of the same API.
API_GROUPS = {
    "networking.istio.io": {"v1", "v1beta1", "v1alpha3"},
    "security.istio.io": {"v1", "v1beta1"},
    "telemetry.istio.io": {"v1", "v1alpha1"},
}

# Every kind vmesh knows, with its API group. The ones with no compiler yet are refused with a clear message
# by the model (see vmesh.istio) instead of being ignored.
KINDS = {
    "VirtualService": "networking.istio.io",
    "DestinationRule": "networking.istio.io",
    "Gateway": "networking.istio.io",
    "ServiceEntry": "networking.istio.io",
    "Sidecar": "networking.istio.io",
    "WorkloadEntry": "networking.istio.io",
    "WorkloadGroup": "networking.istio.io",
    "EnvoyFilter": "networking.istio.io",
    "ProxyConfig": "networking.istio.io",
    "PeerAuthentication": "security.istio.io",
    "AuthorizationPolicy": "security.istio.io",
    "RequestAuthentication": "security.istio.io",
    "Telemetry": "telemetry.istio.io",
}

DEFAULT_NAMESPACE = "default"


@dataclasses.dataclass(frozen=True)
class Document:
    """One Istio object: its kind, name, namespace and spec, and the place it was read from."""

    kind: str
    name: str
    namespace: str
    spec: dict[str, Any]
    file: str
    line: int

    @property
    def ref(self) -> str:
        """``Kind/name``, or ``Kind/namespace/name`` outside the default namespace: how messages name it."""
        if self.namespace == DEFAULT_NAMESPACE:
            return f"{self.kind}/{self.name}"
        return f"{self.kind}/{self.namespace}/{self.name}"

    def error(self, field: str | None, message: str) -> MeshError:
        return MeshError(message, file=self.file, doc=self.ref, field=field)


# --- names, as the Kubernetes API server checks them ------------------------------------------------------------

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # fullmatch; at most 63 characters
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # at most 253
LABEL_MAX, SUBDOMAIN_MAX = 63, 253
# Istio asks more than Kubernetes of some kinds: a Gateway's name is a DNS label (no dots), as its namespace is.
LABEL_NAMED_KINDS = ("Gateway",)
_KIND_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")


def show(value: Any, limit: int = 80) -> str:
    """``repr`` of a user's value for a message: control, zero-width and bidi characters escaped (``repr`` escapes
    what is not printable), and cut to ``limit`` characters so a 100,000-character name stays readable."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(value) if isinstance(value, str) else len(text)} characters)"


def path_key(key: str) -> str:
    """A mapping key as a message's field path shows it: as written, unless it is long or not printable."""
    return key if key.isprintable() and 0 < len(key) <= 100 else show(key)


def dns_label_problem(value: str) -> str | None:
    """Why ``value`` is not a DNS-1123 label (RFC 1123, as Kubernetes reads it), or None."""
    if len(value) > LABEL_MAX:
        return f"must be at most {LABEL_MAX} characters (got {len(value)})"
    if not DNS1123_LABEL.fullmatch(value):
        return ("must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or "
                "digit")
    return None


def dns_subdomain_problem(value: str) -> str | None:
    """Why ``value`` is not a DNS-1123 subdomain (labels separated by dots, at most 253 characters), or None."""
    if len(value) > SUBDOMAIN_MAX:
        return f"must be at most {SUBDOMAIN_MAX} characters (got {len(value)})"
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        return ("must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and ending with a "
                "letter or digit")
    return None


def name_problem(kind: str, name: str) -> str | None:
    """Why ``name`` cannot be the metadata.name of a ``kind``, or None."""
    return dns_label_problem(name) if kind in LABEL_NAMED_KINDS else dns_subdomain_problem(name)


# --- YAML, read strictly -----------------------------------------------------------------------------------------

# Limits. The Kubernetes API server takes a request of at most 3 MiB and stores an object of at most 1.5 MiB (etcd);
# vmesh takes a file of at most 2 MiB and an object of at most 1 MiB, as its YAML reader reads a few hundred KB a
# second when it is PyYAML's pure-Python one (no libyaml, or text libyaml refuses) and an Istio object is a few
# KB. No YAML nested deeper than 100 levels either: far more than any Istio object needs.
MAX_FILE_CHARS = 2 * 1024 * 1024
MAX_DOCUMENT_CHARS = 1024 * 1024
MAX_DEPTH = 100
MAX_NUMBER_CHARS = 64  # an integer or float written with more characters is no number JSON carries

_CORE_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_STR, _INT, _FLOAT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"
# in a scalar's value (escapes such as "\0" in double quotes): C0/C1 controls other than tab, LF and CR, and lone
# surrogates, which no UTF-8 file can hold
_BAD_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")
_RAW_BAD = re.compile(f"{_BAD_CHAR.pattern}|{yaml.reader.Reader.NON_PRINTABLE.pattern}")


@dataclasses.dataclass(frozen=True)
class _Problem:
    message: str
    path: str
    mark: Any


class _Refused(Exception):
    """A mistake that stops reading at once (nesting too deep): no document is built, so none can be named."""

    def __init__(self, problem: _Problem):
        super().__init__(problem.message)
        self.problem = problem


class _Strict:
    """A YAML loader as strict as the Kubernetes API server (and a little stricter).

    Refused: duplicate keys at any depth (compared as Kubernetes compares them, as text: ``8080`` and ``"8080"``
    are one key), anchors and aliases (so no alias bomb and no recursive document), merge keys (``<<``), tags
    other than YAML's core ones, keys that are not scalars, NaN and infinities, control characters, and nesting
    deeper than MAX_DEPTH. Each mistake keeps its place: the path of keys to it and its line. The first one is
    reported once the document is built (so that the message can name it by kind and name); nesting too deep
    stops reading at once.
    """

    def _init_strict(self, bad_char: tuple[int, str, Any] | None) -> None:
        self.bad_char = bad_char  # (index, character, mark) of the first character the reader would refuse
        self.problem: _Problem | None = None
        self.root_line = 0
        self._path: list[str] = []
        self._depth = 0

    def _where(self) -> str:
        path = self._path if len(self._path) <= 12 else self._path[:8] + [f"[...{len(self._path) - 8} levels more]"]
        return "".join(p if p.startswith("[") else f".{p}" for p in path).lstrip(".")

    def _refuse(self, message: str, mark: Any, path: str | None = None) -> None:
        if self.problem is None:
            self.problem = _Problem(message, self._where() if path is None else path, mark)

    def compose_document(self) -> Any:
        self.problem = None
        self.get_event()  # DOCUMENT-START
        self.root_line = self.peek_event().start_mark.line + 1
        node = self.compose_node(None, None)
        self.get_event()  # DOCUMENT-END
        self.anchors = {}
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.get_event()
            self._refuse(f"YAML aliases (*{event.anchor}) are not accepted in mesh documents: write the value out",
                         event.start_mark)
            return yaml.ScalarNode("tag:yaml.org,2002:null", "", event.start_mark, event.end_mark)
        if event.anchor is not None:
            self._refuse(f"YAML anchors (&{event.anchor}) are not accepted in mesh documents: write the value out",
                         event.start_mark)
            event.anchor = None
        if event.tag not in (None, "!") and event.tag not in _CORE_TAGS:
            tag = event.tag.replace("tag:yaml.org,2002:", "!!")
            self._refuse(f"the YAML tag {show(tag)} is not accepted in mesh documents", event.start_mark)
            event.tag = None
            if isinstance(event, yaml.ScalarEvent):
                event.implicit = (False, False)  # read as the plain string it is written as
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(_Problem(f"nested more than {MAX_DEPTH} levels deep", self._where(), event.start_mark))
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor: Any) -> Any:
        node = super().compose_scalar_node(anchor)
        bad = _BAD_CHAR.search(node.value)
        start, end = node.start_mark.index, max(node.end_mark.index, node.start_mark.index + 1)
        if self.bad_char and start <= self.bad_char[0] < end:
            self._refuse(f"{_char_name(self.bad_char[1])} is not accepted in YAML", self.bad_char[2])
        elif bad:
            self._refuse(f"{_char_name(bad.group())} is not accepted", node.start_mark)
        if node.tag in (_INT, _FLOAT):
            number = None
            if len(node.value) <= MAX_NUMBER_CHARS:
                try:
                    number = (self.construct_yaml_int if node.tag == _INT else self.construct_yaml_float)(node)
                except ValueError:
                    pass
            if number is None or (isinstance(number, float) and not math.isfinite(number)):
                self._refuse(f"{show(node.value)} is not a number JSON can carry (write it in quotes if it is text)",
                             node.start_mark)
                node.tag = _STR
        return node

    def compose_sequence_node(self, anchor: Any) -> Any:
        start = self.get_event()
        node = yaml.SequenceNode(start.tag if start.tag not in (None, "!") else
                                 self.resolve(yaml.SequenceNode, None, start.implicit), [], start.start_mark, None,
                                 flow_style=start.flow_style)
        while not self.check_event(yaml.SequenceEndEvent):
            self._path.append(f"[{len(node.value)}]")
            try:
                node.value.append(self.compose_node(node, len(node.value)))
            finally:
                self._path.pop()
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        start = self.get_event()
        node = yaml.MappingNode(start.tag if start.tag not in (None, "!") else
                                self.resolve(yaml.MappingNode, None, start.implicit), [], start.start_mark, None,
                                flow_style=start.flow_style)
        seen: dict[str, int] = {}
        while not self.check_event(yaml.MappingEndEvent):
            key_event = self.peek_event()
            key = self.compose_node(node, None)
            if not isinstance(key, yaml.ScalarNode):
                self._refuse("a key must be a string or a number, not a " +
                             ("list" if isinstance(key, yaml.SequenceNode) else "mapping"), key_event.start_mark)
                key = yaml.ScalarNode(_STR, f"<key on line {key.start_mark.line + 1}>", key.start_mark, key.end_mark)
            if key.tag == _MERGE:
                self._refuse("YAML merge keys (<<) are not accepted in mesh documents: write the keys out",
                             key.start_mark)
                key.tag = _STR
            text = _key_text(self, key)
            self._path.append(path_key(text))
            try:
                if text in seen:
                    self._refuse(f"duplicate key {show(text)}, first on line {seen[text]} (the Kubernetes API server "
                                 "refuses duplicate keys: which one wins differs between YAML readers)",
                                 key.start_mark, self._where())
                seen.setdefault(text, key.start_mark.line + 1)
                node.value.append((key, self.compose_node(node, key)))
            finally:
                self._path.pop()
        node.end_mark = self.get_event().end_mark
        return node

    def construct_yaml_timestamp(self, node: Any) -> Any:  # a date stays the text it is written as
        return self.construct_scalar(node)


class _PyLoader(_Strict, yaml.SafeLoader):
    """The strict loader over PyYAML's own reader, scanner and parser (pure Python)."""

    def __init__(self, text: str, bad_char: tuple[int, str, Any] | None = None):
        yaml.SafeLoader.__init__(self, text)
        self._init_strict(bad_char)


_PyLoader.add_constructor("tag:yaml.org,2002:timestamp", _PyLoader.construct_yaml_timestamp)

if getattr(yaml, "__with_libyaml__", False):
    class _CLoader(_Strict, yaml.cyaml.CParser, yaml.composer.Composer, yaml.constructor.SafeConstructor,
                   yaml.resolver.Resolver):
        """The strict loader over libyaml's parser (C, about five times faster); composing, and so every check of
        the strict loader, stays in Python. libyaml's marks count characters, as PyYAML's do."""

        def __init__(self, text: str, bad_char: tuple[int, str, Any] | None = None):
            yaml.cyaml.CParser.__init__(self, text)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._init_strict(bad_char)

    _CLoader.add_constructor("tag:yaml.org,2002:timestamp", _CLoader.construct_yaml_timestamp)
    _StrictLoader: type = _CLoader
else:
    _StrictLoader = _PyLoader


def _char_name(char: str) -> str:
    kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    return f"the character U+{ord(char):04X} ({kind})"


def _key_text(loader: _Strict, key: Any) -> str:
    """A key as Kubernetes' YAML-to-JSON conversion makes it text: 8080 and "8080" are the same key."""
    if key.tag in (_STR, _MERGE) or key.tag not in _CORE_TAGS:
        return key.value
    value = loader.construct_object(key)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _label(data: Any, index: int, line: int, broken: str = "") -> str:
    """How a message names a document: ``Kind/name`` (``Kind/namespace/name``) when these are well formed and not
    where the mistake is (``broken``, a field path), else ``[Kind in ]document N (line L)``."""
    where = f"document {index} (line {line})"
    if not isinstance(data, dict):
        return where
    kind, metadata = data.get("kind"), data.get("metadata")
    if not isinstance(kind, str) or kind not in KINDS or broken.split(".")[0].split("[")[0] == "kind":
        return where
    if not isinstance(metadata, dict) or broken.split(".")[0].split("[")[0] == "metadata":
        return f"{kind} in {where}"
    name, namespace = metadata.get("name"), metadata.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(name, str) or not isinstance(namespace, str) or dns_subdomain_problem(name) \
            or dns_label_problem(namespace):
        return f"{kind} in {where}"
    return f"{kind}/{name}" if namespace == DEFAULT_NAMESPACE else f"{kind}/{namespace}/{name}"


def _located(message: str, mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: {message}" if mark is not None else message


class _Slower(Exception):
    """libyaml refused the text: PyYAML's own reader reads it again, so that the message is the same either way."""


def _yaml_documents(text: str, file: str) -> list[tuple[int, Any]]:
    """(line, data) of each document of ``text``; every mistake, whatever part of the YAML reader finds it, is a
    MeshError naming the file, the document and, where there is one, the field.

    Read with libyaml where PyYAML has it. Text it refuses (malformed, an escaped lone surrogate, nesting deeper
    than libyaml's own limit, reached before the loader's) is read again by PyYAML's pure-Python reader, whose
    findings the messages are written for."""
    try:
        return list(_read_yaml(text, file, _StrictLoader))
    except _Slower:
        return list(_read_yaml(text, file, _PyLoader))


def _read_yaml(text: str, file: str, loader_class: type) -> Iterable[tuple[int, Any]]:
    if len(text) > MAX_FILE_CHARS:
        raise MeshError(f"{len(text)} characters is more than the {MAX_FILE_CHARS} (2 MiB) a mesh file may have; "
                        "split it into several files", file=file)
    # Characters YAML does not allow: the reader would refuse the whole text before reading any document. They are
    # read as U+FFFD instead, and the first is reported with the document and field that hold it.
    bad_char = None
    first = _RAW_BAD.search(text)
    if first:
        at = first.start()
        bad_char = (at, first.group(), yaml.Mark(file, at, text.count("\n", 0, at), at - text.rfind("\n", 0, at) - 1,
                                                 None, None))
        text = _RAW_BAD.sub("\ufffd", text)
    index, loader = 0, None
    try:
        loader = loader_class(text, bad_char)
        loader.get_event()  # STREAM-START
        while not loader.check_event(yaml.StreamEndEvent):
            index += 1
            loader.root_line = loader.peek_event().start_mark.line + 1
            node = loader.compose_document()
            size = node.end_mark.index - node.start_mark.index
            data = loader.construct_document(node)
            label = _label(data, index, loader.root_line, loader.problem.path if loader.problem else "")
            if loader.problem is not None:
                problem = loader.problem
                raise MeshError(_located(problem.message, problem.mark), file=file, doc=label,
                                field=problem.path or None)
            if size > MAX_DOCUMENT_CHARS:
                raise MeshError(f"{size} characters is more than the {MAX_DOCUMENT_CHARS} (1 MiB) one object may have",
                                file=file, doc=label)
            yield loader.root_line, data
        if bad_char is not None:  # outside every value: in a comment, say
            index, line = _document_at(text, bad_char[0])
            raise MeshError(_located(f"{_char_name(bad_char[1])} is not accepted in YAML", bad_char[2]), file=file,
                            doc=f"document {index} (line {line})")
    except MeshError:
        raise
    except _Refused as exc:
        problem = exc.problem
        raise MeshError(_located(problem.message, problem.mark), file=file,
                        doc=f"document {index} (line {loader.root_line if loader else 1})",
                        field=problem.path or None) from None
    except yaml.YAMLError as exc:
        if loader_class is not _PyLoader:
            raise _Slower() from None
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        doc = f"document {index} (line {loader.root_line})" if index and loader is not None else None
        raise MeshError(f"malformed YAML: {_located(problem, mark)}", file=file, doc=doc) from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        # a guard for what the checks above should already stop: never a traceback from the YAML reader
        if loader_class is not _PyLoader:
            raise _Slower() from None
        mark = loader.get_mark() if loader is not None and hasattr(loader, "get_mark") else None
        doc = f"document {index} (line {loader.root_line})" if index and loader is not None else None
        raise MeshError(_located(f"the YAML reader gave up ({type(exc).__name__}): simplify the document", mark),
                        file=file, doc=doc) from None
    finally:
        if loader is not None:
            loader.dispose()


def _document_at(text: str, position: int) -> tuple[int, int]:
    """Which document (number, first line) holds ``position``: documents are separated by lines that start with
    '---' (a YAML reader cannot say, as it refuses the whole text first)."""
    index, line = 1, 1
    for match in re.finditer(r"^---", text[:position], re.MULTILINE):
        if text[:match.start()].strip():  # a '---' before any content opens the first document
            index += 1
        line = text.count("\n", 0, match.start()) + 1
    return index, line


def load_text(text: str, file: str) -> list[Document]:
    """Parse one file's text into Documents; raise MeshError naming file, document and field."""
    docs = []
    for index, (line, data) in enumerate(_yaml_documents(text, file)):
        if data is None:  # an empty document between two '---'
            continue
        where = f"document {index + 1} (line {line})"
        if not isinstance(data, dict):
            raise MeshError(f"expected a mapping with apiVersion, kind, metadata and spec, got {type(data).__name__}",
                            file=file, doc=where)
        if data.get("kind") == "List" and isinstance(data.get("items"), list):
            raise MeshError("kind List is not supported: write one document per object, separated by ---",
                            file=file, doc=where)
        docs.append(_document(data, file, line, where))
    return docs


def _document(data: dict[str, Any], file: str, line: int, where: str) -> Document:
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        raise MeshError("missing kind", file=file, doc=where, field="kind")
    group = KINDS.get(kind)
    if group is None:
        known = ", ".join(sorted(KINDS))
        if not _KIND_SHAPE.fullmatch(kind):
            raise MeshError(f"unknown kind {show(kind)}; vmesh reads the Istio kinds {known}", file=file, doc=where,
                            field="kind")
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        raise MeshError("missing metadata", file=file, doc=f"{kind} in {where}", field="metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise MeshError("missing name", file=file, doc=f"{kind} in {where}", field="metadata.name")
    problem = name_problem(kind, name)
    if problem:
        why = " (Istio's rule for a Gateway, which may not have dots)" if kind in LABEL_NAMED_KINDS else ""
        raise MeshError(f"invalid name {show(name)}: {problem}{why}", file=file, doc=f"{kind} in {where}",
                        field="metadata.name")
    namespace = metadata.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not namespace:
        raise MeshError("namespace must be a non-empty string", file=file, doc=f"{kind}/{name}",
                        field="metadata.namespace")
    problem = dns_label_problem(namespace)
    if problem:
        raise MeshError(f"invalid namespace {show(namespace)}: {problem}", file=file, doc=f"{kind}/{name}",
                        field="metadata.namespace")
    ref = Document(kind, name, namespace, {}, file, line)
    if group is None:
        raise ref.error("kind", f"unknown kind {show(kind)}; vmesh reads the Istio kinds {known}")
    api_version = data.get("apiVersion")
    if not isinstance(api_version, str) or "/" not in api_version:
        raise ref.error("apiVersion", f"missing or malformed apiVersion {show(api_version)}, expected {group}/v1")
    api_group, _, version = api_version.partition("/")
    if api_group != group or version not in API_GROUPS[group]:
        versions = ", ".join(f"{group}/{v}" for v in sorted(API_GROUPS[group]))
        raise ref.error("apiVersion", f"{show(api_version)} is not an API version of {kind}; expected one of "
                                      f"{versions}")
    unknown = sorted((str(k) for k in set(data) - {"apiVersion", "kind", "metadata", "spec", "status"}), key=str)
    if unknown:
        raise ref.error(path_key(unknown[0]), "unknown top-level field")
    spec = data.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ref.error("spec", f"expected a mapping, got {type(spec).__name__}")
    return dataclasses.replace(ref, spec=spec)


def load_sources(sources: Iterable[tuple[str, str]], *, later_replaces: bool = False) -> list[Document]:
    """Load (file name, text) pairs, in the order given.

    Two objects with one kind/namespace/name are refused, unless ``later_replaces`` (files named one by one, as
    ``kubectl apply -f a.yaml -f b.yaml`` reads them: an object in a later file replaces the earlier one).
    """
    seen: dict[tuple[str, str, str], Document] = {}
    for file, text in sources:
        for doc in load_text(text, file):
            key = (doc.kind, doc.namespace, doc.name)
            first = seen.get(key)
            if first is not None and (first.file == doc.file or not later_replaces):
                raise doc.error("metadata.name", f"defined twice; first in {first.file} line {first.line}")
            seen.pop(key, None)
            seen[key] = doc
    return list(seen.values())
