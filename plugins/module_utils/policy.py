# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""What a workload certificate may be: the one rule both signers of the mesh apply.

The mesh has two signers: the controller's (plugins/module_utils/ca.py, with the ``cryptography`` library, behind
vmesh.mesh.ca_sign) and the online CA server (plugins/module_utils/ca_server.py, with the ``openssl`` command).
Both take the decision here and render the same certificate:

* **the request** (:func:`check_workload_csr`): exactly one PEM ``CERTIFICATE REQUEST``, strict DER; its key EC on
  P-256 or P-384, or RSA of 2048 to 8192 bits; its subjectAltName exactly one URI, the identity the signer was
  given (``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``), in the signer's trust domain when the
  signer has one. Nothing else of the CSR is used: its subject and other extensions are never copied, only its
  public key is. The CSR's self-signature is checked by the signer with its own cryptography (this file parses,
  it does not verify signatures);
* **the subject** (:func:`subject`): ``O=<trust domain>``; so the subjectAltName is not critical (RFC 5280
  4.2.1.6 asks for a critical SAN only with an empty subject);
* **the extensions** (:data:`WORKLOAD`, rendered for openssl by :func:`openssl_extensions`, for ``cryptography``
  by ca.py): basicConstraints CA:FALSE (critical), keyUsage digitalSignature + keyEncipherment (critical),
  extendedKeyUsage serverAuth + clientAuth, subjectAltName, subject and authority key identifiers;
* **the dates** (:func:`validity`): from BACKDATE ago (clock skew between hosts) for the lifetime asked, 1 hour to
  MAX_LIFETIME_HOURS (Istio's default maximum workload certificate TTL, 90 days), never beyond the issuer, and
  nothing at all from an issuer that has expired.

The CA server's own TLS certificate follows :data:`SERVER_TLS` (serverAuth only; its SPIFFE id plus the DNS names
and addresses agents use). Standard library only: shipped to the VMs with the CA server (vmesh.mesh.node_source).
Refusals raise :class:`PolicyError`; ``malformed`` tells a request that cannot be read (HTTP 400) from one that
is well formed but asks for what it may not have (403).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass

from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.pem import CERTIFICATE_REQUEST, PemError, encode, only_block

#: Istio's workload identity. Trust domain and path segments in SPIFFE's character set, no commas or slashes, so
#: the URI is safe in ``-subj`` and ``-addext`` arguments and in an openssl extension section.
IDENTITY_RE = re.compile(r"^spiffe://([a-z0-9._-]+)/ns/([A-Za-z0-9._-]+)/sa/([A-Za-z0-9._-]+)$")
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")

#: Certificates start this long before they are signed: the clocks of the signer and the peers may differ.
BACKDATE = datetime.timedelta(minutes=5)
MIN_LIFETIME_HOURS = 1
#: Istio's default MAX_WORKLOAD_CERT_TTL (90 days).
MAX_LIFETIME_HOURS = 90 * 24
#: A CSR is small; a larger one is refused before it is parsed.
MAX_CSR_BYTES = 16384

#: Keys a workload may have: EC curves by OID, RSA by size.
EC_CURVES = {"1.2.840.10045.3.1.7": "P-256", "1.3.132.0.34": "P-384"}
RSA_BITS = (2048, 8192)
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
_SUBJECT_ALT_NAME = "2.5.29.17"


class PolicyError(HostError):
    """A request refused by the rule. ``malformed``: it could not be read at all (else: it asks too much)."""

    def __init__(self, message, malformed=False):
        super().__init__(message)
        self.malformed = malformed


# --- identities ------------------------------------------------------------------------------------------------------


def parse_identity(identity):
    """(trust domain, namespace, service account) of a SPIFFE URI ``spiffe://<td>/ns/<ns>/sa/<sa>``."""
    match = IDENTITY_RE.match(identity if isinstance(identity, str) else "")
    if not match:
        raise PolicyError("identity %r is not a SPIFFE URI of the form spiffe://<trust domain>/ns/<namespace>/sa/"
                          "<service account>" % (identity,))
    return match.groups()


