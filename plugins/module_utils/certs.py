# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""Workload certificates on the VM: decide on renewal, make a key and CSR, install a signed chain atomically.

This file runs on the VM with plain ``python3`` and imports the standard library and the collection's
module_utils only (host.py: commands and files; pem.py; policy.py); all cryptography is done
by the ``openssl`` command line (OpenSSL 3.0 on Debian bookworm; 1.1.1 prints the same fields). Users:

* the ``vmesh.mesh.workload_key``, ``vmesh.mesh.workload_cert`` and ``vmesh.mesh.node_key`` Ansible modules;
* the renewal agent on the VM (module_utils/renew.py), through :func:`state`, :func:`renewal_reasons`,
  :func:`prepare_pending`, :func:`plan_install` and :func:`install`;
* the online CA (module_utils/ca_server.py), which checks and signs with :class:`Openssl`.

Layout of a certificate directory (Kubernetes' atomic-writer layout, which Envoy's SDS ``watched_directory``
reloads on without a restart)::

    <path>/                         0750 root:<group>
      ..20260102T030405.a1b2c3/     0750 root:<group>  one version
        cert-chain.pem              0644 root:<group>  leaf + intermediates
        key.pem                     0640 root:<group>  Envoy (the proxy's user, in <group>) reads it
        root-cert.pem               0644 root:<group>  the trust bundle
      ..data -> ..20260102T030405.a1b2c3     swapped with one rename(2) of ``..data_tmp``
      cert-chain.pem -> ..data/cert-chain.pem
      key.pem -> ..data/key.pem
      root-cert.pem -> ..data/root-cert.pem
      pending/                      0700 root:root  between the CSR and the install
        key.pem                     0600
        csr.pem                     0600

Everything there belongs to root: the proxy's user only reads, through its group, so it can plant no link that
root would follow (see "owners, directories and files root can trust" below). Outside root (tests), everything
belongs to the user running us.

Private keys are made by ``openssl genpkey`` on the VM and never leave it: nothing here returns key bytes.
Failures raise :class:`CertError`, or host.py's :class:`FileError` (files and directories) and
:class:`CommandError` (openssl that cannot be run); all are :class:`HostError`. Nothing here calls ``fail_json``.
"""

from __future__ import annotations

import datetime
import grp
import os
import pwd
import re
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass, field

from ansible_collections.vmesh.mesh.plugins.module_utils import host
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.host import check_parents, ensure_dir
from ansible_collections.vmesh.mesh.plugins.module_utils.host import fix_attributes, fsync_dir, is_ours, kind, owner
from ansible_collections.vmesh.mesh.plugins.module_utils.host import lstat_or_none, read_file, remove_tree, write_file
from ansible_collections.vmesh.mesh.plugins.module_utils.pem import blocks as pem_blocks, encode as to_pem
from ansible_collections.vmesh.mesh.plugins.module_utils.pem import fingerprints, normalize_certs
from ansible_collections.vmesh.mesh.plugins.module_utils.policy import parse_identity

CHAIN = "cert-chain.pem"
KEY = "key.pem"
BUNDLE = "root-cert.pem"
FILES = (CHAIN, KEY, BUNDLE)
DATA = "..data"
DATA_TMP = "..data_tmp"
PENDING = "pending"
CSR = "csr.pem"

DIR_MODE = 0o750
PENDING_MODE = 0o700
KEY_MODE = 0o600
SHARED_KEY_MODE = 0o640
CERT_MODE = 0o644

#: ``..<YYYYmmddTHHMMSS>.<6 hex>``: one version of the files.
VERSION_RE = re.compile(r"^\.\.\d{8}T\d{6}\.[0-9a-f]{6}$")
_TIMEOUT = 60


class CertError(HostError):
    pass


# --- identities and PEM: policy.py and pem.py (imported above for this file's users) ------------------------------


def iso(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


# --- the openssl command line ---------------------------------------------------------------------------------


def run_subprocess(argv, data=None):
    """Default runner: (rc, stdout, stderr) of ``argv`` with LC_ALL=C, stdin ``data`` (str): host.py's, whose
    messages show the program and its subcommand. Raises :class:`host.CommandError`."""
    return host.run(argv, data, timeout=_TIMEOUT, shown=2)


@dataclass
class CertInfo:
    """What the ``openssl x509`` command line tells about one certificate."""

    serial: str = ""
    not_before: datetime.datetime | None = None
    not_after: datetime.datetime | None = None
    subject: str = ""
    issuer: str = ""
    uris: list = field(default_factory=list)
    subject_key_id: str = ""
    authority_key_id: str = ""

    @property
    def identity(self):
        return next((u for u in self.uris if u.startswith("spiffe://")), "")

    def summary(self):
        return {"serial": self.serial, "not_before": iso(self.not_before), "not_after": iso(self.not_after),
                "identity": self.identity, "issuer": self.issuer, "authority_key_id": self.authority_key_id}


def _openssl_date(text):
    # "Jan  2 03:04:05 2026 GMT" (LC_ALL=C)
    return datetime.datetime.strptime(" ".join(text.split()), "%b %d %H:%M:%S %Y GMT").replace(
        tzinfo=datetime.timezone.utc)


def _key_id(lines):
    for line in lines:
        line = line.strip()
        if line.startswith("keyid:"):  # OpenSSL 1.1.1
            line = line[len("keyid:"):]
        if re.match(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*$", line):
            return line.lower()
    return ""


def parse_x509_text(text):
    """A :class:`CertInfo` from ``openssl x509 -noout -serial -startdate -enddate -subject -issuer -ext ...``."""
    info = CertInfo()
    extension, ext_lines = None, {}
    for line in text.splitlines():
        if line.startswith("serial="):
            info.serial = format(int(line.split("=", 1)[1], 16), "x")
        elif line.startswith("notBefore="):
            info.not_before = _openssl_date(line.split("=", 1)[1])
        elif line.startswith("notAfter="):
            info.not_after = _openssl_date(line.split("=", 1)[1])
        elif line.startswith("subject="):
            info.subject = line.split("=", 1)[1].strip()
        elif line.startswith("issuer="):
            info.issuer = line.split("=", 1)[1].strip()
        elif line and not line[0].isspace():
            extension = line.split(":", 1)[0].strip()
            ext_lines[extension] = []
        elif extension:
            ext_lines[extension].append(line)
    for line in ext_lines.get("X509v3 Subject Alternative Name", []):
        for name in line.split(","):
            name = name.strip()
            if name.startswith("URI:"):
                info.uris.append(name[4:])
    info.subject_key_id = _key_id(ext_lines.get("X509v3 Subject Key Identifier", []))
    info.authority_key_id = _key_id(ext_lines.get("X509v3 Authority Key Identifier", []))
    return info


class Openssl:
    """The ``openssl`` command line. ``run(argv, data)`` returns (rc, stdout, stderr) and sets LC_ALL=C; the
    Ansible modules pass one built on ``module.run_command``, other users get :func:`run_subprocess`."""

    def __init__(self, run=None, binary=None):
        self._run = run or run_subprocess
        self._bin = binary or shutil.which("openssl") or "/usr/bin/openssl"

    def _check(self, args, data=None, what=None):
        argv = [self._bin] + list(args)
        rc, out, err = self._run(argv, data)
        if rc != 0:
            message = " ".join((err or out or "").split()) or "no output"
            raise CertError("%sopenssl %s failed (rc=%d): %s" % (what + ": " if what else "", args[0], rc, message))
        return out

    def command(self, args, data=None, what=None):
        """stdout of ``openssl <args>`` (stdin ``data``); raises :class:`CertError` with openssl's message."""
        return self._check(args, data, what)

    def run(self, args, data=None):
        """(rc, stdout, stderr) of ``openssl <args>``, not checked: for commands whose exit code is not the answer."""
        return self._run([self._bin] + list(args), data)

    def info(self, pem, what="certificate"):
        """:class:`CertInfo` of the first certificate in ``pem``."""
        out = self._check(["x509", "-noout", "-serial", "-startdate", "-enddate", "-nameopt", "RFC2253", "-subject",
                           "-issuer", "-ext", "subjectAltName,subjectKeyIdentifier,authorityKeyIdentifier"],
                          pem, what)
        return parse_x509_text(out)

    def cert_public_key(self, pem, what="certificate"):
        return self._check(["x509", "-noout", "-pubkey"], pem, what).strip()

    def key_public_key(self, key_path, what="key"):
        """The public key (SPKI PEM) of the private key in ``key_path``; the key is read by openssl, not by us."""
        return self._check(["pkey", "-in", key_path, "-pubout"], None, what).strip()

    def new_key(self, what="key"):
        """A new EC P-256 private key, PKCS#8 PEM."""
        return self._check(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], None, what)

    def new_csr(self, key_path, identity, what="csr"):
        """A CSR for ``identity``: subject O=<trust domain>, subjectAltName URI:<identity>."""
        trust_domain = parse_identity(identity)[0]
        # A config of our own: the host's openssl.cnf may add extensions or prompt for a subject.
        with tempfile.TemporaryDirectory(prefix="vmesh-csr-") as tmp:
            config = os.path.join(tmp, "req.cnf")
            with open(config, "w", encoding="ascii") as handle:
                handle.write("[req]\ndistinguished_name = dn\n[dn]\n")
            return self._check(["req", "-new", "-config", config, "-key", key_path, "-subj", "/O=" + trust_domain,
                                "-addext", "subjectAltName=URI:" + identity, "-sha256"], None, what)

    def verify(self, chain_pem, bundle_pem, what="chain"):
        """Raise unless the first certificate of ``chain_pem`` verifies to ``bundle_pem`` through the rest."""
        ders = pem_blocks(chain_pem)
        with tempfile.TemporaryDirectory(prefix="vmesh-verify-") as tmp:
            paths = {}
            for name, content in (("bundle", bundle_pem), ("leaf", to_pem(ders[:1])), ("rest", to_pem(ders[1:]))):
                paths[name] = os.path.join(tmp, name + ".pem")
                with open(paths[name], "w", encoding="ascii") as handle:
                    handle.write(content)
            args = ["verify", "-CAfile", paths["bundle"]]
            if len(ders) > 1:
                args += ["-untrusted", paths["rest"]]
            try:
                self._check(args + [paths["leaf"]], None, what)
            except CertError as exc:
                raise CertError(str(exc).replace(tmp + "/", "")) from None

    def sign(self, key_path, data, what="signature"):
        """Detached signature (DER bytes, ``openssl dgst -sha256 -sign``) of ``data`` (bytes) by the key in
        ``key_path``. Used by the renewal agent to sign its requests with the node key."""
        with tempfile.TemporaryDirectory(prefix="vmesh-sign-") as tmp:
            data_path, sig_path = os.path.join(tmp, "data"), os.path.join(tmp, "sig")
            with open(data_path, "wb") as handle:
                handle.write(data)
            self._check(["dgst", "-sha256", "-sign", key_path, "-out", sig_path, data_path], None, what)
            with open(sig_path, "rb") as handle:
                return handle.read()

    def signature_valid(self, public_key_pem, data, signature):
        """Whether ``signature`` (bytes) is a valid :meth:`sign` signature of ``data`` (bytes) by the public key
        ``public_key_pem`` (SPKI PEM). Never raises for a bad signature or key: the answer is then False."""
        with tempfile.TemporaryDirectory(prefix="vmesh-verify-") as tmp:
            paths = {}
            for name, content in (("pub", public_key_pem.encode("ascii", "replace")), ("data", data),
                                  ("sig", signature)):
                paths[name] = os.path.join(tmp, name)
                with open(paths[name], "wb") as handle:
                    handle.write(content)
            rc, out, _ = self._run([self._bin, "dgst", "-sha256", "-verify", paths["pub"], "-signature",
                                    paths["sig"], paths["data"]], None)
            return rc == 0 and "Verified OK" in (out or "")


