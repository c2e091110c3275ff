"""Automatic renewal of workload certificates on the VM: the CA server's checks (module_utils/ca_server.py), the
agent end to end (module_utils/renew.py), and the modules behind them (vmesh_node_key, vmesh_ca_sign_intermediate).

The server and the agent run as subprocesses with the system python3 (standard library only, as on a VM),
installed as the roles install them (:func:`install_program`: the node_source lookup's files in a lib directory
laid out as the collection, the role's launcher), on 127.0.0.1 only. The CA is made with the project's modules,
run through ansible-playbook on localhost as the ca_server role chains them. Every wait and request is bounded.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.vmesh.mesh.plugins.lookup.node_source import closure
from ansible_collections.vmesh.mesh.plugins.module_utils import ca as ca_module
from ansible_collections.vmesh.mesh.plugins.module_utils import policy
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from harness.pki import AGENT, ENV, GROUP, IDENTITY, Node, OTHER, OWNER, Pki, ROOT, Running, SERVER, SERVER_ID
from harness.pki import TARGET_PYTHON, assert_no_private_key, body, ca_server, ca_server_tasks, call, count_certs
from harness.pki import ext, free_port, leaf_of, mode, new_csr, new_key, ok, openssl, play, register, server_cli
from harness.pki import tls_context, user_root, verify_chain, write_server_config

# --- the server ----------------------------------------------------------------------------------------------------


def test_server_signs_the_registered_identity_of_a_node(pki, server, node, tmp_path):
    csr = new_csr(tmp_path, IDENTITY)
    status, answer = call(server, "POST", "/v1/sign", body(node.name, node.key, csr))
    assert status == 200, answer
    chain = answer["chain"]
    assert count_certs(chain) == 2 and chain.endswith((pki.state / "intermediate-cert.pem").read_text())
    assert verify_chain(chain, pki.bundle, tmp_path).returncode == 0
    leaf = leaf_of(chain)
    assert f"URI:{IDENTITY}" in ext(leaf, "subjectAltName")
    assert ext(leaf, "subjectAltName").count("URI:") == 1
    usage = ext(leaf, "keyUsage,extendedKeyUsage,basicConstraints")
    assert "CA:FALSE" in usage and "TLS Web Server Authentication, TLS Web Client Authentication" in usage
    # the certificate is for the CSR's key, lives 24 h (+ 5 minutes of clock skew), and the log says so
    assert openssl("x509", "-noout", "-pubkey", data=leaf) == openssl("req", "-noout", "-pubkey", data=csr)
    dates = openssl("x509", "-noout", "-startdate", "-enddate", "-serial", data=leaf)
    start, end = (time.mktime(time.strptime(d, "%b %d %H:%M:%S %Y GMT"))
                  for d in re.findall(r"=(\w+ +\d+ [\d:]+ \d+ GMT)", dates))
    assert end - start == 24 * 3600 + 300
    serial = re.search(r"serial=(\w+)", dates).group(1).lower().lstrip("0")
    assert f"node={node.name} signed serial={serial} identity={IDENTITY}" in server.log_text()
    # the intermediate that signed it: born on the CA server, CA:TRUE pathlen 0, URIs of the trust domain only
    intermediate = (pki.state / "intermediate-cert.pem").read_text()
    constraints = ext(intermediate, "basicConstraints,nameConstraints")
    assert "CA:TRUE, pathlen:0" in constraints and "URI:cluster.local" in constraints
    status, ca = call(server, "GET", "/v1/ca")
    assert status == 200 and ca["chain"] == intermediate


@pytest.mark.parametrize("case", ["unknown node", "bad signature", "wrong identity", "stale time", "future time",
                                  "replayed nonce", "CSR signature", "two names", "not JSON", "too large",
                                  "revoked"])
def test_server_refuses(pki, server, node, tmp_path, case):
    """Each refusal: the right 4xx, a one-line reason to the client and in the journal, and nothing signed."""
    good_csr = new_csr(tmp_path, IDENTITY)
    if case == "unknown node":
        request, expected = body("nobody", node.key, good_csr), (403, "node nobody is not registered")
    elif case == "bad signature":
        stranger = tmp_path / "stranger.key"
        new_key(stranger)
        request = body(node.name, stranger, good_csr)
        expected = 403, f"the signature does not verify with the key registered for node {node.name}"
    elif case == "wrong identity":
        request = body(node.name, node.key, new_csr(tmp_path, OTHER))
        expected = 403, f"csr: asks for subjectAltName URI:{OTHER}, but the identity it may have is URI:{IDENTITY}"
    elif case == "stale time":
        request, expected = body(node.name, node.key, good_csr, when=time.time() - 400), (403, "s off this server")
    elif case == "future time":
        request, expected = body(node.name, node.key, good_csr, when=time.time() + 400), (403, "s off this server")
    elif case == "replayed nonce":
        request = body(node.name, node.key, good_csr)
        assert call(server, "POST", "/v1/sign", request)[0] == 200
        expected = 403, f"was already used by node {node.name} (a replayed request)"
    elif case == "CSR signature":
        der = bytearray(base64.b64decode("".join(good_csr.strip().splitlines()[1:-1])))
        der[-1] ^= 0x01
        tampered = "-----BEGIN CERTIFICATE REQUEST-----\n%s\n-----END CERTIFICATE REQUEST-----\n" % "\n".join(
            re.findall(".{1,64}", base64.b64encode(bytes(der)).decode()))
        request, expected = body(node.name, node.key, tampered), (400, "csr: its self-signature does not verify")
    elif case == "two names":
        request = body(node.name, node.key, new_csr(tmp_path, IDENTITY, ",DNS:reviews.default.svc"))
        expected = 403, "DNS:reviews.default.svc"
    elif case == "not JSON":
        request, expected = b"{nope", (400, "the body is not JSON")
    elif case == "too large":  # declared only: the server answers before reading a byte of it
        request, expected = None, (413, "larger than 65536 bytes")
    else:  # revoked: the node's registration deleted, as renewal_absent.yml does
        request = body(node.name, node.key, good_csr)
        (pki.state / "nodes" / f"{node.name}.json").unlink()
        expected = 403, f"node {node.name} is not registered"
    before = server.signed()
    status, answer = call(server, "POST", "/v1/sign", request, declared_length=70000 if request is None else None)
    assert (status, "chain" in answer) == (expected[0], False), answer
    assert expected[1] in answer["error"] and "\n" not in answer["error"]
    assert server.signed() == before
    assert re.search(r"refused %d: .*%s" % (expected[0], re.escape(expected[1])), server.log_text())


def test_server_caps_requests_per_node(pki, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(pki.state, state, ignore=shutil.ignore_patterns("nonces.json"))
    key = tmp_path / "node.key"
    register(state, "busy", IDENTITY, new_key(key))
    with ca_server(pki, state, max_requests_per_node=2) as running:
        answers = [call(running, "POST", "/v1/sign", body("busy", key, new_csr(tmp_path, IDENTITY)))
                   for _ in range(3)]
        assert [status for status, _ in answers] == [200, 200, 429]
        assert "made 2 requests in the last 600 s (at most 2)" in answers[2][1]["error"]
        assert running.signed() == 2
    # nonces outlive a restart: the first request replayed to a new server process is refused
    replay = body("busy", key, new_csr(tmp_path, IDENTITY))
    with ca_server(pki, state, max_requests_per_node=5) as running:
        assert call(running, "POST", "/v1/sign", replay)[0] == 200
    with ca_server(pki, state, max_requests_per_node=5) as running:
        status, answer = call(running, "POST", "/v1/sign", replay)
        assert status == 403 and "a replayed request" in answer["error"] and running.signed() == 0


def test_server_tls_certificate_names_the_ca_server(pki, server, tmp_path):
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=tls_context(pki.bundle), timeout=10)
    try:
        conn.connect()
        names = conn.sock.getpeercert()["subjectAltName"]
    finally:
        conn.close()
    assert ("URI", SERVER_ID) in names and ("IP Address", "127.0.0.1") in names
    assert server_cli(pki.config, "tls").stdout == "ok\n"  # nothing due: nothing issued again
    # a client that trusts another root (another mesh) refuses the server at the handshake
    other_root, _ = user_root(tmp_path / "other")
    other = ssl.create_default_context(cafile=str(other_root))
    with pytest.raises(ssl.SSLCertVerificationError):
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=other, timeout=10)
        try:
            conn.connect()
        finally:
            conn.close()


# --- the agent, end to end -------------------------------------------------------------------------------------


def issue_with_ansible(pki: Pki, certs: Path, lifetime: int) -> list[dict]:
    """A certificate the way the identity role issues one today (key and CSR here, the root signs, one swap)."""
    return [ok(r) for r in play(pki.base, [
        {"vmesh.mesh.ca": {"path": str(pki.ca)}},
        {"vmesh.mesh.workload_key": {"path": str(certs), "identity": IDENTITY, "group": GROUP,
                                "force": True}},
        {"vmesh.mesh.ca_sign": {"path": str(pki.ca), "csr": "{{ r1.csr }}", "identity": IDENTITY,
                           "lifetime_hours": lifetime}},
        {"vmesh.mesh.workload_cert": {"path": str(certs), "chain": "{{ r2.chain }}", "trust_bundle": "{{ r0.trust_bundle }}",
                                 "group": GROUP}},
    ])]


def agent(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TARGET_PYTHON, "-I", str(AGENT), "--config", str(config), *args], capture_output=True,
                          text=True, env=ENV, timeout=120)


def agent_config(folder: Path, running: Running, certs: Path, node: Node, **settings) -> Path:
    path = folder / f"renew-{secrets.token_hex(3)}.json"
    path.write_text(json.dumps({"server": f"https://127.0.0.1:{running.port}", "node": node.name,
                                "cert_dir": str(certs), "identity": node.identity, "node_key": str(node.key),
                                "group": GROUP, **settings}))
    return path


def in_force(certs: Path) -> dict:
    return {"version": os.readlink(certs / "..data"), "chain": (certs / "cert-chain.pem").read_text(),
            "key": (certs / "key.pem").read_text(), "bundle": (certs / "root-cert.pem").read_text()}


def test_agent_renews_a_due_certificate_then_finds_nothing_due(pki, server, tmp_path):
    # a 1-hour certificate from the root, as Ansible issues them today: due with renew_ratio 0.99, and not from
    # the CA server's intermediate
    certs = tmp_path / "certs"
    issued = issue_with_ansible(pki, certs, lifetime=1)
    before = in_force(certs)
    # the node key made by the module and registered, as renewal.yml does
    node = Node(name="vm-e2e", key=tmp_path / "node" / "node-key.pem", identity=IDENTITY)
    (made,) = play(pki.base, [{"vmesh.mesh.node_key": {"path": str(node.key), "owner": OWNER, "group": GROUP}}])
    register(pki.state, node.name, IDENTITY, ok(made)["public_key"])
    config = agent_config(tmp_path, server, certs, node, renew_ratio=0.99)

    first = agent(config)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("renewed: serial ")
    assert "(was %s; expiring, issuer)" % issued[3]["serial"] in first.stdout
    after = in_force(certs)
    # a new version through the ..data swap: new serial and key, same identity, same bundle
    assert after["version"] != before["version"] and re.fullmatch(r"\.\.\d{8}T\d{6}\.[0-9a-f]{6}", after["version"])
    assert after["chain"] != before["chain"] and after["key"] != before["key"] and after["bundle"] == before["bundle"]
    assert {n: os.readlink(certs / n) for n in ("cert-chain.pem", "key.pem", "root-cert.pem")} == {
        n: f"..data/{n}" for n in ("cert-chain.pem", "key.pem", "root-cert.pem")}
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        [after["version"], "..data", "cert-chain.pem", "key.pem", "root-cert.pem"])  # pending/ and old version gone
    assert f"URI:{IDENTITY}" in ext(after["chain"], "subjectAltName")
    assert openssl("pkey", "-in", str(certs / "key.pem"), "-pubout") == openssl(
        "x509", "-noout", "-pubkey", "-in", str(certs / "cert-chain.pem"))
    assert verify_chain(after["chain"], certs / "root-cert.pem", tmp_path).returncode == 0
    assert mode(certs / "key.pem") == 0o640 and mode(certs / "cert-chain.pem") == 0o644 and mode(certs) == 0o750
    serial = re.search(r"renewed: serial (\w+)", first.stdout).group(1)
    assert f"node={node.name} signed serial={serial}" in server.log_text()

    second = agent(config)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"ok: serial {serial} valid until ") and "due " in second.stdout
    assert in_force(certs) == after
    assert_no_private_key(pki.base, certs / "key.pem", node.key, pki.state / "intermediate-key.pem")


def test_two_agents_at_once_renew_once(pki, server, tmp_path):
    """The timer's run and one started by Ansible at the same moment: one renews, the other waits for it and
    then finds nothing due (they share pending/, so they must not interleave)."""
    certs = tmp_path / "certs"
    issue_with_ansible(pki, certs, lifetime=1)
    node = Node(name="vm-twice", key=tmp_path / "node" / "node-key.pem", identity=IDENTITY)
    (made,) = play(pki.base, [{"vmesh.mesh.node_key": {"path": str(node.key), "owner": OWNER, "group": GROUP}}])
    register(pki.state, node.name, IDENTITY, ok(made)["public_key"])
    config = agent_config(tmp_path, server, certs, node, renew_ratio=0.99)
    runs = [subprocess.Popen([TARGET_PYTHON, "-I", str(AGENT), "--config", str(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    outs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    assert sorted(out.split(":")[0] for out, _ in outs) == ["ok", "renewed"], outs
    assert verify_chain(in_force(certs)["chain"], certs / "root-cert.pem", tmp_path).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="plants what the proxy's user could, as that user's files: needs root")
def test_agent_never_follows_a_link_the_proxy_planted_in_pending(pki, server, tmp_path):
    """pending/ as an earlier version left it (the proxy's user's), where a compromised Envoy pointed key.pem at the
    node key: the agent, as root, removes it unread and renews with a new key; the node key is neither changed,
    nor signed for, nor copied anywhere."""
    certs = tmp_path / "certs"
    issue_with_ansible(pki, certs, lifetime=1)
    node = Node(name="vm-links", key=tmp_path / "node" / "node-key.pem", identity=IDENTITY)
    (made,) = play(pki.base, [{"vmesh.mesh.node_key": {"path": str(node.key), "owner": OWNER, "group": GROUP}}])
    register(pki.state, node.name, IDENTITY, ok(made)["public_key"])
    pending = certs / "pending"
    pending.mkdir(mode=0o700)
    os.chown(pending, 65534, 65534)
    (pending / "key.pem").symlink_to(node.key)
    os.lchown(pending / "key.pem", 65534, 65534)
    secret = node.key.read_bytes()
    before = os.stat(node.key)

    run = agent(agent_config(tmp_path, server, certs, node, renew_ratio=0.99))
    assert run.returncode == 0 and run.stdout.startswith("renewed: "), run.stderr
    after = os.stat(node.key)
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    assert node.key.read_bytes() == secret and not pending.exists()
    assert openssl("pkey", "-in", str(certs / "key.pem"), "-pubout").strip() != ok(made)["public_key"].strip()
    private_lines = [line for line in secret.decode().splitlines()[1:-2] if len(line) > 20]
    for path in certs.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert not any(line.encode() in path.read_bytes() for line in private_lines), path


def test_agent_fails_clearly_and_changes_nothing(pki, server, node, tmp_path):
    certs = tmp_path / "certs"
    issue_with_ansible(pki, certs, lifetime=1)
    before = in_force(certs)
    # the node asks for an identity it is not registered for: refused, nothing installed
    moved = agent(agent_config(tmp_path, server, certs, Node(node.name, node.key, OTHER)))
    assert moved.returncode == 1 and moved.stdout == ""
    assert f"refused (403): csr: asks for subjectAltName URI:{OTHER}, but the identity it may have is" in moved.stderr
    assert in_force(certs) == before
    # a server the installed bundle does not trust (another mesh's root): refused at the handshake
    version = certs / before["version"]
    os.chmod(version / "root-cert.pem", 0o644)
    (version / "root-cert.pem").write_text(user_root(tmp_path / "other")[0].read_text())
    untrusted = agent(agent_config(tmp_path, server, certs, node, renew_ratio=0.99))
    assert untrusted.returncode == 1 and "does not verify against the trust bundle" in untrusted.stderr
    # nothing due and the server unreachable: a warning, exit 0
    (version / "root-cert.pem").write_text(before["bundle"])
    quiet = agent(agent_config(tmp_path, Running(free_port(), server.log, server.state, server.bundle), certs, node))
    assert quiet.returncode == 0 and quiet.stdout.startswith("ok: ") and "not reachable" in quiet.stdout
    assert "warning: cannot ask the CA server for its intermediate" in quiet.stderr
    assert os.readlink(certs / "..data") == before["version"]


# --- the modules ---------------------------------------------------------------------------------------------------


def test_node_source_ships_what_the_programs_import(tmp_path):
    """The lookup the roles install the programs with: each program with every module_utils file it imports (and
    nothing that needs more than the standard library), the boot-time iptables helper too; without with_imports, one
    file's text."""
    programs = ("renew", "ca_server", "iptables")
    lookups = {name: "{{ query('vmesh.mesh.node_source', '%s', with_imports=true) }}" % name for name in programs}
    results = play(tmp_path, [{"ansible.builtin.set_fact": lookups},
                              {"ansible.builtin.set_fact": {"iptables": "{{ lookup('vmesh.mesh.node_source', "
                                                                        "'iptables') }}"}}])
    for name in programs:
        files = ok(results[0])["ansible_facts"][name]
        assert [f["name"] for f in files] == sorted(closure([name])) and name + ".py" in [f["name"] for f in files]
        assert all(f["content"] == (ROOT / "plugins" / "module_utils" / f["name"]).read_text() for f in files)
        assert "ca.py" not in [f["name"] for f in files]  # the controller's CA needs the cryptography package
        assert "host.py" in [f["name"] for f in files]  # the one runner and file layer, shared by all three
    assert ok(results[1])["ansible_facts"]["iptables"] == (ROOT / "plugins" / "module_utils" / "iptables.py").read_text()
    for launcher in (SERVER, AGENT):
        assert launcher.read_text().startswith("#!/usr/bin/python3 -I\n")