def check_trust_domain(trust_domain, what="trust_domain"):
    if not isinstance(trust_domain, str) or not TRUST_DOMAIN_RE.match(trust_domain):
        raise PolicyError("%s %r: use lower-case letters, digits, '.', '-' and '_' (a SPIFFE trust domain)"
                          % (what, trust_domain))
    return trust_domain


def identity_in(identity, trust_domain):
    """``identity``'s trust domain, after checking it is ``trust_domain`` (when one is given)."""
    own = parse_identity(identity)[0]
    if trust_domain is not None and own != trust_domain:
        raise PolicyError("identity %s is not in the trust domain %s of this CA; refused" % (identity, trust_domain))
    return own


def subject(identity):
    """The subject of ``identity``'s certificate, as (attribute, value) pairs: ``O=<trust domain>``."""
    return [("O", parse_identity(identity)[0])]


# --- a CSR, read with a strict DER reader ---------------------------------------------------------------------------


def _tlv(data, pos, what):
    """(tag, content, next position) of the DER element at ``pos``: definite, minimal lengths only."""
    if pos + 2 > len(data):
        raise PolicyError("%s: truncated DER" % what, True)
    tag, length = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise PolicyError("%s: a DER tag this CSR has no use for" % what, True)
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 3 or pos + count > len(data) or data[pos] == 0:
            raise PolicyError("%s: a DER length that is not minimal" % what, True)
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80:
            raise PolicyError("%s: a DER length that is not minimal" % what, True)
        pos += count
    if pos + length > len(data):
        raise PolicyError("%s: truncated DER" % what, True)
    return tag, data[pos:pos + length], pos + length


def _items(data, what):
    """Every (tag, content) of the concatenated DER elements ``data``."""
    items, pos = [], 0
    while pos < len(data):
        tag, content, pos = _tlv(data, pos, what)
        items.append((tag, content))
    return items


def _expect(items, tags, what):
    if [tag for tag, _ in items] != list(tags):
        raise PolicyError("%s: not the DER of a certificate signing request" % what, True)
    return [content for _, content in items]


def _oid(content, what):
    if not content or content[-1] & 0x80:
        raise PolicyError("%s: a malformed object identifier" % what, True)
    arcs, value = [], 0
    for byte in content:
        if value == 0 and byte == 0x80:
            raise PolicyError("%s: an object identifier that is not minimal" % what, True)
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first] + arcs[1:])


def _ia5(content, what):
    try:
        return content.decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("%s: a name that is not IA5 (ASCII) text" % what, True) from None


#: GeneralName tags (RFC 5280 4.2.1.6) and how openssl prints each kind.
_NAMES = {0xA0: "othername", 0x81: "email", 0x82: "DNS", 0xA3: "X400Name", 0xA4: "DirName", 0xA5: "EdiPartyName",
          0x86: "URI", 0x87: "IP Address", 0x88: "Registered ID"}


def _general_names(content, what):
    """The names of a subjectAltName value as openssl prints them: ``URI:<uri>``, ``DNS:<name>``, ..."""
    (sequence,) = _expect(_items(content, what), [0x30], what)
    names = []
    for tag, value in _items(sequence, what):
        kind = _NAMES.get(tag)
        if kind is None:
            raise PolicyError("%s: an unknown kind of subjectAltName" % what, True)
        if kind in ("URI", "DNS", "email"):
            names.append("%s:%s" % (kind, _ia5(value, what)))
        elif kind == "IP Address" and len(value) in (4, 16):
            names.append("IP Address:%s" % ipaddress.ip_address(value))
        else:
            names.append("%s:<%d bytes>" % (kind, len(value)))
    return names


@dataclass
class Csr:
    """What a CSR asks for: ``pem`` (canonical, the one block), ``der``, ``key`` (``EC P-256``, ``RSA 2048``...),
    ``names`` (subjectAltName entries as openssl prints them: ``URI:...``, ``DNS:...``), ``san_extensions`` (how
    many subjectAltName extensions it requests)."""

    pem: str
    der: bytes
    key: str
    names: list
    san_extensions: int