# --- owners, directories and files root can trust --------------------------------------------------------------
#
# A root process never follows a link or opens a file in a directory a less-privileged user can write. Otherwise
# the proxy's user, which reads the certificates, could plant ``pending/key.pem -> /etc/vmesh/node/node-key.pem``
# and have root copy the node key (or any root-only file) into a file it can read. So every directory we work in
# is checked with lstat: a real directory, owned by root (by the user running us, outside root) and writable by
# nobody else, as is every directory above it. Files are opened with O_NOFOLLOW and O_NONBLOCK and must be regular
# files. A staging or version directory found owned or writable by another user (pending/ belonged to the proxy's
# user before this rule) is removed without looking inside (shutil.rmtree's fd-based walk never follows a link)
# and made again. The checks, the reader and the atomic writer are host.py's (imported above for this file's users).


def resolve_group(group):
    """gid of group ``group`` (a name or a number)."""
    try:
        return int(group) if str(group).isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise CertError("group: no group %r on this host" % group) from None


def resolve_owner(owner, group):
    """(uid, gid) of user ``owner`` and group ``group`` (names or numbers)."""
    try:
        uid = int(owner) if str(owner).isdigit() else pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise CertError("owner: no user %r on this host" % owner) from None
    return uid, resolve_group(group)


