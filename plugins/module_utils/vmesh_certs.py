# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""Workload certificates on the VM: decide on renewal, make a key and CSR, install a signed chain atomically.

This file runs on the VM with plain ``python3`` and imports the standard library only; all cryptography is done
by the ``openssl`` command line (OpenSSL 3.0 on Debian bookworm; 1.1.1 prints the same fields). Users:

* the ``vmesh_workload_key``, ``vmesh_workload_cert`` and ``vmesh_node_key`` Ansible modules;
* the renewal agent on the VM (``vmesh-renew`` in roles/identity/files), through :func:`state`,
  :func:`renewal_reasons`, :func:`prepare_pending`, :func:`plan_install` and :func:`install`;
* the online CA (``vmesh-ca-server`` in roles/ca_server/files), which checks and signs with :class:`Openssl`.

Layout of a certificate directory (Kubernetes' atomic-writer layout, which Envoy's SDS ``watched_directory``
reloads on without a restart)::

    <path>/                         0750 root:<group>
      ..20260102T030405.a1b2c3/     0750 root:<group>  one version
        cert-chain.pem              0644 <owner>:<group>  leaf + intermediates
        key.pem                     0600 <owner>:<group>
        root-cert.pem               0644 <owner>:<group>  the trust bundle
      ..data -> ..20260102T030405.a1b2c3     swapped with one rename(2) of ``..data_tmp``
      cert-chain.pem -> ..data/cert-chain.pem
      key.pem -> ..data/key.pem
      root-cert.pem -> ..data/root-cert.pem
      pending/                      0700 <owner>:<group>  between the CSR and the install
        key.pem                     0600
        csr.pem                     0600

Private keys are made by ``openssl genpkey`` on the VM and never leave it: nothing here returns key bytes.
Failures raise :class:`CertError`; nothing here calls ``fail_json``.
"""

from __future__ import annotations

import base64
import datetime
import grp
import hashlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

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
CERT_MODE = 0o644

#: ``..<YYYYmmddTHHMMSS>.<6 hex>``: one version of the files.
VERSION_RE = re.compile(r"^\.\.\d{8}T\d{6}\.[0-9a-f]{6}$")
#: Istio's workload identity. Trust domain and path segments in SPIFFE's character set, no commas or slashes, so
#: the URI is safe in ``-subj`` and ``-addext`` arguments.
IDENTITY_RE = re.compile(r"^spiffe://([a-z0-9._-]+)/ns/([A-Za-z0-9._-]+)/sa/([A-Za-z0-9._-]+)$")
_PEM_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.S)
_TIMEOUT = 60


class CertError(Exception):
    pass


# --- identities and PEM ---------------------------------------------------------------------------------------


def parse_identity(identity):
    """(trust domain, namespace, service account) of a SPIFFE URI ``spiffe://<td>/ns/<ns>/sa/<sa>``."""
    match = IDENTITY_RE.match(identity or "")
    if not match:
        raise CertError("identity %r is not a SPIFFE URI of the form spiffe://<trust domain>/ns/<namespace>/sa/"
                        "<service account>" % (identity,))
    return match.groups()