def _key(spki, what):
    algorithm, bits = _expect(_items(spki, what), [0x30, 0x03], what)
    parts = _items(algorithm, what)
    if not parts or parts[0][0] != 0x06:
        raise PolicyError("%s: not the DER of a certificate signing request" % what, True)
    kind = _oid(parts[0][1], what)
    if not bits or bits[0] != 0:
        raise PolicyError("%s: a public key with unused bits" % what, True)
    if kind == _EC_PUBLIC_KEY:
        curve = _oid(parts[1][1], what) if len(parts) == 2 and parts[1][0] == 0x06 else None
        if curve not in EC_CURVES:
            raise PolicyError("csr: an EC key on a curve this mesh does not sign (only %s)"
                              % " and ".join(sorted(EC_CURVES.values())))
        return "EC %s" % EC_CURVES[curve]
    if kind == _RSA_ENCRYPTION:
        (rsa,) = _expect(_items(bits[1:], what), [0x30], what)
        modulus, _ = _expect(_items(rsa, what), [0x02, 0x02], what)
        size = int.from_bytes(modulus, "big").bit_length()
        if not RSA_BITS[0] <= size <= RSA_BITS[1]:
            raise PolicyError("csr: an RSA key of %d bits; %d to %d are signed" % (size, RSA_BITS[0], RSA_BITS[1]))
        return "RSA %d" % size
    raise PolicyError("csr: only EC and RSA keys are signed")


def read_csr(text, what="csr"):
    """The :class:`Csr` of ``text`` (PEM): exactly one CERTIFICATE REQUEST block, strict DER, a key of the rule
    (EC P-256 or P-384, RSA 2048 to 8192 bits). The signature is not checked here (the signer does it)."""
    if len(text or "") > MAX_CSR_BYTES:
        raise PolicyError("%s: larger than %d bytes" % (what, MAX_CSR_BYTES), True)
    try:
        der = only_block(text, CERTIFICATE_REQUEST, what)
    except PemError as exc:
        raise PolicyError(str(exc), True) from None
    tag, request, end = _tlv(der, 0, what)
    if tag != 0x30 or end != len(der):
        raise PolicyError("%s: not the DER of a certificate signing request" % what, True)
    info, _, _ = _expect(_items(request, what), [0x30, 0x30, 0x03], what)
    parts = _items(info, what)
    tags = [t for t, _ in parts]
    if tags not in ([0x02, 0x30, 0x30, 0xA0], [0x02, 0x30, 0x30]) or parts[0][1] != b"\x00":
        raise PolicyError("%s: not a version 1 certificate signing request" % what, True)
    key = _key(parts[2][1], what)
    names, san_extensions, seen = [], 0, set()
    for attribute_tag, attribute in _items(parts[3][1] if len(parts) == 4 else b"", what):
        oid, values = _expect(_items(attribute, what) if attribute_tag == 0x30 else [], [0x06, 0x31], what)
        oid = _oid(oid, what)
        if oid in seen:
            raise PolicyError("%s: the attribute %s is given twice; refused" % (what, oid), True)
        seen.add(oid)
        if oid != _EXTENSION_REQUEST:
            continue
        (extensions,) = _expect(_items(values, what), [0x30], what)
        for extension_tag, extension in _items(extensions, what):
            fields = _items(extension, what) if extension_tag == 0x30 else []
            if [t for t, _ in fields] not in ([0x06, 0x04], [0x06, 0x01, 0x04]):
                raise PolicyError("%s: a malformed extension" % what, True)
            if _oid(fields[0][1], what) == _SUBJECT_ALT_NAME:
                san_extensions += 1
                names += _general_names(fields[-1][1], what)
    return Csr(pem=encode([der], CERTIFICATE_REQUEST), der=der, key=key, names=names,
               san_extensions=san_extensions)