def ignored_owner(owner):
    """The warning for an ``owner`` option (of the workload modules) naming another user than the one running us,
    or "": the files belong to root, whatever it says."""
    if owner in (None, "", str(os.geteuid())):
        return ""
    try:
        if pwd.getpwnam(owner).pw_uid == os.geteuid():
            return ""
    except KeyError:
        pass
    return ("owner=%s is ignored: the key and certificate files belong to root and the proxy reads them through "
            "their group (a user that owned them could make root follow a link)" % owner)


def check_private_file(path, what="file"):
    """Raise unless ``path`` is a regular file (not a link) whose directories no one but root (or us) can write:
    a key root hands to ``openssl`` by its path."""
    check_parents(path)
    st = lstat_or_none(path)
    if st is None:
        raise CertError("%s %s is missing" % (what, path))
    if not stat.S_ISREG(st.st_mode):
        raise CertError("%s %s is %s, not a regular file; refused" % (what, path, kind(st)))


def _read_text(path):
    data = read_file(path)
    if data is None:
        return None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise CertError("%s: not ASCII text (PEM expected)" % path) from None


# --- the installed certificate ----------------------------------------------------------------------------------


@dataclass
class Installed:
    """The files in force: chain and bundle text, where the key is (a regular file in a directory of ours), the
    version directory; ``problem`` says why something there is not used, ``untrusted`` names the staging and
    version directories that another user owns or can write (removed, never read, by :func:`install`)."""

    chain: str | None
    bundle: str | None
    key_path: str | None
    version: str | None
    problem: str = ""
    untrusted: list = field(default_factory=list)


