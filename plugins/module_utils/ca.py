# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""The mesh CA: a root, an optional intermediate, roots kept during a rotation, and signing of workload CSRs.

Runs where the CA lives (the Ansible controller by default, or a designated CA host) and uses the
``cryptography`` library (42 or later). Users: the ``vmesh.mesh.ca``, ``vmesh.mesh.ca_sign`` and
``vmesh.mesh.ca_sign_intermediate`` modules (the last one for the online CA server, whose key is born on its host).

Layout of the CA directory (0700)::

    root-cert.pem        the current root                          0644
    root-key.pem         its key (absent for an adopted root whose key stays elsewhere)   0600
    ca-cert.pem          optional intermediate, issued by the root  0644
    ca-key.pem           its key (may be absent: then given to vmesh.mesh.ca_sign)             0600
    previous-roots.pem   older roots still trusted during a root rotation (absent or empty otherwise)

Leaves are signed by the intermediate when there is one, else by the root. What a workload certificate may be
(the CSR it is signed for, its subject, extensions and dates) is policy.py's rule, which the online CA server
(ca_server.py) applies too; here it is rendered with ``cryptography``.

Failures raise :class:`CAError`; nothing here calls ``fail_json``. No function returns private key bytes except
to write them into the CA directory.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import traceback
from dataclasses import dataclass, field

from ansible_collections.vmesh.mesh.plugins.module_utils import policy
from ansible_collections.vmesh.mesh.plugins.module_utils import host
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
PREVIOUS = "previous-roots.pem"
#: Files in the order they are written: the bundle only grows before a new root appears; a key before its cert.
FILES = (PREVIOUS, ROOT_KEY, ROOT_CERT, CA_KEY, CA_CERT)
KEY_FILES = (ROOT_KEY, CA_KEY)

DIR_MODE = 0o700
KEY_MODE = 0o600
CERT_MODE = 0o644

KEY_TYPES = ("ec-p256", "rsa-2048")
#: A generated intermediate is replaced when less than this fraction of its lifetime remains.
INTERMEDIATE_RENEW_RATIO = 0.2
#: CA certificates are backdated as leaves are (policy.py).
CLOCK_SKEW = policy.BACKDATE


class CAError(Exception):
    pass


#: Stands for a certificate or key that apply() makes.
NEW = "(new)"


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


# --- keys, certificates, PEM ---------------------------------------------------------------------------------


def new_key(key_type):
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise CAError("key_type must be one of %s, got %r" % (", ".join(KEY_TYPES), key_type))


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert):
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _spki(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certs(data, what):
    """Every certificate in PEM ``data`` (bytes); [] for empty data."""
    if not data or not data.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CAError("%s: not a PEM certificate: %s" % (what, exc)) from None


def load_cert(data, what):
    certs = load_certs(data, what)
    if not certs:
        raise CAError("%s: no PEM certificate in it" % what)
    return certs[0]


def load_key(data, what):
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CAError("%s: not an unencrypted PEM private key (decrypt it first, e.g. with Ansible Vault): %s"
                      % (what, exc)) from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CAError("%s: only EC and RSA keys are supported" % what)
    return key


def key_matches(key, cert):
    return _spki(key.public_key()) == _spki(cert.public_key())


def issued_by(child, parent):
    """Whether ``parent`` signed ``child`` (name chaining and signature)."""
    try:
        child.verify_directly_issued_by(parent)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def is_ca(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def describe(cert):
    """What the diff shows of a certificate: never a key."""
    if cert is None:
        return None
    if cert is NEW:
        return {"subject": NEW, "fingerprint": NEW, "not_after": NEW}
    return {"subject": cert.subject.rfc4514_string(), "fingerprint": fingerprint(cert),
            "not_after": iso(cert.not_valid_after_utc)}


def iso(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _serial():
    # 128 random bits, positive, never 0 (RFC 5280 asks for a positive serial of at most 20 octets).
    return secrets.randbits(127) | 1


def _ski(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None


def _aki_for(issuer):
    ski = _ski(issuer)
    if ski is not None:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())


def _ca_builder(subject, issuer_name, public_key, not_before, not_after, path_length):
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer_name).public_key(public_key)
            .serial_number(_serial()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def make_root(trust_domain, key_type, days, now=None):
    """A self-signed root: O=<trust domain>, CN=vmesh root CA (<trust domain>)."""
    now = now or _now()
    key = new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, "vmesh root CA (%s)" % trust_domain)])
    cert = _ca_builder(name, name, key.public_key(), now - CLOCK_SKEW, now + datetime.timedelta(days=days),
                       None).sign(key, hashes.SHA256())
    return cert, key


