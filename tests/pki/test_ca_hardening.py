"""The online CA (roles/ca_server) when someone is after it: what its intermediate can sign, the registrations of
hosts that left the mesh, the record of what it issued, and abuse of its port by anyone who can reach it.

Like test_renewal.py: the server runs as a subprocess with the system python3, only on loopback addresses
(127.0.0.0/8: the abusive clients each take their own source address there); the CA is made with the project's
modules. Every wait is bounded.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import secrets
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from harness.pki import IDENTITY, ROOT, SERVER_ID, Running, body, ca_server, call, ext, mode, new_csr, new_key, ok
from harness.pki import openssl, play, register, server_cli, tls_context, verify_chain

# --- the intermediate's name constraints ---------------------------------------------------------------------------


def forge(pki, folder: Path, san: str) -> Path:
    """A leaf for ``san`` signed directly with the intermediate's key, as a thief of that key would sign it."""
    name = secrets.token_hex(4)
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
                                        "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            str(folder / f"{name}.key"), "-subj", "/O=cluster.local", "-out", str(folder / f"{name}.csr"))
    openssl("x509", "-req", "-in", str(folder / f"{name}.csr"), "-CA", str(pki.state / "intermediate-cert.pem"),
            "-CAkey", str(pki.state / "intermediate-key.pem"), "-set_serial", "0x" + secrets.token_hex(8), "-days",
            "1", "-extfile", str(folder / f"{name}.ext"), "-out", str(folder / f"{name}.pem"))
    return folder / f"{name}.pem"


def verify(pki, leaf: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "verify", "-CAfile", str(pki.bundle), "-untrusted",
                           str(pki.state / "intermediate-cert.pem"), str(leaf)], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("san, verifies", [
    ("DNS:www.bank.example", False),
    ("IP:8.8.8.8", False),
    ("IP:2001:db8::1", False),
    ("URI:spiffe://bank.example/ns/default/sa/teller", False),
    ("URI:spiffe://cluster.local/ns/default/sa/reviews,DNS:reviews.default.svc", False),
    ("URI:spiffe://cluster.local/ns/default/sa/anything", True),
    ("URI:spiffe://cluster.local/ns/istio-system/sa/vmesh-ca,IP:127.0.0.1", True),  # the server's own shape
])
def test_the_intermediate_signs_only_the_mesh_names(pki, tmp_path, san, verifies):
    checked = verify(pki, forge(pki, tmp_path, san))
    assert (checked.returncode == 0) is verifies, checked.stdout + checked.stderr
    if not verifies:
        assert "subtree violation" in checked.stdout + checked.stderr


def test_what_the_server_issues_still_verifies(pki, server, tmp_path):
    constraints = ext((pki.state / "intermediate-cert.pem").read_text(), "nameConstraints")
    assert "critical" in constraints and "URI:cluster.local" in constraints and "IP:127.0.0.1/255.255.255.255" in (
        constraints)
    # the server is reached by address only (server_names 127.0.0.1): every DNS name is excluded
    assert constraints.split("Excluded:")[1].split() == ["DNS:"]
    # its TLS certificate (checked by every agent) and a workload's
    assert verify(pki, pki.state / "tls-cert.pem").returncode == 0
    key = tmp_path / "node.key"
    register(pki.state, "verifies", IDENTITY, new_key(key))
    status, answer = call(server, "POST", "/v1/sign", body("verifies", key, new_csr(tmp_path, IDENTITY)))
    assert status == 200 and verify_chain(answer["chain"], pki.bundle, tmp_path).returncode == 0


def test_an_intermediate_constrained_to_uris_only_is_replaced(pki, tmp_path):
    """The intermediate an earlier version signed (same key, URIs only) is signed again, for the constraints."""
    root = x509.load_pem_x509_certificate((pki.ca / "root-cert.pem").read_bytes())
    root_key = serialization.load_pem_private_key((pki.ca / "root-key.pem").read_bytes(), password=None)
    public = serialization.load_pem_private_key((pki.state / "intermediate-key.pem").read_bytes(),
                                                password=None).public_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    old = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, "vmesh CA server (cluster.local)")]))
           .issuer_name(root.subject).public_key(public).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=300))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                        data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                        crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
           .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
           .add_extension(x509.NameConstraints([x509.UniformResourceIdentifier("cluster.local")], None),
                          critical=True)
           .sign(root_key, hashes.SHA256()))
    request = json.loads(server_cli(pki.config, "intermediate-request").stdout)
    (signed,) = play(tmp_path, [{"vmesh.mesh.ca_sign_intermediate": {
        "path": str(pki.ca), "csr": request["csr"], "server_names": ["127.0.0.1"],
        "current": old.public_bytes(serialization.Encoding.PEM).decode()}}])
    assert ok(signed)["changed"] is True and signed["reasons"] == ["constraints"]
    assert "Excluded:" in ext(signed["certificate"], "nameConstraints")