def _certs_dir(path):
    """The lstat of the certificate directory ``path`` (None when missing), after checking it and its parents."""
    check_parents(path)
    st = lstat_or_none(path)
    if st is None:
        return None
    if not stat.S_ISDIR(st.st_mode):
        raise CertError("%s is %s, not a directory; refused" % (path, kind(st)))
    if not is_ours(st):
        raise CertError("%s belongs to uid %d with mode %04o: another user could plant links in it; refused "
                        "(it must belong to root, mode 0750: fix or remove it, then run again)"
                        % (path, st.st_uid, stat.S_IMODE(st.st_mode)))
    return st


def _untrusted_entries(path):
    """Names of pending/ and version directories in ``path`` that are not real directories of ours."""
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise CertError("%s: %s" % (path, exc.strerror)) from None
    return [n for n in names
            if (n == PENDING or VERSION_RE.match(n)) and not is_ours(lstat_or_none(os.path.join(path, n)))]


def _regular(path):
    st = lstat_or_none(path)
    return st is not None and stat.S_ISREG(st.st_mode)


def _version_files(base):
    """(chain, bundle, key path, problem) of the regular files in the version directory ``base`` (one of ours):
    a link or anything else but a regular file makes the version unusable, and is never followed."""
    for name in FILES:
        st = lstat_or_none(os.path.join(base, name))
        if st is not None and not stat.S_ISREG(st.st_mode):
            return None, None, None, ("%s is %s, not a regular file: nothing in %s is used (a new version replaces "
                                      "it)" % (os.path.join(base, name), kind(st), base))
    key_path = os.path.join(base, KEY)
    return (_read_text(os.path.join(base, CHAIN)), _read_text(os.path.join(base, BUNDLE)),
            key_path if _regular(key_path) else None, "")