def make_intermediate(root, root_key, trust_domain, key_type, days, now=None):
    """An intermediate issued by ``root`` (path length 0), never outliving it."""
    now = now or _now()
    key = new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, "vmesh intermediate CA (%s)" % trust_domain)])
    not_after = min(now + datetime.timedelta(days=days), root.not_valid_after_utc)
    cert = (_ca_builder(name, root.subject, key.public_key(), now - CLOCK_SKEW, not_after, 0)
            .add_extension(_aki_for(root), critical=False)
            .sign(root_key, hashes.SHA256()))
    return cert, key


# --- the CA directory --------------------------------------------------------------------------------------------


def read_files(path):
    """name -> bytes (None when absent) for every CA file in ``path``."""
    files = {}
    for name in FILES:
        try:
            with open(os.path.join(path, name), "rb") as handle:
                files[name] = handle.read()
        except FileNotFoundError:
            files[name] = None
        except OSError as exc:
            raise CAError("%s: %s" % (os.path.join(path, name), exc.strerror)) from None
    return files


@dataclass
class CA:
    """The CA as found in (or wanted for) a directory: certificates, keys, and the bytes they came from."""

    root: object = None
    root_key: object = None
    inter: object = None
    inter_key: object = None
    previous: list = field(default_factory=list)

    def issuer(self):
        return (self.inter, self.inter_key) if self.inter is not None else (self.root, self.root_key)

    def bundle(self):
        certs = ([self.root] if self.root is not None and self.root is not NEW else []) + self.previous
        return b"".join(cert_pem(c) for c in certs).decode("ascii")

    def chain(self):
        return cert_pem(self.inter).decode("ascii") if self.inter is not None and self.inter is not NEW else ""

    def summary(self):
        return {"root": describe(self.root), "intermediate": describe(self.inter),
                "previous_roots": [fingerprint(c) for c in self.previous],
                "root_key": "present" if self.root_key is not None else "absent",
                "intermediate_key": "present" if self.inter_key is not None else "absent"}


def load_ca(path, files=None):
    """The :class:`CA` in ``path``, checked: keys match their certificates, the intermediate was issued by the
    root. An empty or missing directory gives an empty CA."""
    files = read_files(path) if files is None else files

    def where(name):
        return os.path.join(path, name)

    ca = CA()
    if files[ROOT_CERT] is not None:
        ca.root = load_cert(files[ROOT_CERT], where(ROOT_CERT))
    if files[ROOT_KEY] is not None:
        ca.root_key = load_key(files[ROOT_KEY], where(ROOT_KEY))
        if ca.root is None:
            raise CAError("%s is there but %s is not" % (where(ROOT_KEY), where(ROOT_CERT)))
        if not key_matches(ca.root_key, ca.root):
            raise CAError("%s does not match %s" % (where(ROOT_KEY), where(ROOT_CERT)))
    if files[CA_CERT] is not None:
        ca.inter = load_cert(files[CA_CERT], where(CA_CERT))
        if ca.root is None:
            raise CAError("%s is there but %s is not" % (where(CA_CERT), where(ROOT_CERT)))
        if not issued_by(ca.inter, ca.root):
            raise CAError("%s was not issued by %s" % (where(CA_CERT), where(ROOT_CERT)))
    if files[CA_KEY] is not None:
        ca.inter_key = load_key(files[CA_KEY], where(CA_KEY))
        if ca.inter is None:
            raise CAError("%s is there but %s is not" % (where(CA_KEY), where(CA_CERT)))
        if not key_matches(ca.inter_key, ca.inter):
            raise CAError("%s does not match %s" % (where(CA_KEY), where(CA_CERT)))
    ca.previous = load_certs(files[PREVIOUS], where(PREVIOUS))
    return ca


# --- deciding ----------------------------------------------------------------------------------------------------


@dataclass
class Adopted:
    """The user's own CA material, read and checked (see :func:`load_adopted`)."""

    root: object = None
    root_key: object = None
    inter: object = None
    inter_key: object = None


def _read_path(path, what):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CAError("%s: %s: %s" % (what, path, exc.strerror)) from None