def check_workload_csr(text, identity, trust_domain=None, what="csr"):
    """The :class:`Csr` of ``text`` when a workload certificate for ``identity`` may be signed for it: a CSR of
    the rule (:func:`read_csr`) whose subjectAltName is exactly ``URI:<identity>`` (one extension, one name), with
    ``identity`` in ``trust_domain`` when given. Raises :class:`PolicyError` otherwise."""
    identity_in(identity, trust_domain)
    csr = read_csr(text, what)
    if csr.san_extensions > 1:
        raise PolicyError("%s: more than one subjectAltName extension; refused" % what)
    if csr.names != ["URI:" + identity]:
        raise PolicyError("%s: asks for subjectAltName %s, but the identity it may have is URI:%s; refused (the CA "
                          "signs only the identity it was given for this workload)"
                          % (what, ", ".join(csr.names) or "nothing", identity))
    return csr


# --- what is signed ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The extensions of a leaf: keyUsage and extendedKeyUsage by their RFC 5280 / openssl names. Every leaf also
    has basicConstraints CA:FALSE (critical), its subjectAltName (not critical: the subject is not empty), the
    authority key identifier (the issuer's key id) and a subject key identifier (SHA-1 of its public key)."""

    key_usage: tuple
    extended_key_usage: tuple
    key_usage_critical: bool = True
    extended_key_usage_critical: bool = False
    basic_constraints_critical: bool = True
    subject_alt_name_critical: bool = False


WORKLOAD = Profile(key_usage=("digitalSignature", "keyEncipherment"), extended_key_usage=("serverAuth", "clientAuth"))
SERVER_TLS = Profile(key_usage=("digitalSignature", "keyEncipherment"), extended_key_usage=("serverAuth",))


def openssl_extensions(profile, names):
    """The lines of an openssl extension section for ``profile`` and the subjectAltName ``names`` (``URI:...``,
    ``DNS:...``, ``IP:...``; every value checked by the caller: no ',', '$' or newline)."""
    for name in names:
        if re.search(r"[,$\s\\]", name):
            raise PolicyError("subjectAltName %r: a character openssl's configuration would interpret" % name)

    def critical(flag):
        return "critical," if flag else ""

    return [
        "basicConstraints = %sCA:FALSE" % critical(profile.basic_constraints_critical),
        "keyUsage = %s%s" % (critical(profile.key_usage_critical), ",".join(profile.key_usage)),
        "extendedKeyUsage = %s%s" % (critical(profile.extended_key_usage_critical),
                                     ",".join(profile.extended_key_usage)),
        "subjectAltName = %s%s" % (critical(profile.subject_alt_name_critical), ",".join(names)),
        "authorityKeyIdentifier = keyid",
        "subjectKeyIdentifier = hash",
    ]


def check_lifetime(hours, what="lifetime_hours"):
    if isinstance(hours, bool) or not isinstance(hours, int) or not MIN_LIFETIME_HOURS <= hours <= MAX_LIFETIME_HOURS:
        raise PolicyError("%s must be a whole number of hours from %d to %d (90 days), got %r"
                          % (what, MIN_LIFETIME_HOURS, MAX_LIFETIME_HOURS, hours))
    return hours


def validity(now, lifetime, issuer_not_after, issuer="the issuer"):
    """(not before, not after) of a leaf signed at ``now`` for ``lifetime`` (a timedelta) by an issuer valid until
    ``issuer_not_after``: from BACKDATE ago, never beyond the issuer. An expired issuer signs nothing."""
    if issuer_not_after <= now:
        raise PolicyError("%s expired on %s; nothing is signed with it"
                          % (issuer, issuer_not_after.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")))
    return now - BACKDATE, min(now + lifetime, issuer_not_after)


def workload_validity(now, lifetime_hours, issuer_not_after, issuer="the issuer"):
    """:func:`validity` of a workload certificate of ``lifetime_hours`` (checked by :func:`check_lifetime`)."""
    return validity(now, datetime.timedelta(hours=check_lifetime(lifetime_hours)), issuer_not_after, issuer)
