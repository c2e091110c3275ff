# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""vmesh-ca-server: the online CA that renews the mesh's workload certificates, with no token that can expire.

Each workload VM holds a node key (made once on the VM, never leaving it). Ansible registers its public key here
together with the one identity the node may ask for, in ``<state_dir>/nodes/<node>.json``::

    {"identity": "spiffe://cluster.local/ns/default/sa/reviews", "public_key": "-----BEGIN PUBLIC KEY-----..."}

Deleting that file revokes the node at once (the ca_server role deletes those of hosts no longer in the inventory).
The renewal agent on the VM (``vmesh-renew``) asks::

    POST https://<server>:15012/v1/sign
    {"request": base64(payload), "signature": base64(openssl dgst -sha256 -sign node-key.pem payload)}
    payload = {"node": "<inventory host>", "csr": "<PEM>", "time": <unix seconds>, "nonce": "<random hex>"}

and gets ``{"chain": "<leaf + intermediate PEM>", "serial": ..., "not_after": ...}`` when every check passes: the
node is registered; the signature verifies with its registered key; ``time`` is within ``max_skew_seconds`` of
this host's clock; the nonce was not seen within ``nonce_ttl_seconds`` (replay); the node asked fewer than
``max_requests_per_node`` times within that window; the CSR is one the mesh's certificate policy (policy.py, which
the controller's signer applies too) lets a workload have -- a key of the rule, subjectAltName exactly
``URI:<the node's registered identity>``, in this server's trust domain -- and its self-signature verifies. The
certificate, policy.py's too, is made by ``openssl ca`` with the intermediate CA whose key was born on this host;
only the CSR's public key is taken from it, and it is recorded in
``issued.log`` before it is handed out. Every refusal is a 4xx with a one-line reason in ``{"error": ...}``, and a
journal line naming the client's address and the node the request claims. Other endpoints: ``GET /v1/ca`` (the
intermediate, so an agent sees when it changed) and ``GET /healthz``.

Under abuse it keeps serving: anyone can connect, so a connection gets ``timeout_seconds`` for its TLS handshake,
request line, headers and body together (a watchdog thread shuts down one that dribbles past it), then
ANSWER_SECONDS for the answer; at most ``max_connections_per_client`` connections are open from one address (an
IPv6 client's /64) and ``max_connections`` in all, others are closed at once; the request line and headers may
take ``max_header_bytes``, the body ``max_body_bytes`` (Content-Length in ASCII digits, given once); JSON is parsed
strictly (no duplicate keys, NaN, Infinity, or nesting beyond MAX_JSON_DEPTH).

The server's own TLS certificate (SPIFFE id ``spiffe://<trust domain>/ns/istio-system/sa/vmesh-ca`` plus the DNS
names and addresses in ``server_names``) is issued by the same intermediate at start and renewed by the server
itself when half of its life is gone; agents verify it against the mesh trust bundle.

State directory (0700 root)::

    intermediate-key.pem   0600  the signing key, born here (vmesh_node_key)
    intermediate-cert.pem  0644  issued by the mesh root where the root lives (vmesh_ca_sign_intermediate)
    root-cert.pem          0644  the mesh trust bundle (checks the intermediate and the TLS chain)
    tls-key.pem            0600  the TLS key, born here
    tls-cert.pem           0644  the TLS leaf + the intermediate
    nodes/<node>.json      0600  registered nodes
    nonces.json            0600  nonces seen recently (replay protection across restarts)
    issued.log             0600  every certificate issued, one JSON line each (append-only):
                                 {"client", "identity", "kind", "node", "not_after", "serial", "time"}

Usage: ``vmesh-ca-server [--config /etc/vmesh-ca/server.json] {serve,tls,intermediate-request}``. ``tls`` makes or
renews the TLS certificate and prints ``issued: <reason>`` or ``ok``; ``intermediate-request`` prints
``{"csr": <CSR of intermediate-key.pem>, "current": <intermediate-cert.pem or "">}`` for Ansible. Both are
read-only unless something is due.

