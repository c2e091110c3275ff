"""Load Istio documents (multi-document YAML) and know where each one came from."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import yaml

from vmesh.errors import MeshError

# Istio API groups and the versions of them vmesh reads. v1alpha3/v1beta1 are the older names of the same API.
API_GROUPS = {
    "networking.istio.io": {"v1", "v1beta1", "v1alpha3"},
    "security.istio.io": {"v1", "v1beta1"},
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


def _yaml_documents(text: str, file: str) -> Iterable[tuple[int, Any]]:
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield node.start_mark.line + 1, loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MeshError(f"malformed YAML: {where}{problem}", file=file) from None
    finally:
        loader.dispose()


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
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        raise MeshError("missing metadata", file=file, doc=f"{kind} in {where}", field="metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise MeshError("missing name", file=file, doc=f"{kind} in {where}", field="metadata.name")
    namespace = metadata.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not namespace:
        raise MeshError("namespace must be a non-empty string", file=file, doc=f"{kind}/{name}",
                        field="metadata.namespace")
    ref = Document(kind, name, namespace, {}, file, line)
    group = KINDS.get(kind)
    if group is None:
        known = ", ".join(sorted(KINDS))
        raise ref.error("kind", f"unknown kind {kind!r}; vmesh reads the Istio kinds {known}")
    api_version = data.get("apiVersion")
    if not isinstance(api_version, str) or "/" not in api_version:
        raise ref.error("apiVersion", f"missing or malformed apiVersion {api_version!r}, expected {group}/v1")
    api_group, _, version = api_version.partition("/")
    if api_group != group or version not in API_GROUPS[group]:
        versions = ", ".join(f"{group}/{v}" for v in sorted(API_GROUPS[group]))
        raise ref.error("apiVersion", f"{api_version!r} is not an API version of {kind}; expected one of {versions}")
    unknown = sorted(set(data) - {"apiVersion", "kind", "metadata", "spec", "status"})
    if unknown:
        raise ref.error(unknown[0], "unknown top-level field")
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