def test_node_key_four_steps(tmp_path):
    key = tmp_path / "node" / "node-key.pem"
    task = [{"vmesh.mesh.node_key": {"path": str(key), "owner": OWNER, "group": GROUP}}]
    (checked,) = play(tmp_path, task, check=True)
    assert ok(checked)["changed"] is True and checked["reason"] == "missing" and checked["public_key"] == ""
    assert not key.parent.exists()
    (applied,) = play(tmp_path, task)
    assert ok(applied)["changed"] is True and applied["reason"] == "missing"
    assert mode(key) == 0o600 and mode(key.parent) == 0o700
    assert applied["public_key"] == openssl("pkey", "-in", str(key), "-pubout").strip()
    assert "prime256v1" in openssl("pkey", "-in", str(key), "-noout", "-text_pub")
    assert len(applied["fingerprint"]) == 64
    content = key.read_bytes()
    for check in (True, False):
        (again,) = play(tmp_path, task, check=check)
        assert ok(again)["changed"] is False and again["public_key"] == applied["public_key"]
    assert key.read_bytes() == content
    # a wrong mode is corrected, the key kept; force makes a new one
    os.chmod(key, 0o644)
    (fixed,) = play(tmp_path, task)
    assert ok(fixed)["reason"] == "attributes" and mode(key) == 0o600 and key.read_bytes() == content
    (forced,) = play(tmp_path, [{"vmesh.mesh.node_key": {"path": str(key), "owner": OWNER, "group": GROUP, "force": True}}])
    assert ok(forced)["changed"] is True and forced["public_key"] != applied["public_key"]
    key.write_text("not a key\n")
    (broken,) = play(tmp_path, task)
    assert broken["failed"] is True and "not a private key openssl can read" in broken["msg"]
    assert_no_private_key(tmp_path)


