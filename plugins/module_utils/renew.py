# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""vmesh-renew: renew this VM's workload certificate from the vmesh CA server before it expires.

Run by vmesh-renew.service (Type=oneshot) from vmesh-renew.timer every 15 minutes. Each run:

1. reads the certificate in force in ``cert_dir`` (``certs.state``) and decides with the rule of the Ansible
   modules (``certs.renewal_reasons``): renew when it is missing or unreadable, its key does not match,
   its identity is not ``identity``, less than ``renew_ratio`` of its lifetime is left, or (asked from the server,
   ``GET /v1/ca``) it was not issued by the server's current intermediate;
2. when due, makes a new key and CSR in ``cert_dir/pending/`` (``certs.prepare_pending``; the key is born
   here and never leaves), signs the request with the node key and sends it to ``POST /v1/sign``, verifying the
   server against the trust bundle installed in ``cert_dir`` and its SPIFFE id ``server_identity``;
3. checks the returned chain (leaf key = pending key, ``openssl verify`` to the bundle, identity) and installs it
   with the atomic ``..data`` swap Envoy's SDS reloads on (``certs.plan_install`` and ``install``).

The trust bundle is kept as installed: root rotation stays an Ansible operation. Nothing expires in the
authentication: the node key is a plain key pair whose public half is registered on the CA server.

It runs as root and never follows a link or opens a file in a directory another user can write (``certs``
checks every directory and opens files with O_NOFOLLOW): the proxy's user, which reads the certificate through its
group, cannot make it copy the node key or any root-only file anywhere. The node key must be a regular file in
directories only root can write.

Exit status: 0 when nothing was due or the renewal succeeded (the first line on stdout says ``ok: ...`` or
``renewed: ...``); 1 when a due renewal failed; 2 for a bad configuration. Messages go to the journal.

Config (``--config``, default /etc/vmesh/renew.json)::

    {"server": "https://10.0.0.5:15012", "node": "reviews-v1", "cert_dir": "/etc/vmesh/certs",
     "identity": "spiffe://cluster.local/ns/default/sa/reviews", "renew_ratio": 0.5,
     "node_key": "/etc/vmesh/node/node-key.pem", "group": "vmesh-proxy",
     "server_identity": "spiffe://cluster.local/ns/istio-system/sa/vmesh-ca", "timeout_seconds": 30}