Python 3 standard library and the ``openssl`` command only. The ca_server role installs this file with the
module_utils it imports (the vmesh.mesh.node_source lookup, ``with_imports``) under
``<install dir>/lib/ansible_collections/vmesh/mesh/plugins/module_utils/``, so the imports read as they do in the
collection, and runs :func:`main` through the launcher ``<install dir>/bin/vmesh-ca-server`` (``python3 -I``, that
lib directory first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import http.server
import ipaddress
import json
import math
import os
import re
import signal
import socket
import ssl
import stat
import sys
import tempfile
import threading
import time
import traceback

from ansible_collections.vmesh.mesh.plugins.module_utils import certs, host, policy
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError

NAME = "vmesh-ca-server"
INTERMEDIATE_KEY = "intermediate-key.pem"
INTERMEDIATE_CERT = "intermediate-cert.pem"
BUNDLE = "root-cert.pem"
TLS_KEY = "tls-key.pem"
TLS_CERT = "tls-cert.pem"
NODES = "nodes"
NONCES = "nonces.json"
ISSUED = "issued.log"

DEFAULTS = {
    "listen": "0.0.0.0",
    "port": 15012,
    "state_dir": "/var/lib/vmesh-ca",
    "trust_domain": "cluster.local",
    "server_identity": "",  # spiffe://<trust domain>/ns/istio-system/sa/vmesh-ca
    "server_names": [],  # DNS names and addresses agents use to reach this server
    "common_name": "",  # the intermediate's CN; "vmesh CA server (<trust domain>)"
    "lifetime_hours": 24,
    "tls_days": 30,
    "max_skew_seconds": 300,
    "nonce_ttl_seconds": 600,
    "max_requests_per_node": 20,
    "max_body_bytes": 65536,
    "max_header_bytes": 8192,
    "timeout_seconds": 10,  # for a whole request: TLS handshake, request line, headers and body
    "max_connections": 64,
    "max_connections_per_client": 4,
}
#: An inventory host name: also a file name under nodes/, so no '/' and no leading dot.
NODE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$")
NONCE_RE = re.compile(r"^[0-9a-f]{32,128}$")
DNS_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                    r"[A-Za-z0-9])?)*$")
#: The TLS certificate is renewed when less than this fraction of its life is left; checked this often.
TLS_RENEW_RATIO = 0.5
MAINTENANCE_SECONDS = 600
#: A warning in the journal once the intermediate has less than this fraction of its life left.
INTERMEDIATE_WARN_RATIO = 0.2
#: Seconds a connection has to be answered once its request is read (signing runs a few openssl commands).
ANSWER_SECONDS = 60
#: How often the watchdog looks for connections past their deadline.
WATCHDOG_TICK = 0.25
#: A client refused for being over a cap gets one journal line every this many seconds, not one per connection.
REFUSAL_LOG_SECONDS = 10
#: The request line (http.server's own limit is 64 KiB).
MAX_REQUEST_LINE = 4096
#: The body and the request in it are flat objects: one level; a little room, and no deep recursion in json.
MAX_JSON_DEPTH = 4
#: A request's time: unix seconds, no later than this (year 2286), so no number too large for a float.
MAX_TIME = 10 ** 10
MAX_REGISTRATION_BYTES = 16384

# --- the journal ---------------------------------------------------------------------------------------------------

_JOURNAL = bool(os.environ.get("JOURNAL_STREAM"))
_PRIORITY = {"error": 3, "warning": 4, "info": 6}
_LOG_LOCK = threading.Lock()


def log(level, message):
    """One line on stderr, written whole (connections log from many threads); under systemd with its syslog
    priority, so the journal shows errors as errors."""
    prefix = "<%d>" % _PRIORITY[level] if _JOURNAL else ""
    line = "%s%s: %s%s\n" % (prefix, NAME, "" if level == "info" else level + ": ", " ".join(str(message).split()))
    with _LOG_LOCK:
        sys.stderr.write(line)
        sys.stderr.flush()


class ConfigError(Exception):
    pass