# --- registrations and the record of what was issued ----------------------------------------------------------------


def prune(tmp_path: Path, state: Path, *, check: bool) -> int:
    """The ca_server role's pruning on localhost, with an inventory whose group vmesh holds two hosts; how many
    tasks changed something."""
    run = tmp_path / f"prune-{secrets.token_hex(3)}"
    run.mkdir()
    (run / "hosts.json").write_text(json.dumps({"all": {"children": {"vmesh": {"hosts": {
        "reviews-v1": {}, "ratings-v1": {}}}}}}))
    (run / "play.json").write_text(json.dumps([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [{"ansible.builtin.include_role": {"name": "vmesh.mesh.ca_server", "tasks_from": "prune.yml"},
                   "vars": {"ca_server_host": "localhost", "ca_server_dir": str(state)}}]}]))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(run / "hosts.json"),
                           str(run / "play.json")] + ["--check"] * check, capture_output=True, text=True, cwd=ROOT,
                          timeout=180, env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(re.search(r"^localhost\s*:\s*ok=\d+\s+changed=(\d+)", proc.stdout, re.M).group(1))


def test_registrations_of_hosts_gone_from_the_inventory_are_removed(tmp_path):
    state = tmp_path / "state"
    (state / "nodes").mkdir(parents=True)
    for name in ("reviews-v1.json", "ratings-v1.json", "gone-host.json", "old.host.json", "README"):
        (state / "nodes" / name).write_text("{}")
    kept = ["README", "ratings-v1.json", "reviews-v1.json"]

    assert prune(tmp_path, state, check=True) == 1
    assert len(list((state / "nodes").iterdir())) == 5
    assert prune(tmp_path, state, check=False) == 1
    assert sorted(p.name for p in (state / "nodes").iterdir()) == kept
    assert prune(tmp_path, state, check=False) == 0


def issued(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / "issued.log").read_text().splitlines()]