def pem_blocks(text, label="CERTIFICATE"):
    """DER bytes of every ``label`` block in ``text`` (str or bytes), in order."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    blocks = []
    for kind, body in _PEM_RE.findall(text or ""):
        if kind != label:
            continue
        try:
            blocks.append(base64.b64decode("".join(body.split()), validate=True))
        except ValueError:
            raise CertError("a %s block is not valid base64" % label) from None
    return blocks


def to_pem(ders, label="CERTIFICATE"):
    """Canonical PEM: 64-column base64, one block after the other, a final newline; "" for no blocks."""
    out = []
    for der in ders:
        b64 = base64.b64encode(der).decode("ascii")
        out.append("-----BEGIN %s-----\n%s\n-----END %s-----\n"
                   % (label, "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)), label))
    return "".join(out)


def normalize_certs(text, what):
    """The certificates of ``text`` in canonical PEM; raises if there is none."""
    ders = pem_blocks(text)
    if not ders:
        raise CertError("%s holds no PEM certificate" % what)
    return to_pem(ders)


def fingerprints(text):
    """sha256 hex of the DER of each certificate in ``text``, in order."""
    return [hashlib.sha256(der).hexdigest() for der in pem_blocks(text)]


def iso(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


# --- the openssl command line ---------------------------------------------------------------------------------


def run_subprocess(argv, data=None):
    """Default runner: (rc, stdout, stderr) of ``argv`` with LC_ALL=C, stdin ``data`` (str)."""
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, env=env, check=False,
                              timeout=_TIMEOUT)
    except OSError as exc:
        raise CertError("cannot run %s: %s" % (argv[0], exc.strerror or exc)) from None
    except subprocess.TimeoutExpired:
        raise CertError("%s did not finish within %d s" % (" ".join(argv[:2]), _TIMEOUT)) from None
    return proc.returncode, proc.stdout, proc.stderr


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


# --- owners and atomic writes ---------------------------------------------------------------------------------


def resolve_owner(owner, group):
    """(uid, gid) of user ``owner`` and group ``group`` (names or numbers)."""
    try:
        uid = int(owner) if str(owner).isdigit() else pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise CertError("owner: no user %r on this host" % owner) from None
    try:
        gid = int(group) if str(group).isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise CertError("group: no group %r on this host" % group) from None
    return uid, gid


def _chown(path, uid, gid, follow=True):
    try:
        st = os.stat(path, follow_symlinks=follow)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=follow)
    except OSError as exc:
        raise CertError("%s: cannot chown to %d:%d: %s" % (path, uid, gid, exc.strerror)) from None


def dir_owner():
    """Directories belong to root when we run as root, else to the user running us (tests, rootless use)."""
    return 0 if os.geteuid() == 0 else os.geteuid()


def ensure_dir(path, mode, uid, gid):
    """``path`` exists as a directory with ``mode`` and ``uid``:``gid``; returns whether anything changed."""
    changed = False
    try:
        if not os.path.isdir(path):
            os.makedirs(path, mode=mode)
            changed = True
        if os.stat(path).st_mode & 0o7777 != mode:
            os.chmod(path, mode)
            changed = True
    except OSError as exc:
        raise CertError("%s: %s" % (path, exc.strerror)) from None
    st = os.stat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        _chown(path, uid, gid)
        changed = True
    return changed


def write_file(path, data, mode, uid, gid):
    """Write ``data`` to ``path`` atomically (temp file in the same directory, then rename(2)) with ``mode`` and
    ``uid``:``gid`` set before the rename, so a key is never readable by others, not even for a moment.

    Not ``module.atomic_move``: that gives a new file the umask's mode after the move, and these helpers are also
    used outside Ansible."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".vmesh-", suffix=".tmp", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("ascii") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        _chown(tmp, uid, gid)
        os.rename(tmp, path)
    except OSError as exc:
        raise CertError("%s: %s" % (path, exc.strerror)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read(path):
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CertError("%s: %s" % (path, getattr(exc, "strerror", None) or exc)) from None


# --- the installed certificate ----------------------------------------------------------------------------------


@dataclass
class Installed:
    """The files in force: chain and bundle text, where the key is, the version directory."""

    chain: str | None
    bundle: str | None
    key_path: str | None
    version: str | None


def installed(path):
    """The files in force in ``path``: through ``..data`` when it exists, else top-level regular files."""
    base = os.path.join(path, DATA) if os.path.islink(os.path.join(path, DATA)) else path
    version = os.readlink(os.path.join(path, DATA)) if base != path else None
    key_path = os.path.join(base, KEY)
    return Installed(chain=_read(os.path.join(base, CHAIN)), bundle=_read(os.path.join(base, BUNDLE)),
                     key_path=key_path if os.path.exists(key_path) else None, version=version)


def key_matches(openssl, key_path, cert_pem):
    """Whether the private key in ``key_path`` belongs to the first certificate of ``cert_pem``."""
    try:
        return openssl.key_public_key(key_path) == openssl.cert_public_key(cert_pem)
    except CertError:
        return False


def state(path, openssl=None):
    """A summary of the certificate installed in ``path``, for the modules and a renewal agent:
    ``present``, ``serial`` (lower-case hex), ``not_before``, ``not_after`` (ISO 8601 UTC), ``identity`` (the
    SPIFFE URI SAN), ``uris`` (every URI SAN), ``issuer`` (RFC 2253 DN), ``authority_key_id`` (lower-case hex
    with colons), ``key_matches`` (key.pem belongs to the certificate), ``version`` (the ``..data`` target),
    ``bundle_fingerprints`` (SHA-256 of each trusted root) and ``error`` (a certificate that cannot be read)."""
    openssl = openssl or Openssl()
    current = installed(path)
    result = {"present": False, "serial": "", "not_before": "", "not_after": "", "identity": "", "uris": [],
              "issuer": "", "authority_key_id": "", "key_matches": False, "version": current.version or "",
              "bundle_fingerprints": fingerprints(current.bundle or ""), "error": ""}
    if not current.chain:
        return result
    try:
        info = openssl.info(current.chain, os.path.join(path, CHAIN))
    except CertError as exc:
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


def prepare_pending(path, identity, uid, gid, openssl=None):
    """Make ``pending/key.pem`` (unless an interrupted run left one: it is reused) and a new ``pending/csr.pem``
    for ``identity``; returns the CSR (PEM text)."""
    openssl = openssl or Openssl()
    parse_identity(identity)
    pending, key_path, csr_path = pending_paths(path)
    ensure_dir(path, DIR_MODE, dir_owner(), gid)
    ensure_dir(pending, PENDING_MODE, uid, gid)
    if not os.path.exists(key_path) or not _valid_key(openssl, key_path):
        write_file(key_path, openssl.new_key(key_path), KEY_MODE, uid, gid)
    else:  # reused: make sure of its mode and owner
        os.chmod(key_path, KEY_MODE)
        _chown(key_path, uid, gid)
    csr = openssl.new_csr(key_path, identity, csr_path)
    write_file(csr_path, csr, KEY_MODE, uid, gid)
    return csr


def _valid_key(openssl, key_path):
    try:
        openssl.key_public_key(key_path)
        return True
    except CertError:
        return False


# --- installing ---------------------------------------------------------------------------------------------------


@dataclass
class InstallPlan:
    """What :func:`plan_install` decided: the wanted files (``key_from`` is a path) and what differs."""

    chain: str | None
    bundle: str
    key_from: str | None
    changed_files: list
    before: dict
    after: dict
    info: CertInfo | None = None
    warnings: list = field(default_factory=list)

    @property
    def changed(self):
        return bool(self.changed_files)


def _summary(info, bundle):
    if info is None:
        return {"serial": "", "not_after": "", "identity": "", "bundle_fingerprints": fingerprints(bundle or "")}
    return {"serial": info.serial, "not_after": iso(info.not_after), "identity": info.identity,
            "bundle_fingerprints": fingerprints(bundle or "")}


def plan_install(path, chain, bundle, openssl=None, check_mode=False, uid=None, gid=None):
    """Decide what installing ``chain`` (or, when empty, keeping the current certificate) with ``bundle`` changes.

    With a chain that is not the one installed, the leaf's public key must match ``pending/key.pem`` and the
    chain must verify to ``bundle``. Without a chain, the current certificate and key stay and only the bundle
    may change; with neither a chain nor a certificate installed there is nothing to install, which is an error
    except in check mode (where the chain is empty because the signing step was skipped)."""
    openssl = openssl or Openssl()
    current = installed(path)
    cur_info = None
    if current.chain:
        try:
            cur_info = openssl.info(current.chain, os.path.join(path, CHAIN))
        except CertError:
            cur_info = None
    want_bundle = normalize_certs(bundle, "trust_bundle") if (bundle or "").strip() or not check_mode else ""
    _, pending_key, _ = pending_paths(path)
    warnings = []

    if (chain or "").strip():
        want_chain = normalize_certs(chain, "chain")
        info = openssl.info(want_chain, "chain")
        if want_chain == current.chain:
            key_from = current.key_path
        else:
            if not os.path.exists(pending_key):
                raise CertError("chain: no pending key at %s to install it with; run vmesh_workload_key first"
                                % pending_key)
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
            except CertError:
                warnings.append("the certificate in %s does not verify against the new trust bundle; peers that "
                                "have it reject this workload until it is reissued" % path)
    elif check_mode:
        want_chain, info, key_from = None, None, None
    else:
        raise CertError("no certificate is installed in %s and no chain was given" % path)

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
        if not changed and not (_layout_ok(path, current) and _attributes_ok(path, uid, gid)):
            changed = list(FILES)  # same content, wrong layout, mode or owner: write a new version
        if key_from is None:
            raise CertError("%s holds a certificate but no key.pem; run vmesh_workload_key with force=true"
                            % path)
    return InstallPlan(chain=want_chain, bundle=want_bundle, key_from=key_from, changed_files=changed,
                       before=_summary(cur_info, current.bundle), after=_summary(info, want_bundle), info=info,
                       warnings=warnings)


def _layout_ok(path, current):
    """Whether the files are in force through ``..data`` and the three top-level links."""
    if current.version is None:
        return False
    return all(os.path.islink(os.path.join(path, n)) and os.readlink(os.path.join(path, n)) == DATA + "/" + n
               for n in FILES)


def _attributes_ok(path, uid, gid):
    """Whether the directory and the files in force have their modes and, when ``uid``/``gid`` are known, their
    owners."""
    st = os.stat(path)
    if st.st_mode & 0o7777 != DIR_MODE or (gid is not None and (st.st_uid, st.st_gid) != (dir_owner(), gid)):
        return False
    for name, mode in ((CHAIN, CERT_MODE), (KEY, KEY_MODE), (BUNDLE, CERT_MODE)):
        try:
            st = os.stat(os.path.join(path, DATA, name))
        except OSError:
            return False
        if st.st_mode & 0o7777 != mode:
            return False
        if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
            return False
    return True


def install(path, plan, uid, gid):
    """Write a new version directory from ``plan``, swap ``..data`` to it with one rename, make the top-level
    links, then remove ``pending/`` (when its key was used) and the old versions."""
    ensure_dir(path, DIR_MODE, dir_owner(), gid)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    version = "..%s.%s" % (stamp, secrets.token_hex(3))
    vdir = os.path.join(path, version)
    try:
        os.mkdir(vdir, DIR_MODE)
        os.chmod(vdir, DIR_MODE)
    except OSError as exc:
        raise CertError("%s: %s" % (vdir, exc.strerror)) from None
    _chown(vdir, dir_owner(), gid)
    try:
        with open(plan.key_from, "rb") as handle:
            key_bytes = handle.read()
    except OSError as exc:
        raise CertError("%s: %s" % (plan.key_from, exc.strerror)) from None
    write_file(os.path.join(vdir, CHAIN), plan.chain, CERT_MODE, uid, gid)
    write_file(os.path.join(vdir, KEY), key_bytes, KEY_MODE, uid, gid)
    write_file(os.path.join(vdir, BUNDLE), plan.bundle, CERT_MODE, uid, gid)
    _fsync_dir(vdir)
    # The swap: readers see the old version or the new one, never a mix.
    _symlink_atomic(path, DATA, version)
    for name in FILES:
        link = os.path.join(path, name)
        if not (os.path.islink(link) and os.readlink(link) == DATA + "/" + name):
            _symlink_atomic(path, name, DATA + "/" + name)
    _fsync_dir(path)
    pending, pending_key, _ = pending_paths(path)
    if plan.key_from == pending_key:
        shutil.rmtree(pending, ignore_errors=True)
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if name != version and VERSION_RE.match(name) and os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
    return version


def _symlink_atomic(path, name, target):
    tmp = os.path.join(path, DATA_TMP if name == DATA else ".%s.tmp" % name)
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        if os.path.isdir(os.path.join(path, name)) and not os.path.islink(os.path.join(path, name)):
            raise CertError("%s is a directory, expected a link to %s" % (os.path.join(path, name), target))
        os.rename(tmp, os.path.join(path, name))
    except OSError as exc:
        raise CertError("%s: %s" % (os.path.join(path, name), exc.strerror)) from None


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