class Refused(Exception):
    """A request that is not served: HTTP ``status`` and a one-line ``reason`` for the client and the journal."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- configuration -------------------------------------------------------------------------------------------------


def load_config(path):
    try:
        given = host.read_json_object(path)
    except host.FileError as exc:
        raise ConfigError(str(exc)) from None
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError("%s: unknown settings %s" % (path, ", ".join(unknown)))
    cfg = dict(DEFAULTS, **given)
    for name in ("port", "tls_days", "max_skew_seconds", "nonce_ttl_seconds",
                 "max_requests_per_node", "max_body_bytes", "max_header_bytes", "timeout_seconds",
                 "max_connections", "max_connections_per_client"):
        if not isinstance(cfg[name], int) or isinstance(cfg[name], bool) or cfg[name] <= 0:
            raise ConfigError("%s: %s must be a positive integer, got %r" % (path, name, cfg[name]))
    if cfg["nonce_ttl_seconds"] < 2 * cfg["max_skew_seconds"]:
        raise ConfigError("%s: nonce_ttl_seconds must be at least twice max_skew_seconds, or a request could be "
                          "replayed once its nonce is forgotten" % path)
    try:
        policy.check_trust_domain(cfg["trust_domain"])
        policy.check_lifetime(cfg["lifetime_hours"])
    except HostError as exc:
        raise ConfigError("%s: %s" % (path, exc)) from None
    cfg["server_identity"] = cfg["server_identity"] or "spiffe://%s/ns/istio-system/sa/vmesh-ca" % cfg["trust_domain"]
    cfg["common_name"] = cfg["common_name"] or "vmesh CA server (%s)" % cfg["trust_domain"]
    try:
        policy.identity_in(cfg["server_identity"], cfg["trust_domain"])
    except HostError as exc:
        raise ConfigError("%s: server_identity: %s" % (path, exc)) from None
    if not re.match(r"^[A-Za-z0-9 ._()-]{1,64}$", cfg["common_name"]):
        raise ConfigError("%s: common_name %r: letters, digits, spaces and ._()- only" % (path, cfg["common_name"]))
    if not isinstance(cfg["server_names"], list) or not cfg["server_names"]:
        raise ConfigError("%s: server_names must list the DNS names or addresses agents use to reach this server"
                          % path)
    for name in cfg["server_names"]:
        if not _ip(name) and not DNS_RE.match(str(name)):
            raise ConfigError("%s: server_names: %r is neither an IP address nor a DNS name" % (path, name))
    return cfg


def _ip(name):
    try:
        return ipaddress.ip_address(str(name))
    except ValueError:
        return None


# --- the CA --------------------------------------------------------------------------------------------------------


def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def _asn1_time(moment):
    # UTCTime, what `openssl ca -startdate/-enddate` reads (OpenSSL 1.1.1 and 3.x); good until 2049.
    return moment.astimezone(datetime.timezone.utc).strftime("%y%m%d%H%M%SZ")


class CA:
    """The intermediate on this host and what it signs, all through the ``openssl`` command."""

    def __init__(self, cfg, openssl=None):
        self.cfg = cfg
        self.openssl = openssl or certs.Openssl()
        self.dir = cfg["state_dir"]
        self.issued = IssuedLog(self.path(ISSUED))

    def path(self, name):
        return os.path.join(self.dir, name)

    def _read(self, name, missing_hint):
        data = certs.read_file(self.path(name))  # O_NOFOLLOW, a regular file
        if data is None:
            raise certs.CertError("%s is missing: %s" % (self.path(name), missing_hint))
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            raise certs.CertError("%s: not ASCII text (PEM expected)" % self.path(name)) from None

    def check_state_dir(self):
        """Raise unless the state directory and the directories above it are root's alone: the keys are handed to
        openssl by their paths, and nodes/ is read on every request."""
        certs.check_parents(self.path(NODES))
        for directory, required in ((self.dir, True), (self.path(NODES), False)):
            st = os.lstat(directory) if os.path.lexists(directory) else None
            if (st is not None or required) and not certs.is_ours(st):
                raise certs.CertError("%s must be a directory of root's that no one else can write (the ca_server "
                                      "role makes it 0700)" % directory)

    def intermediate(self):
        """(PEM, CertInfo) of the intermediate in force."""
        pem = certs.normalize_certs(self._read(INTERMEDIATE_CERT, "run the ca_server role (Ansible) to have it "
                                               "signed by the mesh root"), self.path(INTERMEDIATE_CERT))
        return pem, self.openssl.info(pem, self.path(INTERMEDIATE_CERT))

    def bundle(self):
        return certs.normalize_certs(self._read(BUNDLE, "run the ca_server role (Ansible)"), self.path(BUNDLE))

    def check(self):
        """Raise unless the state directory is root's alone, the intermediate's key is here and matches it, and it
        verifies to the trust bundle."""
        self.check_state_dir()
        pem, info = self.intermediate()
        certs.check_private_file(self.path(INTERMEDIATE_KEY), "the intermediate's key")
        if not certs.key_matches(self.openssl, self.path(INTERMEDIATE_KEY), pem):
            raise certs.CertError("%s does not belong to %s" % (self.path(INTERMEDIATE_KEY),
                                                                self.path(INTERMEDIATE_CERT)))
        self.openssl.verify(pem, self.bundle(), self.path(INTERMEDIATE_CERT))
        return info

    def request_for_intermediate(self):
        """What Ansible needs to have the intermediate (re)signed: a CSR of the key here and the current cert."""
        certs.check_private_file(self.path(INTERMEDIATE_KEY), "the intermediate's key")
        with tempfile.TemporaryDirectory(prefix="vmesh-ca-req-") as tmp:
            # A config of our own, so the host's openssl.cnf cannot add extensions or prompt.
            config = os.path.join(tmp, "req.cnf")
            with open(config, "w", encoding="ascii") as handle:
                handle.write("[req]\ndistinguished_name = dn\n[dn]\n")
            csr = self.openssl.command(
                ["req", "-new", "-config", config, "-key", self.path(INTERMEDIATE_KEY), "-subj",
                 "/O=%s/CN=%s" % (self.cfg["trust_domain"], self.cfg["common_name"]), "-sha256"],
                None, "the intermediate's CSR")
        try:
            current = self._read(INTERMEDIATE_CERT, "")
        except HostError:
            current = ""
        return {"csr": csr, "current": current}

    def sign(self, csr_pem, identity, profile, names, lifetime, what):
        """A certificate for the public key of ``csr_pem`` (checked by the caller) from the intermediate, by
        policy.py: subject and extensions of ``profile`` for ``identity`` and the subjectAltName ``names``, valid
        from policy.BACKDATE ago for ``lifetime`` (a timedelta; never beyond the intermediate). Returns (leaf PEM,
        chain PEM)."""
        inter_pem, inter = self.intermediate()
        try:
            not_before, not_after = policy.validity(_utc_now(), lifetime, inter.not_after,
                                                    "the CA server's intermediate")
            extensions = policy.openssl_extensions(profile, names)
            subject = "".join("/%s=%s" % pair for pair in policy.subject(identity))
        except HostError as exc:
            raise Refused(503, "%s; run the ca_server role (Ansible) to renew it" % exc) from None
        with tempfile.TemporaryDirectory(prefix="vmesh-ca-sign-") as tmp:
            open(os.path.join(tmp, "index.txt"), "w", encoding="ascii").close()  # openssl ca's database
            with open(os.path.join(tmp, "csr.pem"), "w", encoding="ascii") as handle:
                handle.write(csr_pem)
            with open(os.path.join(tmp, "ca.cnf"), "w", encoding="ascii") as handle:
                # Only the temporary directory's path and checked values go into the config (openssl expands $).
                handle.write("[ca]\ndefault_ca = vmesh\n[vmesh]\ndatabase = %s/index.txt\nnew_certs_dir = %s\n"
                             "default_md = sha256\npolicy = policy_any\nunique_subject = no\nemail_in_dn = no\n"
                             "copy_extensions = none\nrand_serial = yes\n[policy_any]\norganizationName = optional\n"
                             "[ext]\n%s\n" % (tmp, tmp, "\n".join(extensions)))
            self.openssl.command(
                ["ca", "-batch", "-config", os.path.join(tmp, "ca.cnf"), "-extensions", "ext", "-notext",
                 "-cert", self.path(INTERMEDIATE_CERT), "-keyfile", self.path(INTERMEDIATE_KEY),
                 "-in", os.path.join(tmp, "csr.pem"), "-out", os.path.join(tmp, "cert.pem"), "-subj", subject,
                 "-startdate", _asn1_time(not_before), "-enddate", _asn1_time(not_after)], None, what)
            with open(os.path.join(tmp, "cert.pem"), encoding="ascii") as handle:
                leaf = certs.normalize_certs(handle.read(), what)
        return leaf, leaf + inter_pem

    def sign_workload(self, csr_pem, identity):
        return self.sign(csr_pem, identity, policy.WORKLOAD, ["URI:%s" % identity],
                         datetime.timedelta(hours=self.cfg["lifetime_hours"]), "signing for %s" % identity)

    # --- the server's own TLS certificate ---

    def tls_names(self):
        return {("URI", self.cfg["server_identity"])} | {
            ("IP", str(_ip(n))) if _ip(n) else ("DNS", str(n).lower()) for n in self.cfg["server_names"]}

    def _names_of(self, pem):
        out = self.openssl.command(["x509", "-noout", "-ext", "subjectAltName"], pem, "tls-cert.pem")
        names = set()
        for line in out.splitlines()[1:]:
            for item in line.split(","):
                kind, _, value = item.strip().partition(":")
                if kind == "IP Address" and _ip(value):
                    names.add(("IP", str(_ip(value))))
                elif kind in ("URI", "DNS"):
                    names.add((kind, value.lower() if kind == "DNS" else value))
        return names

    def tls_reasons(self):
        """Why the TLS certificate must be (re)issued; empty when it can stay."""
        try:
            chain = self._read(TLS_CERT, "")
        except HostError:
            return ["missing"]
        try:
            info = self.openssl.info(chain, self.path(TLS_CERT))
        except HostError:
            return ["unreadable"]
        reasons = []
        if not certs.key_matches(self.openssl, self.path(TLS_KEY), chain):
            reasons.append("key")
        inter_pem, _ = self.intermediate()
        if certs.fingerprints(chain)[1:] != certs.fingerprints(inter_pem):
            reasons.append("issuer")
        if self._names_of(chain) != self.tls_names():
            reasons.append("names")
        left, life = info.not_after - _utc_now(), info.not_after - info.not_before
        if left.total_seconds() < TLS_RENEW_RATIO * life.total_seconds():
            reasons.append("expiring")
        return reasons

    def ensure_tls(self):
        """Make the TLS key when missing and (re)issue the TLS certificate when due; returns the reasons."""
        uid, gid = os.geteuid(), os.getegid()
        if not os.path.lexists(self.path(TLS_KEY)):
            certs.write_file(self.path(TLS_KEY), self.openssl.new_key(self.path(TLS_KEY)), certs.KEY_MODE, uid, gid)
        certs.check_private_file(self.path(TLS_KEY), "the TLS key")  # handed to openssl and ssl by its path
        reasons = self.tls_reasons()
        if not reasons:
            return []
        csr = self.openssl.new_csr(self.path(TLS_KEY), self.cfg["server_identity"], "the TLS certificate's CSR")
        names = ["URI:%s" % self.cfg["server_identity"]] + sorted(
            ("IP:%s" if kind == "IP" else "DNS:%s") % value for kind, value in self.tls_names() if kind != "URI")
        _, chain = self.sign(csr, self.cfg["server_identity"], policy.SERVER_TLS, names,  # checked by load_config
                             datetime.timedelta(days=self.cfg["tls_days"]), "the TLS certificate")
        self.openssl.verify(chain, self.bundle(), "the TLS certificate")
        info = self.openssl.info(chain, "the TLS certificate")
        self.issued.record(time=certs.iso(_utc_now()), kind="server-tls", serial=info.serial,
                           identity=self.cfg["server_identity"], node="-", not_after=certs.iso(info.not_after),
                           client="-")
        certs.write_file(self.path(TLS_CERT), chain, certs.CERT_MODE, uid, gid)
        return reasons

    def tls_context(self):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.path(TLS_CERT), self.path(TLS_KEY))
        return context


# --- checking a request --------------------------------------------------------------------------------------------


class Nonces:
    """Nonces seen within ``ttl`` seconds, per node, kept in a file so a restart does not open a replay window."""

    def __init__(self, path, ttl, per_node):
        self.path, self.ttl, self.per_node = path, ttl, per_node
        self.lock = threading.Lock()
        self.seen = {}
        try:
            data = certs.read_file(path)
            loaded = json.loads(data) if data is not None else {}
            self.seen = {str(k): float(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
        except (HostError, ValueError, TypeError, AttributeError) as exc:
            log("warning", "%s: unreadable (%s); starting with no nonces, requests older than %d s are refused "
                           "anyway" % (path, exc, ttl))

    def claim(self, node, nonce, now):
        """Record ``nonce`` for ``node``; refuse one seen before, or a node over its request budget."""
        with self.lock:
            self.seen = {k: t for k, t in self.seen.items() if now - t < self.ttl}
            key = "%s %s" % (node, nonce)
            if key in self.seen:
                raise Refused(403, "nonce %s… was already used by node %s (a replayed request)" % (nonce[:12], node))
            recent = sum(1 for k in self.seen if k.split(" ", 1)[0] == node)
            if recent >= self.per_node:
                raise Refused(429, "node %s made %d requests in the last %d s (at most %d); try again later"
                                   % (node, recent, self.ttl, self.per_node))
            self.seen[key] = now
            certs.write_file(self.path, json.dumps(self.seen, sort_keys=True), certs.KEY_MODE, os.geteuid(),
                             os.getegid())


class IssuedLog:
    """Every certificate this server issues, one JSON line each in ``issued.log`` (0600): ``time``, ``serial``,
    ``identity``, ``node``, ``not_after``, ``client``, ``kind``. Append-only: each line is one write(2) to a
    descriptor opened O_APPEND|O_NOFOLLOW (a link in its place is refused; a file moved away by log rotation is
    started afresh), synced before the certificate is handed out. A line that cannot be written fails the
    issuance: no certificate leaves unrecorded."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def record(self, **entry):
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        with self.lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             certs.KEY_MODE)
            except OSError as exc:
                raise certs.CertError("%s: cannot record the certificate: %s" % (self.path, exc.strerror)) from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise certs.CertError("%s is not a regular file; no certificate is issued" % self.path)
                if stat.S_IMODE(st.st_mode) != certs.KEY_MODE:
                    os.fchmod(fd, certs.KEY_MODE)
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            except OSError as exc:
                raise certs.CertError("%s: cannot record the certificate: %s" % (self.path, exc.strerror)) from None
            finally:
                os.close(fd)