def load_adopted(root_cert=None, root_key=None, root_key_content=None, intermediate_cert=None,
                 intermediate_key=None, intermediate_key_content=None):
    """Read and check the user's CA: keys match, the root is a self-signed CA, the intermediate a CA the root
    issued."""
    adopted = Adopted()
    if root_cert:
        adopted.root = load_cert(_read_path(root_cert, "root_cert"), "root_cert %s" % root_cert)
        if not is_ca(adopted.root):
            raise CAError("root_cert %s is not a CA certificate (basicConstraints CA:TRUE is missing)" % root_cert)
        if not issued_by(adopted.root, adopted.root):
            raise CAError("root_cert %s is not self-signed: give the top of your CA chain as root_cert and the CA "
                          "that issues workload certificates as intermediate_cert" % root_cert)
    if root_key or root_key_content:
        what = "root_key %s" % root_key if root_key else "root_key_content"
        data = _read_path(root_key, "root_key") if root_key else root_key_content.encode("ascii", "replace")
        adopted.root_key = load_key(data, what)
        if not key_matches(adopted.root_key, adopted.root):
            raise CAError("%s does not match root_cert %s" % (what, root_cert))
    if intermediate_cert:
        adopted.inter = load_cert(_read_path(intermediate_cert, "intermediate_cert"),
                                  "intermediate_cert %s" % intermediate_cert)
        if not is_ca(adopted.inter):
            raise CAError("intermediate_cert %s is not a CA certificate (basicConstraints CA:TRUE is missing)"
                          % intermediate_cert)
        if not issued_by(adopted.inter, adopted.root):
            raise CAError("intermediate_cert %s was not issued by root_cert %s" % (intermediate_cert, root_cert))
    if intermediate_key or intermediate_key_content:
        what = "intermediate_key %s" % intermediate_key if intermediate_key else "intermediate_key_content"
        data = (_read_path(intermediate_key, "intermediate_key") if intermediate_key
                else intermediate_key_content.encode("ascii", "replace"))
        adopted.inter_key = load_key(data, what)
        if not key_matches(adopted.inter_key, adopted.inter):
            raise CAError("%s does not match intermediate_cert %s" % (what, intermediate_cert))
    return adopted


def _same(a, b):
    return a is not None and b is not None and a is not NEW and b is not NEW and a == b


def _same_key(a, b):
    return a is not None and b is not None and _spki(a.public_key()) == _spki(b.public_key())


@dataclass
class Plan:
    current: CA
    wanted: CA
    files: dict      # name -> bytes, None (absent) or NEW
    current_files: dict
    changed_files: list
    removed_files: list
    reasons: list
    warnings: list