def test_sign_intermediate_four_steps_and_after_a_root_rotation(tmp_path):
    ca, state = tmp_path / "ca", tmp_path / "state"
    state.mkdir(mode=0o700)
    config = write_server_config(tmp_path / "server.json", state)
    tasks = ca_server_tasks(ca, state, config)
    key_tasks = tasks[:3]
    made = [ok(r) for r in play(tmp_path, key_tasks)]  # the root and the intermediate's key exist from here
    assert made[1]["changed"] is True and "BEGIN CERTIFICATE REQUEST" in made[2]["stdout"]

    checked = play(tmp_path, key_tasks + [tasks[3]], check=True)[3]
    assert ok(checked)["changed"] is True and checked["issued"] is True and checked["certificate"] == ""
    assert checked["reasons"] == ["missing"] and checked["diff"]["after"]["fingerprint"] == "(new)"

    applied = [ok(r) for r in play(tmp_path, tasks)]
    signed = applied[3]
    assert signed["changed"] is True and signed["issued"] is True and count_certs(signed["certificate"]) == 1
    assert signed["trust_bundle"] == (ca / "root-cert.pem").read_text()
    details = ext(signed["certificate"], "basicConstraints,keyUsage,nameConstraints")
    assert "critical" in details and "CA:TRUE, pathlen:0" in details and "Certificate Sign, CRL Sign" in details
    assert "Permitted:" in details and "URI:cluster.local" in details
    subject = openssl("x509", "-noout", "-nameopt", "RFC2253", "-subject", "-issuer", data=signed["certificate"])
    assert "subject=CN=vmesh CA server (cluster.local),O=cluster.local" in subject
    assert "issuer=CN=vmesh root CA (cluster.local),O=cluster.local" in subject
    # its key is the one born in the state directory
    assert openssl("x509", "-noout", "-pubkey", data=signed["certificate"]) == openssl(
        "pkey", "-in", str(state / "intermediate-key.pem"), "-pubout")

    for check in (True, False):
        again = [ok(r) for r in play(tmp_path, tasks, check=check)]
        assert [r["changed"] for r in again] == [False] * 6
        assert again[3]["issued"] is False and again[3]["certificate"] == signed["certificate"]
    assert (state / "intermediate-cert.pem").read_text() == signed["certificate"]

    # after a root rotation the same key gets a certificate from the new root
    rotated = [ok(r) for r in play(tmp_path, [{"vmesh.mesh.ca": {"path": str(ca), "rotate": True}}] + tasks[1:])]
    assert rotated[3]["changed"] is True and rotated[3]["reasons"] == ["issuer"]
    assert count_certs(rotated[3]["trust_bundle"]) == 2
    assert openssl("x509", "-noout", "-pubkey", data=rotated[3]["certificate"]) == openssl(
        "pkey", "-in", str(state / "intermediate-key.pem"), "-pubout")
    assert_no_private_key(tmp_path, ca / "root-key.pem", state / "intermediate-key.pem")