def _b64(value, what):
    if not isinstance(value, str):
        raise Refused(400, "%s must be a base64 string" % what)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, "%s is not valid base64" % what) from None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _nesting(text):
    """How deep ``text``'s arrays and objects nest, counted outside strings without parsing (json's parser
    recurses once per level, so a deep document is refused before it)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError("duplicate key %s" % ", ".join(map(repr, duplicates)))
    return dict(pairs)


def _no_constant(name):
    raise ValueError("%s is not a number JSON allows" % name)


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("%s is too large a number" % text)
    return value


def strict_json(data, what):
    """``data`` (UTF-8 bytes) as JSON, parsed strictly: at most MAX_JSON_DEPTH levels, no duplicate keys, no NaN,
    Infinity or number beyond a float; raises :class:`Refused` (400) otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "%s is not UTF-8" % what) from None
    depth = _nesting(text)
    if depth > MAX_JSON_DEPTH:
        raise Refused(400, "%s nests %d levels deep (at most %d)" % (what, depth, MAX_JSON_DEPTH))
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                          parse_float=_finite_float)
    except ValueError as exc:  # json.JSONDecodeError and the hooks' refusals; int() past 4300 digits too
        raise Refused(400, "%s is not JSON: %s" % (what, exc)) from None


_CLAIMED_NODE = re.compile(rb'"node"\s*:\s*"([A-Za-z0-9_][A-Za-z0-9._-]{0,252})"')