def plan(path, trust_domain="cluster.local", intermediate=False, rotate=False, retire_previous=False,
         adopted=None, now=None):
    """Decide what the CA in ``path`` must become. Pure: reads ``path``, makes no key, writes nothing."""
    now = now or _now()
    adopted = adopted or Adopted()
    current_files = read_files(path)
    cur = load_ca(path, current_files)
    want = CA(previous=list(cur.previous))
    reasons, warnings = [], []

    if rotate:
        if cur.root is not None:
            want.previous = [cur.root] + [c for c in cur.previous if c != cur.root]
        if adopted.root is not None:
            if _same(adopted.root, cur.root):
                raise CAError("rotate: root_cert is already the current root; give the new root to rotate to")
            want.root, want.root_key = adopted.root, adopted.root_key
        else:
            want.root, want.root_key = NEW, NEW
        if adopted.inter is not None:
            want.inter, want.inter_key = adopted.inter, adopted.inter_key
        elif intermediate:
            want.inter, want.inter_key = NEW, NEW
        reasons.append("rotate")
    elif adopted.root is not None:
        if cur.root is not None and not _same(adopted.root, cur.root):
            raise CAError("%s holds a different root (sha256 %s) than root_cert (sha256 %s); set rotate=true to "
                          "rotate to it" % (path, fingerprint(cur.root), fingerprint(adopted.root)))
        want.root = cur.root if cur.root is not None else adopted.root
        want.root_key = adopted.root_key if adopted.root_key is not None else cur.root_key
        if adopted.inter is not None:
            want.inter = cur.inter if _same(adopted.inter, cur.inter) else adopted.inter
            keep_key = _same(adopted.inter, cur.inter)
            want.inter_key = adopted.inter_key if adopted.inter_key is not None else (
                cur.inter_key if keep_key else None)
        elif cur.inter is not None:
            want.inter, want.inter_key = cur.inter, cur.inter_key
        elif intermediate:
            want.inter, want.inter_key = NEW, NEW
    elif cur.root is None:
        want.root, want.root_key = NEW, NEW
        if intermediate:
            want.inter, want.inter_key = NEW, NEW
    else:
        want.root, want.root_key = cur.root, cur.root_key
        if cur.inter is not None:
            want.inter, want.inter_key = cur.inter, cur.inter_key
            if _expiring(cur.inter, now):
                if cur.root_key is not None:
                    want.inter, want.inter_key = NEW, NEW
                    reasons.append("intermediate expiring")
                else:
                    warnings.append("the intermediate %s expires %s; adopt a new one with intermediate_cert"
                                    % (os.path.join(path, CA_CERT), iso(cur.inter.not_valid_after_utc)))
        elif intermediate:
            want.inter, want.inter_key = NEW, NEW

    if want.inter is NEW and want.root is not NEW and want.root_key is None:
        raise CAError("an intermediate must be made, but the root's key is not here; give root_key (or "
                      "root_key_content), or adopt your intermediate with intermediate_cert")
    if want.root is not NEW and want.root is not None and _expiring(want.root, now):
        warnings.append("the root expires %s; rotate it (rotate=true)" % iso(want.root.not_valid_after_utc))
    if want.root is cur.root and cur.root is not None and adopted.root is None:
        found = [a.value for a in cur.root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        if found and trust_domain not in found:
            warnings.append("the root in %s was made for trust domain %s, not %s; it is kept (rotate=true makes a "
                            "root for %s)" % (path, found[0], trust_domain, trust_domain))
    if retire_previous:
        want.previous = []
    want.previous = [c for c in want.previous if not _same(c, want.root)]

    files = {
        ROOT_CERT: _file(want.root, cur.root, current_files[ROOT_CERT], cert_pem),
        ROOT_KEY: _key_file(want.root_key, cur.root_key, current_files[ROOT_KEY]),
        CA_CERT: _file(want.inter, cur.inter, current_files[CA_CERT], cert_pem),
        CA_KEY: _key_file(want.inter_key, cur.inter_key, current_files[CA_KEY]),
        PREVIOUS: b"".join(cert_pem(c) for c in want.previous),
    }
    if files[PREVIOUS] == (current_files[PREVIOUS] or b""):
        files[PREVIOUS] = current_files[PREVIOUS]  # absent and empty are the same
    changed = [n for n in FILES if files[n] is not None and files[n] != current_files[n]]
    removed = [n for n in FILES if files[n] is None and current_files[n] is not None]
    return Plan(current=cur, wanted=want, files=files, current_files=current_files, changed_files=changed,
                removed_files=removed, reasons=reasons, warnings=warnings)


def _expiring(cert, now):
    total = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    return (cert.not_valid_after_utc - now).total_seconds() < INTERMEDIATE_RENEW_RATIO * total


def _file(want, cur, cur_bytes, render):
    if want is None or want is NEW:
        return want
    return cur_bytes if _same(want, cur) else render(want)


def _key_file(want, cur, cur_bytes):
    if want is None or want is NEW:
        return want
    return cur_bytes if _same_key(want, cur) else key_pem(want)


# --- acting --------------------------------------------------------------------------------------------------------


def apply(path, the_plan, trust_domain, key_type, root_days, intermediate_days, now=None):
    """Make what is NEW, write the changed files atomically, remove the others; returns the CA now in force."""
    now = now or _now()
    want = the_plan.wanted
    files = dict(the_plan.files)
    if want.root is NEW:
        want.root, want.root_key = make_root(trust_domain, key_type, root_days, now)
        files[ROOT_CERT], files[ROOT_KEY] = cert_pem(want.root), key_pem(want.root_key)
    if want.inter is NEW:
        want.inter, want.inter_key = make_intermediate(want.root, want.root_key, trust_domain, key_type,
                                                       intermediate_days, now)
        files[CA_CERT], files[CA_KEY] = cert_pem(want.inter), key_pem(want.inter_key)
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        if os.stat(path).st_mode & 0o777 != DIR_MODE:
            os.chmod(path, DIR_MODE)
    except OSError as exc:
        raise CAError("%s: %s" % (path, exc.strerror)) from None
    for name in FILES:
        if files[name] is not None and files[name] != the_plan.current_files[name]:
            write_file(os.path.join(path, name), files[name], KEY_MODE if name in KEY_FILES else CERT_MODE)
    for name in the_plan.removed_files:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CAError("%s: %s" % (os.path.join(path, name), exc.strerror)) from None
    return want


def write_file(path, data, mode):
    """host.py's atomic writer (mode set before the rename, so a key is never readable by others), owned by
    whoever runs the module."""
    try:
        host.write_file(path, data, mode, os.geteuid(), os.getegid())
    except HostError as exc:
        raise CAError(str(exc)) from None


def results(ca):
    """The values the vmesh.mesh.ca module returns for ``ca`` (no key material)."""
    root = ca.root if ca.root is not None and ca.root is not NEW else None
    return {"trust_bundle": ca.bundle(), "chain": ca.chain(),
            "root_fingerprint": fingerprint(root) if root is not None else "",
            "previous_fingerprints": [fingerprint(c) for c in ca.previous]}


# --- signing -----------------------------------------------------------------------------------------------------


def _load_csr(csr_pem, identity=None):
    """The CSR of ``csr_pem`` once policy.py accepts it (for ``identity``: a workload's; else any CSR of the rule,
    an intermediate's) and its self-signature verifies."""
    try:
        checked = (policy.check_workload_csr(csr_pem, identity) if identity is not None
                   else policy.read_csr(csr_pem))
    except HostError as exc:
        raise CAError(str(exc)) from None
    try:
        csr = x509.load_der_x509_csr(checked.der)
    except ValueError as exc:
        raise CAError("csr: not a certificate signing request: %s" % exc) from None
    if not csr.is_signature_valid:
        raise CAError("csr: its signature is invalid; refused")
    return csr


#: policy.py's names of key usages and extended key usages, in ``cryptography``'s terms.
_KEY_USAGE = {"digitalSignature": "digital_signature", "keyEncipherment": "key_encipherment"}
_EXTENDED_KEY_USAGE = {"serverAuth": "SERVER_AUTH", "clientAuth": "CLIENT_AUTH"}


def _leaf_builder(profile, names, subject, issuer, public_key, not_before, not_after):
    """A leaf of policy.py's ``profile`` for the subjectAltName ``names`` (``x509.GeneralName`` objects)."""
    usages = {flag: False for flag in ("digital_signature", "content_commitment", "key_encipherment",
                                       "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                                       "encipher_only", "decipher_only")}
    usages.update({_KEY_USAGE[name]: True for name in profile.key_usage})
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer.subject).public_key(public_key).serial_number(_serial())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=profile.subject_alt_name_critical)
            .add_extension(x509.KeyUsage(**usages), critical=profile.key_usage_critical)
            .add_extension(x509.ExtendedKeyUsage([getattr(ExtendedKeyUsageOID, _EXTENDED_KEY_USAGE[name])
                                                  for name in profile.extended_key_usage]),
                           critical=profile.extended_key_usage_critical)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=profile.basic_constraints_critical)
            .add_extension(_aki_for(issuer), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


_SUBJECT_OIDS = {"O": NameOID.ORGANIZATION_NAME} if HAS_CRYPTOGRAPHY else {}


def sign(path, csr_pem, identity, lifetime_hours=24, signer_key_content=None, now=None):
    """Sign ``csr_pem`` for ``identity`` with the CA in ``path`` (the intermediate when there is one), by policy.py's
    rule: the CSR must ask for exactly the one URI ``identity`` with a key of the rule, and its self-signature must
    verify; the certificate is policy.WORKLOAD's, valid from policy.BACKDATE ago for ``lifetime_hours`` (1 to
    policy.MAX_LIFETIME_HOURS), never beyond the issuer. Returns certificate (leaf PEM), chain (leaf +
    intermediate PEM), serial (hex), not_after (ISO 8601 UTC)."""
    now = now or _now()
    try:
        subject = policy.subject(identity)
        policy.check_lifetime(lifetime_hours)
    except HostError as exc:
        raise CAError(str(exc)) from None
    ca = load_ca(path)
    if ca.root is None:
        raise CAError("no CA in %s (%s is missing); run vmesh.mesh.ca first" % (path, ROOT_CERT))
    issuer, issuer_key = ca.issuer()
    issuer_file = CA_CERT if ca.inter is not None else ROOT_CERT
    if signer_key_content:
        issuer_key = load_key(signer_key_content.encode("ascii", "replace"), "signer_key_content")
        if not key_matches(issuer_key, issuer):
            raise CAError("signer_key_content does not match %s" % os.path.join(path, issuer_file))
    if issuer_key is None:
        raise CAError("no signing key: %s is absent and signer_key_content is not given"
                      % os.path.join(path, CA_KEY if ca.inter is not None else ROOT_KEY))

    csr = _load_csr(csr_pem, identity)
    try:
        not_before, not_after = policy.workload_validity(now, lifetime_hours, issuer.not_valid_after_utc,
                                                         os.path.join(path, issuer_file))
    except HostError as exc:
        raise CAError("%s; renew or rotate the CA (vmesh.mesh.ca)" % exc) from None
    name = x509.Name([x509.NameAttribute(_SUBJECT_OIDS[kind], value) for kind, value in subject])
    cert = (_leaf_builder(policy.WORKLOAD, [x509.UniformResourceIdentifier(identity)], name, issuer,
                          csr.public_key(), not_before, not_after)
            .sign(issuer_key, hashes.SHA256()))
    leaf = cert_pem(cert).decode("ascii")
    return {"certificate": leaf, "chain": leaf + ca.chain(), "serial": format(cert.serial_number, "x"),
            "not_after": iso(cert.not_valid_after_utc)}


# --- the online CA's intermediate ----------------------------------------------------------------------------------

#: Who the CA server's intermediate is: O=<trust domain>, CN=<this>, unless the caller names it.
ONLINE_CA_NAME = "vmesh CA server (%s)"


#: Every IPv4 and every IPv6 address: excluded when the CA server is reached by name only.
ALL_ADDRESSES = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
_DNS_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def server_name_subtrees(server_names):
    """(DNS names, IP networks) of ``server_names``: the DNS names (lower case) and addresses (one-address networks)
    the CA server's TLS certificate carries, sorted; raises for anything else."""
    dns, ips = set(), set()
    for name in server_names or []:
        try:
            address = ipaddress.ip_address(str(name))
        except ValueError:
            if not _DNS_RE.match(str(name).lower()):
                raise CAError("server_names: %r is neither an IP address nor a DNS name" % (name,)) from None
            dns.add(str(name).lower())
        else:
            ips.add(ipaddress.ip_network(address))
    return sorted(dns), sorted(ips, key=lambda n: (n.version, n))


def _wanted_constraints(trust_domain, name_constraints, server_names=()):
    """The NameConstraints extension the intermediate carries, or None.

    RFC 5280 4.2.1.10: a name type with no permitted subtree is not constrained at all, so each type the mesh
    uses is permitted exactly and each it does not use is excluded outright. Permitted: URIs whose host is the
    trust domain (spiffe://<trust domain>/...), and the DNS names and addresses of ``server_names`` (the CA server's
    own TLS certificate; a permitted DNS name also covers names below it, as the RFC says). Excluded: every DNS name
    (an empty dNSName matches all) when no DNS name is permitted, every IPv4 and IPv6 address when no address is.
    So a stolen intermediate key can mint neither www.bank.example nor 8.8.8.8 that verifies to the mesh root."""
    if not name_constraints:
        return None
    dns, ips = server_name_subtrees(server_names)
    permitted = ([x509.UniformResourceIdentifier(trust_domain)] + [x509.DNSName(n) for n in dns]
                 + [x509.IPAddress(n) for n in ips])
    excluded = ([] if dns else [x509.DNSName("")]) + ([] if ips else [x509.IPAddress(n) for n in ALL_ADDRESSES])
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded or None)