Python 3 standard library and the ``openssl`` command. The identity role installs this file with the module_utils
it imports (the vmesh.mesh.node_source lookup, ``with_imports``) under
``/opt/vmesh/lib/renew/ansible_collections/vmesh/mesh/plugins/module_utils/``, so the imports read as they do in
the collection, and runs :func:`main` through the launcher ``/opt/vmesh/bin/vmesh-renew`` (``python3 -I``, that
lib directory first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import json
import os
import secrets
import ssl
import sys
import time
import urllib.parse

from ansible_collections.vmesh.mesh.plugins.module_utils import certs, host
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError

NAME = "vmesh-renew"
REQUIRED = ("server", "node", "cert_dir", "identity")
DEFAULTS = {"renew_ratio": 0.5, "node_key": "/etc/vmesh/node/node-key.pem", "group": "vmesh-proxy",
            "server_identity": "", "timeout_seconds": 30}
#: Settings of earlier versions, accepted and ignored: the files belong to root now, read by the proxy's group.
IGNORED = ("owner",)
MAX_ANSWER_BYTES = 1 << 20
LOCK_TIMEOUT = 90  # seconds a run waits for another one (the unit allows 120)

_JOURNAL = bool(os.environ.get("JOURNAL_STREAM"))


def log(level, message):
    """A line for the journal (stderr), with its syslog priority when run by systemd."""
    prefix = "<%d>" % {"error": 3, "warning": 4, "info": 6}[level] if _JOURNAL else ""
    print("%s%s: %s%s" % (prefix, NAME, "" if level == "info" else level + ": ", " ".join(str(message).split())),
          file=sys.stderr, flush=True)


class ConfigError(Exception):
    pass


class Failed(Exception):
    """A renewal that could not be done; the message says why in one line."""


def load_config(path):
    try:
        given = host.read_json_object(path)
    except host.FileError as exc:
        raise ConfigError(str(exc)) from None
    missing = [k for k in REQUIRED if not given.get(k)]
    unknown = sorted(set(given) - set(REQUIRED) - set(DEFAULTS) - set(IGNORED))
    if missing or unknown:
        raise ConfigError("%s: %s" % (path, "; ".join(
            (["missing %s" % ", ".join(missing)] if missing else []) + (["unknown %s" % ", ".join(unknown)]
                                                                         if unknown else []))))
    cfg = dict(DEFAULTS, **{k: v for k, v in given.items() if k not in IGNORED})
    try:
        trust_domain = certs.parse_identity(cfg["identity"])[0]
        cfg["server_identity"] = cfg["server_identity"] or "spiffe://%s/ns/istio-system/sa/vmesh-ca" % trust_domain
        certs.parse_identity(cfg["server_identity"])
    except HostError as exc:
        raise ConfigError("%s: %s" % (path, exc)) from None
    if not isinstance(cfg["renew_ratio"], (int, float)) or not 0 < cfg["renew_ratio"] <= 1:
        raise ConfigError("%s: renew_ratio must be in (0, 1], got %r" % (path, cfg["renew_ratio"]))
    if not isinstance(cfg["timeout_seconds"], (int, float)) or cfg["timeout_seconds"] <= 0:
        raise ConfigError("%s: timeout_seconds must be positive" % path)
    url = urllib.parse.urlsplit(cfg["server"])
    if url.scheme != "https" or not url.hostname or url.path not in ("", "/"):
        raise ConfigError("%s: server must be https://<host>[:<port>], got %r" % (path, cfg["server"]))
    cfg["host"], cfg["port"] = url.hostname, url.port or 15012
    return cfg


# --- the CA server ------------------------------------------------------------------------------------------------


class Server:
    """HTTPS to the CA server, which must present a certificate that verifies to ``bundle`` (the mesh roots), for
    the host name or address in the URL, with the SPIFFE id ``server_identity``."""

    def __init__(self, cfg, bundle):
        self.cfg = cfg
        self.context = ssl.create_default_context(cadata=bundle)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2

    def call(self, method, path, body=None):
        """The JSON answer of a 200; raises :class:`Failed` with the server's one-line reason otherwise."""
        where = "%s%s" % (self.cfg["server"].rstrip("/"), path)
        conn = http.client.HTTPSConnection(self.cfg["host"], self.cfg["port"], context=self.context,
                                           timeout=self.cfg["timeout_seconds"])
        try:
            conn.connect()
            names = dict(conn.sock.getpeercert() or {}).get("subjectAltName", ())
            if ("URI", self.cfg["server_identity"]) not in names:
                raise Failed("%s presents no URI %s in its certificate: not the mesh CA server"
                             % (where, self.cfg["server_identity"]))
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
        except ssl.SSLCertVerificationError as exc:
            raise Failed("%s: its certificate does not verify against the trust bundle in %s: %s"
                         % (where, self.cfg["cert_dir"], exc.verify_message)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Failed("%s: %s" % (where, exc or type(exc).__name__)) from None
        finally:
            conn.close()
        if len(data) > MAX_ANSWER_BYTES:
            raise Failed("%s: the answer is larger than %d bytes" % (where, MAX_ANSWER_BYTES))
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if response.status != 200:
            reason = answer.get("error") if isinstance(answer, dict) else None
            raise Failed("%s refused (%d): %s" % (where, response.status, reason or response.reason))
        if not isinstance(answer, dict) or not isinstance(answer.get("chain"), str):
            raise Failed("%s: the answer holds no chain" % where)
        return answer

    def intermediate(self):
        return certs.normalize_certs(self.call("GET", "/v1/ca")["chain"], "the CA server's intermediate")

    def sign(self, csr, node_key, openssl):
        try:
            certs.check_private_file(node_key, "the node key")  # handed to openssl by its path: no link, no swap
        except HostError as exc:
            raise Failed(str(exc)) from None
        payload = json.dumps({"node": self.cfg["node"], "csr": csr, "time": int(time.time()),
                              "nonce": secrets.token_hex(16)}, sort_keys=True).encode("utf-8")
        try:
            signature = openssl.sign(node_key, payload, "signing the request with the node key %s" % node_key)
        except HostError as exc:
            raise Failed(str(exc)) from None
        body = json.dumps({"request": base64.b64encode(payload).decode("ascii"),
                           "signature": base64.b64encode(signature).decode("ascii")})
        return self.call("POST", "/v1/sign", body.encode("ascii"))["chain"]


# --- one run ------------------------------------------------------------------------------------------------------


def _due_at(st, ratio):
    """When the certificate described by ``st`` becomes due (ISO 8601 UTC)."""
    parse = datetime.datetime.strptime
    not_before = parse(st["not_before"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    not_after = parse(st["not_after"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return certs.iso(not_after - (not_after - not_before) * ratio)


def run(cfg, force=False, openssl=None):
    """Renew when due. Returns the status line; raises :class:`Failed` or ``certs.CertError``."""
    openssl = openssl or certs.Openssl()
    cert_dir, identity = cfg["cert_dir"], cfg["identity"]
    current = certs.installed(cert_dir)
    if not (current.bundle or "").strip():
        raise Failed("no trust bundle in %s (root-cert.pem%s): the identity role (Ansible) installs it first; without "
                     "it the CA server cannot be verified" % (cert_dir, "; " + current.problem if current.problem
                                                              else ""))
    bundle = certs.normalize_certs(current.bundle, os.path.join(cert_dir, certs.BUNDLE))
    st = certs.state(cert_dir, openssl)
    reasons = certs.renewal_reasons(st, identity, None, cfg["renew_ratio"], force)
    server = Server(cfg, bundle)
    if st["present"]:
        try:
            issuer = server.intermediate()
        except Failed as exc:
            if not reasons:
                log("warning", "cannot ask the CA server for its intermediate (%s); the certificate is not due "
                               "until %s" % (exc, _due_at(st, cfg["renew_ratio"])))
                return "ok: serial %s valid until %s, not due (the CA server was not reachable)" % (
                    st["serial"], st["not_after"])
            issuer = None
        if issuer is not None and certs.fingerprints(current.chain)[1:] != certs.fingerprints(issuer):
            reasons.append("issuer")  # a new intermediate (renewed, or signed by a new root)
    if not reasons:
        return "ok: serial %s valid until %s, due %s" % (st["serial"], st["not_after"],
                                                         _due_at(st, cfg["renew_ratio"]))

    log("info", "renewing the certificate in %s (%s)" % (cert_dir, ", ".join(reasons)))
    gid = certs.resolve_group(cfg["group"])
    csr = certs.prepare_pending(cert_dir, identity, gid, openssl)
    chain = server.sign(csr, cfg["node_key"], openssl)
    # plan_install checks the leaf's key against pending/key.pem and the chain against the bundle (openssl verify)
    plan = certs.plan_install(cert_dir, chain, bundle, openssl, False, gid)
    if plan.info is None or plan.info.uris != [identity]:
        raise Failed("the CA server returned a certificate for %s, not %s; nothing was installed"
                     % (", ".join(plan.info.uris) if plan.info else "nothing", identity))
    version = certs.install(cert_dir, plan, gid)
    return "renewed: serial %s valid until %s (was %s; %s), version %s" % (
        plan.after["serial"], plan.after["not_after"], st["serial"] or "none", ", ".join(reasons), version)


@contextlib.contextmanager
def renewal_lock(cert_dir, timeout=LOCK_TIMEOUT):
    """One renewal at a time (the timer's and one started by Ansible share pending/): an exclusive lock on the
    certificate directory itself, so no lock file is left behind. The second run waits, then finds its
    certificate renewed and nothing due."""
    try:
        fd = os.open(cert_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise Failed("%s: %s (the identity role installs it; a link is not followed)" % (
            cert_dir, exc.strerror)) from None
    try:
        if not host.flock_within(fd, timeout):
            raise Failed("another renewal holds %s for over %d s" % (cert_dir, timeout))
        yield
    finally:
        os.close(fd)  # releases the lock


def main(argv=None):
    parser = argparse.ArgumentParser(prog=NAME, description="Renew the vmesh workload certificate when due.")
    parser.add_argument("--config", default="/etc/vmesh/renew.json")
    parser.add_argument("--force", action="store_true", help="renew now, whatever the certificate's state")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        log("error", exc)
        return 2
    try:
        with renewal_lock(cfg["cert_dir"]):
            status = run(cfg, force=args.force)
    except (Failed, HostError) as exc:
        log("error", "renewal failed: %s" % exc)
        return 1
    print(status, flush=True)  # stdout: the journal under systemd, the task's result under Ansible
    return 0