def claimed_node(payload):
    """The node a request says it comes from, for the journal only, found without parsing (a request refused as
    unparsable still names who it claims to be); "-" when there is none."""
    match = _CLAIMED_NODE.search(payload or b"")
    return match.group(1).decode("ascii") if match else "-"


class Signer:
    """The checks of ``POST /v1/sign``, in order, then the signing and its record."""

    def __init__(self, cfg, ca):
        self.cfg, self.ca = cfg, ca
        self.nonces = Nonces(ca.path(NONCES), cfg["nonce_ttl_seconds"], cfg["max_requests_per_node"])

    def registration(self, node):
        path = os.path.join(self.ca.path(NODES), node + ".json")
        try:
            raw = certs.read_file(path, MAX_REGISTRATION_BYTES)  # O_NOFOLLOW: a regular file or nothing
            if raw is None:
                return None
            data = json.loads(raw)
        except (HostError, ValueError) as exc:
            log("error", "%s: unreadable: %s" % (path, exc))
            return None
        if not isinstance(data, dict) or not isinstance(data.get("public_key"), str):
            log("error", "%s: no public_key" % path)
            return None
        try:
            policy.identity_in(data.get("identity"), self.cfg["trust_domain"])
        except HostError as exc:
            log("error", "%s: %s" % (path, exc))
            return None
        return data

    def handle(self, body, client="-", claimed=None, now=None):
        """(node, identity, response) for the raw body of a request from ``client``; raises :class:`Refused`.
        ``claimed["node"]`` is set to the node the request names as soon as it is known, for the journal."""
        now = time.time() if now is None else now
        claimed = {} if claimed is None else claimed
        outer = strict_json(body, "the body")
        if not isinstance(outer, dict) or sorted(outer) != ["request", "signature"]:
            raise Refused(400, 'the body must be {"request": base64, "signature": base64}')
        payload = _b64(outer["request"], "request")
        signature = _b64(outer["signature"], "signature")
        claimed["node"] = claimed_node(payload)
        request = strict_json(payload, "the request")
        if not isinstance(request, dict) or sorted(request) != ["csr", "node", "nonce", "time"]:
            raise Refused(400, 'the request must be {"node", "csr", "time", "nonce"} and nothing else')
        node, csr, when, nonce = request["node"], request["csr"], request["time"], request["nonce"]
        if not isinstance(node, str) or not NODE_RE.match(node):
            raise Refused(400, "node: not an inventory host name")
        claimed["node"] = node
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not 0 <= when <= MAX_TIME:
            raise Refused(400, "time: must be a number of unix seconds")
        if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
            raise Refused(400, "nonce: must be 32 to 128 lower-case hex digits")
        if not isinstance(csr, str):
            raise Refused(400, "csr: must be a PEM string")

        registered = self.registration(node)
        if registered is None:
            raise Refused(403, "node %s is not registered on this CA server (run the identity role for it)" % node)
        if not self.ca.openssl.signature_valid(registered["public_key"], payload, signature):
            raise Refused(403, "the signature does not verify with the key registered for node %s" % node)
        skew = when - now
        if abs(skew) > self.cfg["max_skew_seconds"]:
            raise Refused(403, "the request's time is %+d s off this server's clock (at most %d allowed); check the "
                               "clock (NTP) of node %s" % (skew, self.cfg["max_skew_seconds"], node))
        self.nonces.claim(node, nonce, now)
        identity = registered["identity"]
        csr = self.check_csr(csr, identity)
        leaf, chain = self.ca.sign_workload(csr, identity)
        info = self.ca.openssl.info(leaf, "the new certificate")
        self.ca.issued.record(time=certs.iso(_utc_now()), kind="workload", serial=info.serial, identity=identity,
                              node=node, not_after=certs.iso(info.not_after), client=client)
        return node, identity, {"chain": chain, "serial": info.serial, "not_after": certs.iso(info.not_after)}

    def check_csr(self, csr, identity):
        """The CSR in canonical PEM, when policy.py lets a workload of ``identity`` have it (in this server's trust
        domain) and its self-signature verifies; raises :class:`Refused` otherwise (400: unreadable, 403: asks for
        what it may not have)."""
        if not isinstance(csr, str):
            raise Refused(400, "csr: must be a PEM string")
        try:
            pem = policy.check_workload_csr(csr, identity, self.cfg["trust_domain"]).pem
        except policy.PolicyError as exc:
            raise Refused(400 if exc.malformed else 403, str(exc)) from None
        with tempfile.TemporaryDirectory(prefix="vmesh-ca-csr-") as tmp:
            path = os.path.join(tmp, "csr.pem")
            with open(path, "w", encoding="ascii") as handle:
                handle.write(pem)
            rc, out, err = self.ca.openssl.run(["req", "-in", path, "-noout", "-verify"])
        # OpenSSL 3.0 exits 0 even when the self-signature fails: read what it says.
        said = (out or "") + (err or "")
        if rc != 0 or "verify OK" not in said or "verify failure" in said:
            raise Refused(400, "csr: its self-signature does not verify (or it is not a certificate request)")
        return pem