def _constraints_of(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _path_length(cert):
    try:
        value = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False, None
    return value.ca, value.path_length


def intermediate_reasons(current, root, public_key, subject, constraints, now):
    """Why ``current`` (a certificate, or None) cannot stay the intermediate for ``public_key``: ``missing``,
    ``issuer`` (not issued by ``root``, e.g. after a root rotation), ``key`` (another key than the CSR's),
    ``subject``, ``constraints`` (not CA:TRUE pathlen 0, or other name constraints), ``expiring`` (less than a
    fifth of its lifetime left, as for the intermediate vmesh.mesh.ca makes). Empty when it can stay."""
    if current is None:
        return ["missing"]
    reasons = []
    if not issued_by(current, root):
        reasons.append("issuer")
    if _spki(current.public_key()) != _spki(public_key):
        reasons.append("key")
    if current.subject != subject:
        reasons.append("subject")
    if _path_length(current) != (True, 0) or _constraints_of(current) != constraints:
        reasons.append("constraints")
    if _expiring(current, now):
        reasons.append("expiring")
    return reasons


def sign_intermediate(path, csr_pem, trust_domain="cluster.local", common_name=None, days=365,
                      name_constraints=True, server_names=(), current=None, signer_key_content=None,
                      check_mode=False, now=None):
    """Sign the CSR of an intermediate CA whose key was born elsewhere (the CA server's) with the ROOT in ``path``.

    The certificate: subject ``O=<trust domain>, CN=<common name>`` (the CSR's subject and extensions are not
    copied), basicConstraints CA:TRUE pathlen 0 (critical), keyUsage keyCertSign, cRLSign, digitalSignature
    (critical), subject and authority key identifiers, and with ``name_constraints`` a critical NameConstraints
    permitting only URIs of the trust domain and the DNS names and addresses of ``server_names``, excluding every
    other DNS name or address (see :func:`_wanted_constraints`). Valid from 5 minutes ago for ``days`` (never
    beyond the root). An intermediate in use with other constraints (an earlier version's, URIs only) is replaced.

    ``current`` is the PEM of the certificate in use now; when :func:`intermediate_reasons` finds nothing wrong
    with it, it is returned as it is and nothing is signed, which keeps a play idempotent. In ``check_mode``
    nothing is signed either. Returns certificate (PEM; empty when one would be issued in check mode), issued
    (bool), reasons, serial (hex), not_after (ISO 8601 UTC), fingerprint and trust_bundle (the CA's roots)."""
    now = now or _now()
    try:
        policy.check_trust_domain(trust_domain)
    except HostError as exc:
        raise CAError(str(exc)) from None
    if days <= 0:
        raise CAError("days must be positive, got %s" % days)
    common_name = common_name or ONLINE_CA_NAME % trust_domain
    ca = load_ca(path)
    if ca.root is None:
        raise CAError("no CA in %s (%s is missing); run vmesh.mesh.ca first" % (path, ROOT_CERT))
    root_file = os.path.join(path, ROOT_CERT)
    is_ca_root, root_path_length = _path_length(ca.root)
    if not is_ca_root or (root_path_length is not None and root_path_length < 1):
        raise CAError("%s may not issue intermediates (basicConstraints: CA:%s, pathlen:%s)"
                      % (root_file, is_ca_root, root_path_length))
    csr = _load_csr(csr_pem)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    constraints = _wanted_constraints(trust_domain, name_constraints, server_names)
    current_cert = load_cert(current.encode("ascii", "replace"), "current") if (current or "").strip() else None
    reasons = intermediate_reasons(current_cert, ca.root, csr.public_key(), subject, constraints, now)
    result = {"issued": bool(reasons), "reasons": reasons, "trust_bundle": ca.bundle()}
    if not reasons or check_mode:
        kept = current_cert if not reasons else None
        return dict(result, certificate=cert_pem(kept).decode("ascii") if kept is not None else "",
                    serial=format(kept.serial_number, "x") if kept is not None else "",
                    not_after=iso(kept.not_valid_after_utc) if kept is not None else "",
                    fingerprint=fingerprint(kept) if kept is not None else "")

    root_key = ca.root_key
    if signer_key_content:
        root_key = load_key(signer_key_content.encode("ascii", "replace"), "signer_key_content")
        if not key_matches(root_key, ca.root):
            raise CAError("signer_key_content does not match %s (give the root's key)" % root_file)
    if root_key is None:
        raise CAError("no root key: %s is absent and signer_key_content is not given"
                      % os.path.join(path, ROOT_KEY))
    if ca.root.not_valid_after_utc <= now:
        raise CAError("%s expired on %s; rotate the root (vmesh.mesh.ca rotate=true)"
                      % (root_file, iso(ca.root.not_valid_after_utc)))
    not_after = min(now + datetime.timedelta(days=days), ca.root.not_valid_after_utc)
    builder = (_ca_builder(subject, ca.root.subject, csr.public_key(), now - CLOCK_SKEW, not_after, 0)
               .add_extension(_aki_for(ca.root), critical=False))
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    cert = builder.sign(root_key, hashes.SHA256())
    return dict(result, certificate=cert_pem(cert).decode("ascii"), serial=format(cert.serial_number, "x"),
                not_after=iso(cert.not_valid_after_utc), fingerprint=fingerprint(cert))
