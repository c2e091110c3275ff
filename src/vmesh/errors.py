"""The one error type the compiler raises for user mistakes.

Every message names where the mistake is: the file, the document (``Kind/name``) and the field, e.g.
``mesh/reviews.yaml: VirtualService/reviews: http[0].route: weights sum to 90, expected 100``.
"""

from __future__ import annotations


class MeshError(Exception):
    """A mistake in the inventory or the mesh documents, reported without a traceback."""

    def __init__(self, message: str, *, file: str | None = None, doc: str | None = None, field: str | None = None):
        self.message = message
        self.file = file
        self.doc = doc
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [part for part in (self.file, self.doc, self.field) if part]
        return ": ".join(where + [self.message])


class MeshErrors(MeshError):
    """Several mistakes at once: validation reports all it found, not only the first."""

    def __init__(self, errors: list[MeshError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)