# --- connections: caps and deadlines -------------------------------------------------------------------------------


def client_of(address):
    """What a connection counts against: its IPv4 address, or the /64 of an IPv6 one (one host's usual share)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ipaddress.ip_network("%s/64" % ip, strict=False)) if ip.version == 6 else str(ip)


class Admission:
    """Connections open at once: at most ``per_client`` from one client and ``total`` in all. A connection over
    either cap is closed at once, before its TLS handshake; refusals are logged at most once per client every
    REFUSAL_LOG_SECONDS, with how many there were."""

    def __init__(self, total, per_client):
        self.total, self.per_client = total, per_client
        self.lock = threading.Lock()
        self.open = {}  # client -> connections open
        self.count = 0
        self.refused = {}  # client -> (refusals not logged yet, monotonic time of the last line)

    def admit(self, client):
        with self.lock:
            if self.open.get(client, 0) >= self.per_client:
                why = "%d connections from this client are open already" % self.per_client
            elif self.count >= self.total:
                why = "%d connections are open already (in all)" % self.total
            else:
                self.open[client] = self.open.get(client, 0) + 1
                self.count += 1
                return True
            self._log_refusal(client, why)
            return False

    def release(self, client):
        with self.lock:
            self.count -= 1
            left = self.open.pop(client) - 1
            if left:
                self.open[client] = left

    def _log_refusal(self, client, why):
        now = time.monotonic()
        if len(self.refused) > 4096:  # forget the quiet ones
            self.refused = {c: v for c, v in self.refused.items() if now - v[1] < REFUSAL_LOG_SECONDS}
        unlogged, last = self.refused.get(client, (0, None))
        if last is not None and now - last < REFUSAL_LOG_SECONDS:
            self.refused[client] = (unlogged + 1, last)
            return
        log("warning", "%s: connection refused: %s%s" % (
            client, why, " (%d more refused since the last line)" % unlogged if unlogged else ""))
        self.refused[client] = (0, now)


def per_read_timeout(cfg):
    """Each read's own timeout: a backstop only, past the deadline, which the watchdog enforces."""
    return 2 * cfg["timeout_seconds"]


class Deadline:
    """The time a connection has left. ``phase`` names what it is waiting for, for the journal."""

    def __init__(self, watchdog, sock, seconds, client):
        self.watchdog, self.client = watchdog, client
        self.sock = sock.dup()  # shutdown(2) through it reaches the connection, whoever holds the original
        self.at = time.monotonic() + seconds
        self.phase = "TLS handshake"
        self.expired = False

    def extend(self, seconds, phase):
        """A new deadline, ``seconds`` from now, for ``phase`` (the answer, once the request is read)."""
        with self.watchdog.lock:
            self.at, self.phase = time.monotonic() + seconds, phase

    def close(self):
        with self.watchdog.lock:
            self.watchdog.watched.discard(self)
        self.sock.close()