# --- one certificate policy, two signers ------------------------------------------------------------------------


def controller_sign(pki: Pki, csr: str, identity: str = IDENTITY, lifetime: int = 24) -> str:
    """The controller's signer (module_utils/ca.py, behind vmesh.mesh.ca_sign) with the root of ``pki``."""
    return ca_module.sign(str(pki.ca), csr, identity, lifetime)["certificate"]


def policy_of(leaf_pem: str) -> dict:
    """What policy.py rules on in a leaf, read back with the ``cryptography`` library."""
    cert = x509.load_pem_x509_certificate(leaf_pem.encode())
    ext = {e.oid.dotted_string: e for e in cert.extensions}
    usage = ext[ExtensionOID.KEY_USAGE.dotted_string]
    return {
        "subject": cert.subject.rfc4514_string(),
        "extensions": sorted((e.oid._name, e.critical) for e in cert.extensions),
        "san": [n.value for n in ext[ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string].value],
        "key_usage": sorted(k for k in ("digital_signature", "key_encipherment", "content_commitment",
                                        "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign")
                            if getattr(usage.value, k)),
        "extended_key_usage": [u._name for u in ext[ExtensionOID.EXTENDED_KEY_USAGE.dotted_string].value],
        "ca": ext[ExtensionOID.BASIC_CONSTRAINTS.dotted_string].value.ca,
        "lifetime": cert.not_valid_after_utc - cert.not_valid_before_utc,
        "backdated": datetime.datetime.now(datetime.timezone.utc) - cert.not_valid_before_utc,
    }


