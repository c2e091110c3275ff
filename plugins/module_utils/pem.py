# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""PEM, read strictly and written canonically: the one PEM layer of the collection's host-side code.

Standard library only: used by the Ansible modules, the renewal agent and the CA server (shipped to the VMs by the
vmesh.mesh.node_source lookup). Errors raise :class:`PemError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError

CERTIFICATE = "CERTIFICATE"
CERTIFICATE_REQUEST = "CERTIFICATE REQUEST"
_PEM_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.S)


class PemError(HostError):
    pass


def _text(text):
    if isinstance(text, bytes):
        return text.decode("ascii", "replace")
    return text or ""


def _decode(label, body):
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise PemError("a %s block is not valid base64" % label) from None


def blocks(text, label=CERTIFICATE):
    """DER bytes of every ``label`` block in ``text`` (str or bytes), in order; other blocks are skipped."""
    return [_decode(kind, body) for kind, body in _PEM_RE.findall(_text(text)) if kind == label]


def labels(text):
    """The label of every PEM block in ``text``, in order."""
    return [kind for kind, _ in _PEM_RE.findall(_text(text))]


def only_block(text, label, what):
    """The DER of the one PEM block of ``text``, which must be a ``label`` block and the only block there."""
    found = labels(text)
    if found != [label]:
        raise PemError("%s: expected one PEM %s, found %s" % (
            what, label, ", ".join(found) if found else "no PEM block"))
    return blocks(text, label)[0]


def encode(ders, label=CERTIFICATE):
    """Canonical PEM: 64-column base64, one block after the other, a final newline; "" for no blocks."""
    out = []
    for der in ders:
        b64 = base64.b64encode(der).decode("ascii")
        out.append("-----BEGIN %s-----\n%s\n-----END %s-----\n"
                   % (label, "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)), label))
    return "".join(out)


def normalize_certs(text, what):
    """The certificates of ``text`` in canonical PEM; raises if there is none."""
    ders = blocks(text)
    if not ders:
        raise PemError("%s holds no PEM certificate" % what)
    return encode(ders)


def fingerprints(text):
    """sha256 hex of the DER of each certificate in ``text``, in order."""
    return [hashlib.sha256(der).hexdigest() for der in blocks(text)]