class Watchdog:
    """Ends the connections that outlive their deadline: one thread, waking every WATCHDOG_TICK seconds, calls
    shutdown(2) on them, which wakes the thread blocked on the connection (in the TLS handshake, in a header line,
    in the body) however slowly the client dribbles bytes: a per-read timeout alone would not."""

    def __init__(self):
        self.lock = threading.Lock()
        self.watched = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def watch(self, sock, seconds, client):
        deadline = Deadline(self, sock, seconds, client)
        with self.lock:
            self.watched.add(deadline)
        return deadline

    def _run(self):
        while not self.stop.wait(WATCHDOG_TICK):
            now = time.monotonic()
            with self.lock:
                expired = [d for d in self.watched if d.at <= now]
                for deadline in expired:
                    deadline.expired = True
                    self.watched.discard(deadline)
            for deadline in expired:
                log("warning", "%s: connection closed: its deadline passed during the %s"
                               % (deadline.client, deadline.phase))
                try:
                    deadline.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the other side


class HeadersTooLarge(Exception):
    pass


class HeaderBudget:
    """The request's reader, with a budget for the request line and headers (``readline``); the body is read with
    ``read1``, bounded by the Content-Length the handler checked."""

    def __init__(self, reader, budget):
        self.reader, self.left, self.budget = reader, budget, budget

    def readline(self, limit=-1):
        if self.left <= 0:
            raise HeadersTooLarge("the request line and headers exceed %d bytes" % self.budget)
        line = self.reader.readline(self.left if limit < 0 else min(limit, self.left))
        self.left -= len(line)
        if self.left <= 0 and not line.endswith(b"\n"):
            raise HeadersTooLarge("the request line and headers exceed %d bytes" % self.budget)
        return line

    def read1(self, size=-1):
        return self.reader.read1(size)

    def close(self):
        self.reader.close()


# --- HTTP ----------------------------------------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0), under the connection's :class:`Deadline`: the TLS handshake, the
    request line, the headers and the body must all arrive within ``timeout_seconds``; the answer then has
    ANSWER_SECONDS. Every refusal is a JSON ``{"error": ...}`` and one journal line naming the client and the node
    the request claims to come from."""

    server_version = NAME
    sys_version = ""
    protocol_version = "HTTP/1.0"

    def __init__(self, request, client_address, server, deadline):
        self.deadline = deadline
        super().__init__(request, client_address, server)

    def setup(self):
        cfg = self.server.app.cfg
        self.timeout = per_read_timeout(cfg)
        super().setup()
        self.rfile = HeaderBudget(self.rfile, cfg["max_header_bytes"])
        self.deadline.phase = "request"  # the TLS handshake is done; same deadline

    def log_message(self, format, *args):  # noqa: A002 (http.server's name); our own lines are in _refuse and do_*
        pass

    def handle_one_request(self):
        """http.server's, with the header budget, one request per connection, and no traceback for a client that
        went away or ran out of time."""
        self.close_connection = True
        self.raw_requestline, self.requestline, self.request_version, self.command = b"", "", "HTTP/1.0", ""
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                return  # closed before asking anything
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.send_error(414, "the request line is longer than %d bytes" % MAX_REQUEST_LINE)
                return
            if not self.parse_request():
                return  # answered by send_error
            handler = {"GET": self.do_GET, "POST": self.do_POST}.get(self.command)
            if handler is None:
                self.send_error(405, "only GET and POST")
                return
            handler()
            self.wfile.flush()
        except HeadersTooLarge as exc:
            self.send_error(431, str(exc))
        except OSError as exc:  # timeouts included; the watchdog logged its own closings
            if not self.deadline.expired:
                log("warning", "%s: connection ended during the %s: %s"
                               % (self.client_address[0], self.deadline.phase, exc or type(exc).__name__))

    def send_error(self, code, message=None, explain=None):
        """http.server's errors (a malformed request line or header) as our refusals."""
        self._refuse(Refused(code, message or http.HTTPStatus(code).phrase))

    def _refuse(self, exc, node="-"):
        if self.deadline.expired:
            return  # the watchdog closed the connection and said so
        log("warning", "%s node=%s refused %d: %s" % (self.client_address[0], node, exc.status, exc.reason))
        self._reply(exc.status, {"error": exc.reason})

    def _reply(self, status, body):
        data = (json.dumps(body, sort_keys=True) + "\n").encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)
        except OSError as exc:
            if not self.deadline.expired:
                log("warning", "%s: the answer could not be sent: %s" % (self.client_address[0], exc))

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.deadline.extend(ANSWER_SECONDS, "answer")
        app = self.server.app
        if self.path == "/healthz":
            self._reply(200, {"status": "ok"})
        elif self.path == "/v1/ca":
            try:
                pem, info = app.ca.intermediate()
            except HostError as exc:
                log("error", exc)
                self._reply(503, {"error": "the CA server has no intermediate; see its journal"})
                return
            self._reply(200, {"chain": pem, "not_after": certs.iso(info.not_after)})
        else:
            self._refuse(Refused(404, "no such path; POST /v1/sign, GET /v1/ca or GET /healthz"))

    def do_POST(self):  # noqa: N802
        app = self.server.app
        peer = self.client_address[0]
        claimed = {"node": "-"}
        try:
            if self.path != "/v1/sign":
                raise Refused(404, "no such path; POST /v1/sign")
            body = self._body(app.cfg)
            self.deadline.extend(ANSWER_SECONDS, "answer")
            node, identity, answer = app.signer.handle(body, peer, claimed)
        except Refused as exc:
            self._refuse(exc, claimed["node"])
            return
        except HostError as exc:
            log("error", "%s node=%s: signing failed: %s" % (peer, claimed["node"], exc))
            self._reply(500, {"error": "signing failed on the CA server; see its journal"})
            return
        except Exception:  # a bug must not kill the thread silently
            log("error", "%s node=%s: %s" % (peer, claimed["node"], traceback.format_exc().replace("\n", " | ")))
            self._reply(500, {"error": "internal error on the CA server; see its journal"})
            return
        log("info", "%s node=%s signed serial=%s identity=%s not_after=%s"
                    % (peer, node, answer["serial"], identity, answer["not_after"]))
        self._reply(200, answer)

    def _body(self, cfg):
        """The body: Content-Length given once, in ASCII digits (int() would take '²' or Arabic-Indic digits),
        at most ``max_body_bytes``, all of it within the connection's deadline."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise Refused(400, "Transfer-Encoding is not accepted; send the body with a Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise Refused(411, "Content-Length is required")
        if len(lengths) > 1:
            raise Refused(400, "Content-Length is given %d times" % len(lengths))
        if not re.fullmatch(r"[0-9]{1,12}", lengths[0].strip(" \t"), re.ASCII):
            raise Refused(400, "Content-Length is not a number of ASCII digits")
        left = int(lengths[0].strip(" \t"))
        if left > cfg["max_body_bytes"]:
            raise Refused(413, "the body is larger than %d bytes" % cfg["max_body_bytes"])
        chunks = []
        while left > 0:
            try:
                chunk = self.rfile.read1(min(left, 16384))
            except OSError:  # a read timeout, or the watchdog's shutdown
                raise Refused(408, "the body did not arrive within %d s" % cfg["timeout_seconds"]) from None
            if not chunk:
                raise Refused(400, "the body is shorter than Content-Length")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


class Server(http.server.ThreadingHTTPServer):
    """One thread per connection, admitted under :class:`Admission`'s caps and watched by the :class:`Watchdog`;
    TLS is set up in that thread with the context in force (swapped when the TLS certificate is renewed)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, app):
        self.app = app
        self.admission = Admission(app.cfg["max_connections"], app.cfg["max_connections_per_client"])
        self.watchdog = Watchdog()
        if ":" in app.cfg["listen"]:
            self.address_family = socket.AF_INET6
        super().__init__((app.cfg["listen"], app.cfg["port"]), Handler)
        self.watchdog.thread.start()

    def process_request(self, request, client_address):
        client = client_of(client_address[0])
        if not self.admission.admit(client):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.admission.release(client)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.admission.release(client_of(client_address[0]))

    def finish_request(self, request, client_address):
        timeout = self.app.cfg["timeout_seconds"]
        deadline = self.watchdog.watch(request, timeout, client_address[0])
        try:
            request.settimeout(per_read_timeout(self.app.cfg))
            try:
                tls = self.app.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                if not deadline.expired:
                    log("warning", "%s: TLS handshake failed: %s" % (client_address[0], exc))
                return
            try:
                Handler(tls, client_address, self, deadline)
            finally:
                tls.close()
        finally:
            deadline.close()

    def handle_error(self, request, client_address):
        """A bug: one journal line, not socketserver's traceback on stderr."""
        log("error", "%s: %s" % (client_address[0], traceback.format_exc().replace("\n", " | ")))

    def server_close(self):
        self.watchdog.stop.set()
        super().server_close()