def test_both_signers_issue_what_the_policy_says(pki, server, node, tmp_path):
    """The same CSR signed by the controller (ca.py) and by the CA server (openssl): the same certificate shape,
    which is policy.py's WORKLOAD profile, subject, and dates."""
    csr = new_csr(tmp_path, IDENTITY)
    status, answer = call(server, "POST", "/v1/sign", body(node.name, node.key, csr))
    assert status == 200, answer
    shapes = [policy_of(controller_sign(pki, csr)), policy_of(leaf_of(answer["chain"]))]
    for shape in shapes:
        assert shape["subject"] == "O=cluster.local" and shape["san"] == [IDENTITY] and shape["ca"] is False
        assert shape["key_usage"] == sorted(("digital_signature", "key_encipherment"))
        assert shape["extended_key_usage"] == ["serverAuth", "clientAuth"]
        assert shape["lifetime"] == datetime.timedelta(hours=24) + policy.BACKDATE
        assert policy.BACKDATE <= shape["backdated"] < policy.BACKDATE + datetime.timedelta(minutes=2)
    assert shapes[0]["extensions"] == shapes[1]["extensions"] == sorted([
        ("subjectAltName", False), ("keyUsage", True), ("extendedKeyUsage", False), ("basicConstraints", True),
        ("authorityKeyIdentifier", False), ("subjectKeyIdentifier", False)])
    assert policy.WORKLOAD.key_usage == ("digitalSignature", "keyEncipherment")