def installed(path):
    """The files in force in ``path``: those of the version directory ``..data`` names; without ``..data``, regular
    files at the top level (put there by hand; links there are ours, into ``..data``, and not followed). A version
    directory another user can write, or holding anything but regular files, counts as nothing installed: a
    renewal replaces it."""
    if _certs_dir(path) is None:
        return Installed(None, None, None, None)
    untrusted = _untrusted_entries(path)
    data = lstat_or_none(os.path.join(path, DATA))
    if data is None:  # no version in force; the top-level links, if any, are ours into ..data: not followed
        chain, bundle, key = (os.path.join(path, n) for n in (CHAIN, BUNDLE, KEY))
        return Installed(_read_text(chain) if _regular(chain) else None,
                         _read_text(bundle) if _regular(bundle) else None,
                         key if _regular(key) else None, None, untrusted=untrusted)
    if not stat.S_ISLNK(data.st_mode):
        raise CertError("%s is %s, expected a link to a version directory; refused (remove it and run again)"
                        % (os.path.join(path, DATA), kind(data)))
    version = os.readlink(os.path.join(path, DATA))
    if not VERSION_RE.match(version):
        raise CertError("%s points to %r, not to a version directory beside it; refused (remove it and run again)"
                        % (os.path.join(path, DATA), version))
    base = os.path.join(path, version)
    st = lstat_or_none(base)
    if st is None:
        return Installed(None, None, None, version, "%s points to %s, which is missing" % (DATA, base), untrusted)
    if not is_ours(st):
        return Installed(None, None, None, version, "%s is %s of uid %d with mode %04o: another user can write it, "
                         "so nothing in it is read (a new version replaces it)"
                         % (base, kind(st), st.st_uid, stat.S_IMODE(st.st_mode)), untrusted)
    chain, bundle, key_path, problem = _version_files(base)
    return Installed(chain, bundle, key_path, version, problem, untrusted)


def key_matches(openssl, key_path, cert_pem):
    """Whether the private key in ``key_path`` belongs to the first certificate of ``cert_pem``."""
    try:
        return openssl.key_public_key(key_path) == openssl.cert_public_key(cert_pem)
    except HostError:  # openssl refused it, or could not be run
        return False


def state(path, openssl=None):
    """A summary of the certificate installed in ``path``, for the modules and a renewal agent:
    ``present``, ``serial`` (lower-case hex), ``not_before``, ``not_after`` (ISO 8601 UTC), ``identity`` (the
    SPIFFE URI SAN), ``uris`` (every URI SAN), ``issuer`` (RFC 2253 DN), ``authority_key_id`` (lower-case hex
    with colons), ``key_matches`` (key.pem belongs to the certificate), ``version`` (the ``..data`` target),
    ``bundle_fingerprints`` (SHA-256 of each trusted root) and ``error`` (a certificate that cannot be read, or
    files that are not used because another user could have put them there)."""
    openssl = openssl or Openssl()
    current = installed(path)
    result = {"present": False, "serial": "", "not_before": "", "not_after": "", "identity": "", "uris": [],
              "issuer": "", "authority_key_id": "", "key_matches": False, "version": current.version or "",
              "bundle_fingerprints": fingerprints(current.bundle or ""), "error": current.problem}
    if not current.chain:
        return result
    try:
        info = openssl.info(current.chain, os.path.join(path, CHAIN))
    except HostError as exc:
        result["error"] = str(exc)
        return result
    result.update(info.summary(), present=True, uris=list(info.uris),
                  key_matches=bool(current.key_path) and key_matches(openssl, current.key_path, current.chain))
    return result