def test_every_certificate_issued_is_recorded(pki, server, tmp_path):
    key = tmp_path / "node.key"
    register(pki.state, "recorded", IDENTITY, new_key(key))
    status, answer = call(server, "POST", "/v1/sign", body("recorded", key, new_csr(tmp_path, IDENTITY)))
    assert status == 200
    assert mode(pki.state / "issued.log") == 0o600
    lines = issued(pki.state)
    assert any(line["kind"] == "server-tls" and line["identity"] == SERVER_ID for line in lines)
    last = lines[-1]
    assert {k: v for k, v in last.items() if k != "time"} == {
        "kind": "workload", "serial": answer["serial"], "identity": IDENTITY, "node": "recorded",
        "not_after": answer["not_after"], "client": "127.0.0.1"}
    assert abs(datetime.datetime.strptime(last["time"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp() - time.time()) < 300


def test_no_certificate_leaves_unrecorded(pki, tmp_path):
    """issued.log replaced by a link: the server neither follows it nor hands out what it could not record."""
    state = tmp_path / "state"
    shutil.copytree(pki.state, state, ignore=shutil.ignore_patterns("nonces.json"))
    target = tmp_path / "elsewhere.log"
    target.write_text("")
    (state / "issued.log").unlink()
    (state / "issued.log").symlink_to(target)
    key = tmp_path / "node.key"
    register(state, "unrecorded", IDENTITY, new_key(key))
    with ca_server(pki, state) as running:
        status, answer = call(running, "POST", "/v1/sign", body("unrecorded", key, new_csr(tmp_path, IDENTITY)))
        assert status == 500 and "chain" not in answer
        assert "issued.log: cannot record the certificate" in running.log_text() and running.signed() == 0
    assert target.read_text() == ""


# --- abuse of the port ---------------------------------------------------------------------------------------------


def raw_request(running: Running, data: bytes) -> tuple[int, dict]:
    """``data`` sent over TLS as it is (request line, headers, body); (status, JSON answer)."""
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    with tls_context(running.bundle).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(data)
        response = http.client.HTTPResponse(tls)
        response.begin()
        return response.status, json.loads(response.read() or b"{}")


def signed_body(node: str, key: Path, payload: bytes) -> bytes:
    return body(node, key, "", payload=payload)


def post(body_bytes: bytes, *headers: bytes) -> bytes:
    head = [b"POST /v1/sign HTTP/1.0", b"Content-Type: application/json", *headers]
    if not any(h.lower().startswith(b"content-length:") for h in headers):
        head.append(b"Content-Length: %d" % len(body_bytes))
    return b"\r\n".join(head) + b"\r\n\r\n" + body_bytes


@pytest.mark.parametrize("case", ["time NaN", "time Infinity", "time 1e999", "time 10**30", "nested request",
                                  "nested body", "duplicate key", "Content-Length superscript",
                                  "Content-Length Arabic-Indic", "Content-Length twice", "headers too large"])
def test_malformed_requests_get_a_400_and_a_journal_line(pki, server, tmp_path, case):
    name = "malformed-" + case.split()[0].lower().replace("-", "")
    key = tmp_path / "node.key"
    register(pki.state, name, IDENTITY, new_key(key))
    csr = json.dumps(new_csr(tmp_path, IDENTITY))
    nonce = secrets.token_hex(16)
    claimed = name

    def payload(time_value: str = str(int(time.time())), csr_value: str = csr, extra: str = "") -> bytes:
        return ('{"csr": %s, "node": "%s", "nonce": "%s", "time": %s%s}'
                % (csr_value, name, nonce, time_value, extra)).encode()

    status = 400
    if case.startswith("time "):
        value = case.split(" ", 1)[1].replace("10**30", str(10 ** 30))
        request, reason = post(signed_body(name, key, payload(value))), (
            "time: must be" if case == "time 10**30" else "the request is not JSON")
    elif case == "nested request":
        request = post(signed_body(name, key, payload(csr_value="[" * 20000 + "]" * 20000)))
        reason = "the request nests 20001 levels deep (at most 4)"
    elif case == "nested body":
        request, reason, claimed = post(b'{"request": ' + b"[" * 30000 + b"]" * 30000 + b"}"), "the body nests", "-"
    elif case == "duplicate key":
        request = post(signed_body(name, key, payload(extra=', "node": "%s"' % name)))
        reason = "duplicate key 'node'"
    elif case.startswith("Content-Length"):
        good = signed_body(name, key, payload())
        value = {"superscript": b"\xb2", "Arabic-Indic": "١٣".encode(), "twice": b"%d" % len(good)}[case.split()[1]]
        headers = [b"Content-Length: " + value]
        if case.endswith("twice"):
            headers.append(b"Content-Length: %d" % len(good))
        request, claimed = post(good, *headers), "-"
        reason = "given 2 times" if case.endswith("twice") else "Content-Length is not a number of ASCII digits"
    else:
        request = post(b"{}", *[b"X-Filler-%d: %s" % (i, b"x" * 100) for i in range(100)])
        status, reason, claimed = 431, "the request line and headers exceed 8192 bytes", "-"
    before = server.signed()
    answer = raw_request(server, request)
    assert answer[0] == status and reason in answer[1]["error"] and "\n" not in answer[1]["error"], answer
    log = server.log_text()
    assert f"127.0.0.1 node={claimed} refused {status}: " in log and reason in log
    assert "Traceback" not in log and "internal error" not in log and server.signed() == before


@dataclass
class Hanger:
    """An abusive client: ``drip`` bytes it sends one at a time, slowly, after the TLS handshake (if ``tls``)."""

    kind: str
    source: str
    sock: socket.socket | None = None
    drip: bytes = b""
    closed_at: float | None = None


def test_renewals_go_through_while_50_slow_or_idle_clients_hang_on(pki, tmp_path):
    """15 idle connections, 15 that stop in the middle of their TLS handshake, 10 that send a header byte every
    0.2 s, 10 that send the body that way, 2 of each from one address: renewals from another address still go
    through while they hang on; the server closes every one of them at its deadline, and 4 of 8 connections from
    one more address at once (its per-client cap)."""
    timeout = 4
    key = tmp_path / "node.key"
    register(pki.state, "steady", IDENTITY, new_key(key))
    with ca_server(pki, timeout_seconds=timeout) as running:
        context = tls_context(running.bundle)
        groups = [("idle", "127.0.1.%d", 15, None), ("half handshake", "127.0.2.%d", 15, None),
                  ("slow headers", "127.0.3.%d", 10, b"POST /v1/sign HTTP/1.0\r\n" + b"X-Slow: " + b"s" * 200),
                  ("slow body", "127.0.4.%d", 10, b"POST /v1/sign HTTP/1.0\r\nContent-Length: 4000\r\n\r\n"
                                                  + b"b" * 400)]
        hangers = [Hanger(kind, pattern % (1 + i // 2), drip=drip or b"")
                   for kind, pattern, count, drip in groups for i in range(count)]
        capped = [Hanger("over the cap", "127.0.5.1") for _ in range(8)]
        for hanger in hangers + capped:
            hanger.sock = socket.create_connection(("127.0.0.1", running.port), timeout=5,
                                                   source_address=(hanger.source, 0))
            try:
                if hanger.kind == "half handshake":
                    hanger.sock.sendall(b"\x16\x03\x01")  # the start of a TLS record, then nothing
                elif hanger.drip:
                    hanger.sock = context.wrap_socket(hanger.sock, server_hostname="127.0.0.1")
                    if hanger.kind == "slow body":  # the headers at once, then the body drips
                        head, _, rest = hanger.drip.partition(b"\r\n\r\n")
                        hanger.sock.sendall(head + b"\r\n\r\n")
                        hanger.drip = rest
            except OSError:  # refused at once
                hanger.closed_at = time.monotonic()
            hanger.sock.setblocking(False)  # a TLS socket may be readable with no data (session tickets)

        renewals = []

        def renew():
            for _ in range(3):
                status, _ = call(running, "POST", "/v1/sign", body("steady", key, new_csr(tmp_path, IDENTITY)))
                renewals.append((status, time.monotonic()))

        renewer = threading.Thread(target=renew)
        renewer.start()
        stop = time.monotonic() + 3 * timeout + 5
        while time.monotonic() < stop and any(h.closed_at is None for h in hangers + capped):
            now = time.monotonic()
            for hanger in hangers:
                if hanger.closed_at is None and hanger.drip:
                    try:
                        hanger.drip = hanger.drip[hanger.sock.send(hanger.drip[:1]):]
                    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                    except OSError:
                        hanger.closed_at = now
            open_socks = {h.sock: h for h in hangers + capped if h.closed_at is None}
            for sock in select.select(list(open_socks), [], [], 0.2)[0]:
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue  # a TLS record with no data for us
                except OSError:
                    data = b""
                if not data:  # the server closed it (nothing else is ever sent to these)
                    open_socks[sock].closed_at = time.monotonic()
        renewer.join(timeout=60)
        for hanger in hangers + capped:
            hanger.sock.close()
        log = running.log_text()
        healthy = call(running, "GET", "/healthz")[0]

    assert [status for status, _ in renewals] == [200, 200, 200], log
    assert all(h.closed_at is not None for h in hangers + capped), "still open at the end: %s" % [
        (h.kind, h.source) for h in hangers + capped if h.closed_at is None]
    # the renewals went through while every slow client still held its connection
    assert renewals[0][1] < min(h.closed_at for h in hangers)
    # 4 of the 8 from one address closed at once, before any deadline; the other 4 at theirs
    early = sorted(h.closed_at for h in capped)
    assert early[3] < min(h.closed_at for h in hangers) and early[4] > renewals[0][1]
    assert "127.0.5.1: connection refused: 4 connections from this client are open already" in log
    for hanger in hangers:
        phase = "request" if hanger.kind.startswith("slow") else "TLS handshake"
        assert f"{hanger.source}: connection closed: its deadline passed during the {phase}" in log
    assert log.count("connection closed: its deadline passed") == len(hangers) + 4
    assert healthy == 200 and "Traceback" not in log