def _tampered(csr: str) -> str:
    der = bytearray(base64.b64decode("".join(csr.strip().splitlines()[1:-1])))
    der[-1] ^= 0x01
    return "-----BEGIN CERTIFICATE REQUEST-----\n%s\n-----END CERTIFICATE REQUEST-----\n" % "\n".join(
        re.findall(".{1,64}", base64.b64encode(bytes(der)).decode()))


def _csr_with(tmp_path: Path, key_args: list[str], san: str | None) -> str:
    key = tmp_path / f"bad-{secrets.token_hex(4)}.pem"
    args = ["req", "-new", "-newkey", *key_args, "-nodes", "-keyout", str(key), "-subj", "/O=cluster.local"]
    return openssl(*args, *(["-addext", f"subjectAltName={san}"] if san else []))


EC = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
BAD_CSRS = {
    "another identity": lambda t: _csr_with(t, EC, f"URI:{OTHER}"),
    "two names": lambda t: _csr_with(t, EC, f"URI:{IDENTITY},DNS:reviews.default.svc"),
    "two URIs": lambda t: _csr_with(t, EC, f"URI:{IDENTITY},URI:{OTHER}"),
    "a DNS name only": lambda t: _csr_with(t, EC, "DNS:reviews.default.svc"),
    "no subjectAltName": lambda t: _csr_with(t, EC, None),
    "another trust domain": lambda t: _csr_with(t, EC, "URI:spiffe://bank.example/ns/default/sa/reviews"),
    "RSA 1024": lambda t: _csr_with(t, ["rsa:1024"], f"URI:{IDENTITY}"),
    "EC P-521": lambda t: _csr_with(t, ["ec", "-pkeyopt", "ec_paramgen_curve:P-521"], f"URI:{IDENTITY}"),
    "a bad signature": lambda t: _tampered(_csr_with(t, EC, f"URI:{IDENTITY}")),
    "two CSRs": lambda t: _csr_with(t, EC, f"URI:{IDENTITY}") * 2,
    "not DER": lambda t: "-----BEGIN CERTIFICATE REQUEST-----\nMAMCAQA=\n-----END CERTIFICATE REQUEST-----\n",
    "a certificate": lambda t: (pki_bundle_text(t)),
}