class App:
    def __init__(self, cfg):
        self.cfg = cfg
        self.ca = CA(cfg)
        self.signer = Signer(cfg, self.ca)
        self.context = None

    def maintain(self):
        """Renew the TLS certificate when due (then new connections get the new one); warn about the
        intermediate's end."""
        reasons = self.ca.ensure_tls()
        if reasons:
            self.context = self.ca.tls_context()
            log("info", "TLS certificate issued (%s)" % ", ".join(reasons))
        _, inter = self.ca.intermediate()
        left = (inter.not_after - _utc_now()).total_seconds()
        if left < INTERMEDIATE_WARN_RATIO * (inter.not_after - inter.not_before).total_seconds():
            log("warning", "the intermediate expires %s; run the ca_server role (Ansible) to renew it"
                           % certs.iso(inter.not_after))


def serve(cfg):
    app = App(cfg)
    info = app.ca.check()
    app.maintain()
    if app.context is None:
        app.context = app.ca.tls_context()
    server = Server(app)
    stop = threading.Event()

    def maintenance():
        while not stop.wait(MAINTENANCE_SECONDS):
            try:
                app.maintain()
            except (HostError, Refused, OSError, ssl.SSLError) as exc:
                log("error", "maintenance: %s" % exc)

    threading.Thread(target=maintenance, name="maintenance", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    log("info", "listening on %s:%d; intermediate %s valid until %s; leaves live %d h; nodes in %s"
                % (host, port, info.subject, certs.iso(info.not_after), cfg["lifetime_hours"],
                   app.ca.path(NODES)))
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        stop.set()
        server.server_close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog=NAME, description="The vmesh online CA (see the module docstring).")
    parser.add_argument("--config", default="/etc/vmesh-ca/server.json")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "tls", "intermediate-request"])
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.command == "intermediate-request":
            print(json.dumps(CA(cfg).request_for_intermediate(), sort_keys=True))
        elif args.command == "tls":
            ca = CA(cfg)
            ca.check()
            reasons = ca.ensure_tls()
            print("issued: %s" % ", ".join(reasons) if reasons else "ok")
        else:
            serve(cfg)
    except ConfigError as exc:
        log("error", exc)
        return 2
    except (HostError, Refused) as exc:
        log("error", exc)
        return 1
    except OSError as exc:
        log("error", "%s" % exc)
        return 1
    return 0