# --- deciding on renewal -----------------------------------------------------------------------------------------


def _parse_iso(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def renewal_reasons(st, identity, issuer_info=None, renew_ratio=0.5, force=False, now=None):
    """Why the certificate described by ``st`` (from :func:`state`) must be replaced, most serious first:
    ``missing``, ``key``, ``identity``, ``issuer``, ``expiring``, ``forced``. Empty when it can stay.
    ``issuer_info`` is the :class:`CertInfo` of the CA that issues leaves now (None: not checked)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not st["present"]:
        return ["missing"] + (["forced"] if force else [])
    reasons = []
    if not st["key_matches"]:
        reasons.append("key")
    if st["uris"] != [identity]:
        reasons.append("identity")
    if issuer_info is not None:
        if st["authority_key_id"] and issuer_info.subject_key_id:
            differs = st["authority_key_id"] != issuer_info.subject_key_id
        else:  # a CA without key identifiers: compare names
            differs = st["issuer"] != issuer_info.subject
        if differs:
            reasons.append("issuer")
    not_before, not_after = _parse_iso(st["not_before"]), _parse_iso(st["not_after"])
    if (not_after - now).total_seconds() < renew_ratio * (not_after - not_before).total_seconds():
        reasons.append("expiring")
    if force:
        reasons.append("forced")
    return reasons


def pending_paths(path):
    pending = os.path.join(path, PENDING)
    return pending, os.path.join(pending, KEY), os.path.join(pending, CSR)


def prepare_pending(path, identity, gid, openssl=None):
    """Make ``pending/key.pem`` (unless an interrupted run left one: it is reused) and a new ``pending/csr.pem``
    for ``identity``; returns the CSR (PEM text). ``pending/`` is root's alone (0700): one that another user owns or
    can write, or a link in its place, is removed unread and made again; a key.pem there that is not a regular
    file is replaced, never followed."""
    openssl = openssl or Openssl()
    parse_identity(identity)
    pending, key_path, csr_path = pending_paths(path)
    _certs_dir(path)
    ensure_dir(path, DIR_MODE, owner(), gid)
    if not is_ours(lstat_or_none(pending)):
        remove_tree(pending)
    ensure_dir(pending, PENDING_MODE, owner(), os.getegid())
    if _regular(key_path) and _valid_key(openssl, key_path):
        fix_attributes(key_path, KEY_MODE, owner(), os.getegid())  # reused: make sure of its mode and owner
    else:
        write_file(key_path, openssl.new_key(key_path), KEY_MODE, owner(), os.getegid())
    csr = openssl.new_csr(key_path, identity, csr_path)
    write_file(csr_path, csr, KEY_MODE, owner(), os.getegid())
    return csr


def _valid_key(openssl, key_path):
    try:
        openssl.key_public_key(key_path)
        return True
    except HostError:
        return False


def _pending_key(path):
    """The path of ``pending/key.pem`` when it is a regular file in a pending/ of ours, else None."""
    pending, key_path, _ = pending_paths(path)
    return key_path if is_ours(lstat_or_none(pending)) and _regular(key_path) else None


# --- installing ---------------------------------------------------------------------------------------------------


@dataclass
class InstallPlan:
    """What :func:`plan_install` decided: the wanted files (``key_from`` is a path), what differs, and the
    directories another user could write, to remove (``cleanup``)."""

    chain: str | None
    bundle: str
    key_from: str | None
    changed_files: list
    before: dict
    after: dict
    info: CertInfo | None = None
    warnings: list = field(default_factory=list)
    cleanup: list = field(default_factory=list)

    @property
    def changed(self):
        return bool(self.changed_files or self.cleanup)


def _summary(info, bundle):
    if info is None:
        return {"serial": "", "not_after": "", "identity": "", "bundle_fingerprints": fingerprints(bundle or "")}
    return {"serial": info.serial, "not_after": iso(info.not_after), "identity": info.identity,
            "bundle_fingerprints": fingerprints(bundle or "")}


def plan_install(path, chain, bundle, openssl=None, check_mode=False, gid=None):
    """Decide what installing ``chain`` (or, when empty, keeping the current certificate) with ``bundle`` changes.

    With a chain that is not the one installed, the leaf's public key must match ``pending/key.pem`` and the
    chain must verify to ``bundle``. Without a chain, the current certificate and key stay and only the bundle
    may change; with neither a chain nor a certificate installed there is nothing to install, which is an error
    except in check mode (where the chain is empty because the signing step was skipped). ``gid`` is the proxy's
    group (None: not checked, in check mode before the group exists)."""
    openssl = openssl or Openssl()
    current = installed(path)
    cur_info = None
    if current.chain:
        try:
            cur_info = openssl.info(current.chain, os.path.join(path, CHAIN))
        except HostError:
            cur_info = None
    want_bundle = normalize_certs(bundle, "trust_bundle") if (bundle or "").strip() or not check_mode else ""
    pending_key = pending_paths(path)[1]
    warnings = []

    if (chain or "").strip():
        want_chain = normalize_certs(chain, "chain")
        info = openssl.info(want_chain, "chain")
        if want_chain == current.chain:
            key_from = current.key_path
        else:
            if _pending_key(path) is None:
                raise CertError("chain: no pending key at %s to install it with (or not a regular file in a "
                                "directory of root's); run vmesh.mesh.workload_key first" % pending_key)
            if not key_matches(openssl, pending_key, want_chain):
                raise CertError("chain: the leaf's public key does not match %s (was it signed for another CSR?); "
                                "nothing was changed" % pending_key)
            key_from = pending_key
        if want_bundle:
            openssl.verify(want_chain, want_bundle, "chain")
    elif current.chain:
        want_chain, info, key_from = current.chain, cur_info, current.key_path
        if want_bundle and want_bundle != current.bundle:
            try:
                openssl.verify(current.chain, want_bundle, "the installed chain")
            except HostError:
                warnings.append("the certificate in %s does not verify against the new trust bundle; peers that "
                                "have it reject this workload until it is reissued" % path)
    elif check_mode:
        want_chain, info, key_from = None, None, None
    else:
        raise CertError("no certificate is installed in %s and no chain was given%s" % (
            path, " (%s)" % current.problem if current.problem else ""))

    if want_chain is None:  # check mode, first install: everything would be written
        changed = list(FILES)
    else:
        changed = []
        if want_chain != current.chain:
            changed.append(CHAIN)
        if key_from != current.key_path:
            changed.append(KEY)
        if want_bundle != (current.bundle or "") and (want_bundle or not check_mode):
            changed.append(BUNDLE)
        if not changed and not (_layout_ok(path, current) and _attributes_ok(path, current.version, gid)):
            changed = list(FILES)  # same content, wrong layout, mode or owner: write a new version
        if key_from is None:
            raise CertError("%s holds a certificate but no key.pem; run vmesh.mesh.workload_key with force=true"
                            % path)
    return InstallPlan(chain=want_chain, bundle=want_bundle, key_from=key_from, changed_files=changed,
                       before=_summary(cur_info, current.bundle), after=_summary(info, want_bundle), info=info,
                       warnings=warnings, cleanup=list(current.untrusted))


def _layout_ok(path, current):
    """Whether the files are in force through ``..data`` and the three top-level links."""
    if current.version is None:
        return False
    for name in FILES:
        link = os.path.join(path, name)
        st = lstat_or_none(link)
        if st is None or not stat.S_ISLNK(st.st_mode) or os.readlink(link) != DATA + "/" + name:
            return False
    return True


#: Modes of the files in a version directory: the proxy's group reads them (Envoy runs as the proxy's user).
FILE_MODES = {CHAIN: CERT_MODE, KEY: SHARED_KEY_MODE, BUNDLE: CERT_MODE}


def _attributes_ok(path, version, gid):
    """Whether the directory, the version directory and the files in force have their modes and owners (root,
    and the group ``gid`` when it is known)."""
    for directory in (path, os.path.join(path, version)):
        st = lstat_or_none(directory)
        if st is None or stat.S_IMODE(st.st_mode) != DIR_MODE or st.st_uid != owner():
            return False
        if gid is not None and st.st_gid != gid:
            return False
    for name, mode in FILE_MODES.items():
        st = lstat_or_none(os.path.join(path, version, name))
        if st is None or not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
            return False
        if st.st_uid != owner() or (gid is not None and st.st_gid != gid):
            return False
    return True


def install(path, plan, gid):
    """Carry out ``plan``: write a new version directory (root's, readable by the group ``gid``), swap ``..data``
    to it with one rename, make the top-level links, then remove ``pending/`` (when its key was used), the old
    versions and the directories another user could write (``plan.cleanup``), without following any link.
    Returns the version in force."""
    _certs_dir(path)
    ensure_dir(path, DIR_MODE, owner(), gid)
    version = installed(path).version
    if plan.changed_files:
        version = _write_version(path, plan, gid)
    pending, pending_key, _ = pending_paths(path)
    if plan.key_from == pending_key or not is_ours(lstat_or_none(pending)):
        remove_tree(pending)
    for name in sorted(os.listdir(path)):
        if name != version and VERSION_RE.match(name):
            remove_tree(os.path.join(path, name))
    return version


def _write_version(path, plan, gid):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    version = "..%s.%s" % (stamp, secrets.token_hex(3))
    vdir = os.path.join(path, version)
    try:
        os.mkdir(vdir, DIR_MODE)  # a new directory, never an existing entry
    except OSError as exc:
        raise CertError("%s: %s" % (vdir, exc.strerror)) from None
    ensure_dir(vdir, DIR_MODE, owner(), gid)
    key_bytes = read_file(plan.key_from)  # a regular file in a directory of ours (plan_install checked)
    if key_bytes is None:
        raise CertError("%s: vanished before it could be installed" % plan.key_from)
    for name, data in ((CHAIN, plan.chain), (KEY, key_bytes), (BUNDLE, plan.bundle)):
        write_file(os.path.join(vdir, name), data, FILE_MODES[name], owner(), gid)
    fsync_dir(vdir)
    # The swap: readers see the old version or the new one, never a mix.
    _symlink_atomic(path, DATA, version)
    for name in FILES:
        link = os.path.join(path, name)
        st = lstat_or_none(link)
        if not (st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(link) == DATA + "/" + name):
            _symlink_atomic(path, name, DATA + "/" + name)
    fsync_dir(path)
    return version


def _symlink_atomic(path, name, target):
    """Make ``path/name`` a link to ``target`` with one rename(2), which replaces a link or file there without
    following it; a directory in its place is refused."""
    tmp = os.path.join(path, DATA_TMP if name == DATA else ".%s.tmp" % name)
    try:
        existing = lstat_or_none(os.path.join(path, name))
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise CertError("%s is a directory, expected a link to %s" % (os.path.join(path, name), target))
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.rename(tmp, os.path.join(path, name))
    except OSError as exc:
        raise CertError("%s: %s" % (os.path.join(path, name), exc.strerror)) from None