def pki_bundle_text(_tmp: Path) -> str:
    return user_root(_tmp / "a-cert")[0].read_text()


@pytest.mark.parametrize("case", sorted(BAD_CSRS))
def test_both_signers_refuse_the_same_csrs(pki, server, node, tmp_path, case):
    """What policy.py refuses, both signers refuse, each with its own cryptography for the signature."""
    csr = BAD_CSRS[case](tmp_path)
    with pytest.raises(ca_module.CAError) as refused:
        controller_sign(pki, csr)
    before = server.signed()
    status, answer = call(server, "POST", "/v1/sign", body(node.name, node.key, csr))
    assert status in (400, 403) and "chain" not in answer and server.signed() == before, answer
    assert answer["error"].startswith("csr: "), answer
    if "signature" not in case and "DER" not in case:  # the parts the policy decides: the same words
        assert str(refused.value).split(";")[0] == answer["error"].split(";")[0]


@pytest.mark.parametrize("lifetime", [0, -1, policy.MAX_LIFETIME_HOURS + 1])
def test_both_signers_keep_lifetimes_in_bounds(pki, tmp_path, lifetime):
    with pytest.raises(ca_module.CAError, match="lifetime_hours must be a whole number of hours from 1 to 2160"):
        controller_sign(pki, new_csr(tmp_path, IDENTITY), lifetime=lifetime)
    refused = server_cli(write_server_config(tmp_path / "server.json", pki.state, lifetime_hours=lifetime), "tls")
    assert refused.returncode == 2 and "lifetime_hours must be a whole number of hours" in refused.stderr
