"""The PKI modules: the mesh CA (vmesh_ca, vmesh_ca_sign) and workload certificates born on the VM
(vmesh_workload_key, vmesh_workload_cert), run through ansible-playbook on localhost as a role would chain them."""

from __future__ import annotations

import base64
import hashlib
import os
import re

from harness.pki import GROUP, IDENTITY, assert_no_private_key, ca_task, count_certs, ext, flow, mode, ok, openssl
from harness.pki import play, user_intermediate, user_root, verifies


def test_ca_four_steps(tmp_path):
    ca = tmp_path / "ca"
    options = {"intermediate": True, "trust_domain": "example.org"}
    (checked,) = play(tmp_path, [ca_task(ca, **options)], check=True)
    assert ok(checked)["changed"] is True and not ca.exists()
    assert set(checked["created"]) == {"root-cert.pem", "root-key.pem", "ca-cert.pem", "ca-key.pem"}
    (applied,) = play(tmp_path, [ca_task(ca, **options)])
    assert ok(applied)["changed"] is True
    assert sorted(p.name for p in ca.iterdir()) == ["ca-cert.pem", "ca-key.pem", "root-cert.pem", "root-key.pem"]
    assert mode(ca) == 0o700 and mode(ca / "root-key.pem") == 0o600 and mode(ca / "ca-key.pem") == 0o600
    assert count_certs(applied["trust_bundle"]) == 1 and count_certs(applied["chain"]) == 1
    assert applied["trust_bundle"] == (ca / "root-cert.pem").read_text()
    assert applied["chain"] == (ca / "ca-cert.pem").read_text()
    der = base64.b64decode("".join(applied["trust_bundle"].strip().splitlines()[1:-1]))
    assert applied["root_fingerprint"] == hashlib.sha256(der).hexdigest() and applied["previous_fingerprints"] == []
    subject = openssl("x509", "-noout", "-nameopt", "RFC2253", "-subject", data=applied["trust_bundle"])
    assert subject == "subject=CN=vmesh root CA (example.org),O=example.org\n"
    assert applied["diff"]["after"]["root"]["fingerprint"] == applied["root_fingerprint"]
    before = {p.name: p.read_bytes() for p in ca.iterdir()}
    (again,) = play(tmp_path, [ca_task(ca, **options)], check=True)
    assert ok(again)["changed"] is False and again["trust_bundle"] == applied["trust_bundle"]
    (again,) = play(tmp_path, [ca_task(ca, **options)])
    assert ok(again)["changed"] is False and again["created"] == []
    assert {p.name: p.read_bytes() for p in ca.iterdir()} == before
    assert_no_private_key(tmp_path, ca / "root-key.pem", ca / "ca-key.pem")


def test_issue_four_steps_and_the_installed_files(tmp_path):
    ca, certs = tmp_path / "ca", tmp_path / "certs"
    options = {"intermediate": True}
    checked = play(tmp_path, flow(ca, certs, ca_options=options), check=True)
    assert [r["changed"] for r in checked] == [True, True, False, True]
    assert checked[1]["needed"] is True and checked[1]["reason"] == "missing" and checked[1]["csr"] == ""
    assert checked[2]["skipped"] is True and checked[2]["chain"] == ""
    assert not ca.exists() and not certs.exists()

    applied = [ok(r) for r in play(tmp_path, flow(ca, certs, ca_options=options))]
    assert [r["changed"] for r in applied] == [True, True, False, True]
    assert "BEGIN CERTIFICATE REQUEST" in applied[1]["csr"]
    assert applied[3]["changed_files"] == ["cert-chain.pem", "key.pem", "root-cert.pem"]
    assert applied[3]["serial"] == applied[2]["serial"] and applied[3]["not_after"] == applied[2]["not_after"]
    assert applied[3]["identity"] == IDENTITY

    for check in (True, False):
        again = [ok(r) for r in play(tmp_path, flow(ca, certs, ca_options=options), check=check)]
        assert [r["changed"] for r in again] == [False, False, False, False]
        assert again[1]["needed"] is False and again[1]["serial"] == applied[2]["serial"]
        assert again[2].get("skipped") is True

    # what Envoy reads: the URI SAN is the identity, the chain verifies to the bundle, the key is private
    chain = (certs / "cert-chain.pem").read_text()
    assert chain == applied[2]["chain"] and count_certs(chain) == 2
    assert f"URI:{IDENTITY}" in ext(chain, "subjectAltName")
    assert "O=cluster.local" in openssl("x509", "-noout", "-nameopt", "RFC2253", "-subject", data=chain)
    usage = ext(chain, "keyUsage,extendedKeyUsage,basicConstraints")
    assert "Digital Signature, Key Encipherment" in usage and "CA:FALSE" in usage
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in usage
    assert verifies(certs)
    assert (certs / "root-cert.pem").read_text() == applied[0]["trust_bundle"]
    assert mode(certs / "key.pem") == 0o640 and mode(certs / "cert-chain.pem") == 0o644 and mode(certs) == 0o750
    assert openssl("pkey", "-in", str(certs / "key.pem"), "-pubout") == openssl(
        "x509", "-noout", "-pubkey", "-in", str(certs / "cert-chain.pem"))
    # the atomic-writer layout Envoy's watched_directory expects
    version = os.readlink(certs / "..data")
    assert re.fullmatch(r"\.\.\d{8}T\d{6}\.[0-9a-f]{6}", version)
    assert {name: os.readlink(certs / name) for name in ("cert-chain.pem", "key.pem", "root-cert.pem")} == {
        name: f"..data/{name}" for name in ("cert-chain.pem", "key.pem", "root-cert.pem")}
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        [version, "..data", "cert-chain.pem", "key.pem", "root-cert.pem"])
    assert_no_private_key(tmp_path, certs / "key.pem", ca / "ca-key.pem", ca / "root-key.pem")


def test_sign_refuses_a_csr_for_another_identity_or_with_a_bad_signature(tmp_path):
    ca, certs = tmp_path / "ca", tmp_path / "certs"
    other = "spiffe://cluster.local/ns/default/sa/ratings"
    good = openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                   str(tmp_path / "k.pem"), "-subj", "/O=cluster.local", "-addext", f"subjectAltName=URI:{IDENTITY}")
    wrong_der = bytearray(base64.b64decode("".join(good.strip().splitlines()[1:-1])))
    wrong_der[-1] ^= 0x01  # the last byte of the signature
    tampered = "-----BEGIN CERTIFICATE REQUEST-----\n%s\n-----END CERTIFICATE REQUEST-----\n" % "\n".join(
        re.findall(".{1,64}", base64.b64encode(bytes(wrong_der)).decode()))
    extra = openssl("req", "-new", "-key", str(tmp_path / "k.pem"), "-subj", "/O=cluster.local", "-addext",
                    f"subjectAltName=URI:{IDENTITY},DNS:reviews.default.svc")
    results = play(tmp_path, [
        ca_task(ca),
        {"vmesh.mesh.workload_key": {"path": str(certs), "identity": other, "group": GROUP}},
        {"vmesh.mesh.ca_sign": {"path": str(ca), "csr": "{{ r1.csr }}", "identity": IDENTITY}},
        {"vmesh.mesh.ca_sign": {"path": str(ca), "csr": tampered, "identity": IDENTITY}},
        {"vmesh.mesh.ca_sign": {"path": str(ca), "csr": extra, "identity": IDENTITY}},
        {"vmesh.mesh.ca_sign": {"path": str(ca), "csr": "{{ r1.csr }}", "identity": other}},
    ])
    assert ok(results[1])["needed"] is True
    assert results[2]["failed"] is True and "URI:%s" % IDENTITY in results[2]["msg"]
    assert "asks for subjectAltName URI:%s" % other in results[2]["msg"] and "refused" in results[2]["msg"]
    assert results[3]["failed"] is True and "signature is invalid" in results[3]["msg"]
    assert results[4]["failed"] is True and "DNS:reviews.default.svc" in results[4]["msg"]
    assert f"URI:{other}" in ext(ok(results[5])["certificate"], "subjectAltName")


def test_renewal_reasons(tmp_path):
    ca, certs = tmp_path / "ca", tmp_path / "certs"
    first = [ok(r) for r in play(tmp_path, flow(ca, certs))]
    assert first[3]["changed"] is True
    key_before = (certs / "key.pem").read_text()

    forced = [ok(r) for r in play(tmp_path, flow(ca, certs, force=True))]
    assert forced[1]["reasons"] == ["forced"] and forced[3]["changed"] is True
    assert forced[3]["serial"] != first[3]["serial"] and (certs / "key.pem").read_text() != key_before

    # a 1-hour certificate: fine with the default ratio, expiring when 99% of its life must remain
    short = [ok(r) for r in play(tmp_path, flow(ca, certs, force=True, lifetime=1))]
    assert short[3]["changed"] is True
    checked = [ok(r) for r in play(tmp_path, flow(ca, certs)[:2], check=True)]
    assert checked[1]["needed"] is False
    checked = [ok(r) for r in play(tmp_path, flow(ca, certs, ratio=0.99)[:2], check=True)]
    assert checked[1]["needed"] is True and checked[1]["reason"] == "expiring" and checked[1]["changed"] is True
    assert not (certs / "pending").exists()

    other = "spiffe://cluster.local/ns/default/sa/ratings"
    moved = [ok(r) for r in play(tmp_path, flow(ca, certs, identity=other))]
    assert moved[1]["reason"] == "identity" and moved[3]["identity"] == other

    # key.pem that does not match the certificate (a botched manual edit)
    version = certs / os.readlink(certs / "..data")
    os.chmod(version / "key.pem", 0o600)
    (version / "key.pem").write_text(openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"))
    checked = [ok(r) for r in play(tmp_path, flow(ca, certs, identity=other)[:2], check=True)]
    assert checked[1]["reason"] == "key"

    # an interrupted run: the pending key is reused, the CSR is made again
    interrupted = play(tmp_path, flow(ca, certs, identity=other)[:2])
    pending_pub = openssl("pkey", "-in", str(certs / "pending" / "key.pem"), "-pubout")
    assert mode(certs / "pending") == 0o700 and mode(certs / "pending" / "key.pem") == 0o600
    resumed = [ok(r) for r in play(tmp_path, flow(ca, certs, identity=other))]
    assert resumed[1]["changed"] is True and resumed[1]["csr"] != interrupted[1]["csr"]
    assert openssl("pkey", "-in", str(certs / "key.pem"), "-pubout") == pending_pub
    assert not (certs / "pending").exists() and verifies(certs)
    assert_no_private_key(tmp_path, certs / "key.pem", ca / "root-key.pem")


def test_install_refuses_a_chain_for_another_key(tmp_path):
    ca, certs = tmp_path / "ca", tmp_path / "certs"
    play(tmp_path, flow(ca, certs))
    def in_force():
        return {p.name: os.readlink(p) if p.is_symlink() else None for p in certs.iterdir() if p.name != "pending"}

    before = in_force()
    # a CSR made with a key that is not the pending one
    csr = openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                  str(tmp_path / "stray.pem"), "-subj", "/O=cluster.local", "-addext", f"subjectAltName=URI:{IDENTITY}")
    results = play(tmp_path, [
        ca_task(ca),
        {"vmesh.mesh.workload_key": {"path": str(certs), "identity": IDENTITY, "group": GROUP,
                                "force": True}},
        {"vmesh.mesh.ca_sign": {"path": str(ca), "csr": csr, "identity": IDENTITY}},
        {"vmesh.mesh.workload_cert": {"path": str(certs), "chain": "{{ r2.chain }}", "trust_bundle": "{{ r0.trust_bundle }}",
                                 "group": GROUP}},
    ])
    assert results[3]["failed"] is True and "does not match" in results[3]["msg"]
    assert in_force() == before
    assert verifies(certs)


def test_root_rotation(tmp_path):
    ca, certs = tmp_path / "ca", tmp_path / "certs"
    options = {"intermediate": True}
    first = [ok(r) for r in play(tmp_path, flow(ca, certs, ca_options=options))]
    old_root_key = (ca / "root-key.pem").read_text()
    old_leaf = (certs / "cert-chain.pem").read_text()

    (checked,) = play(tmp_path, [ca_task(ca, rotate=True, **options)], check=True)
    assert ok(checked)["changed"] is True and (ca / "root-key.pem").read_text() == old_root_key
    assert not (ca / "previous-roots.pem").exists()

    # step 1: a new root (and intermediate); the bundle trusts both; the old leaf still verifies
    (rotated,) = play(tmp_path, [ca_task(ca, rotate=True, **options)])
    assert ok(rotated)["changed"] is True and rotated["reasons"] == ["rotate"]
    assert count_certs(rotated["trust_bundle"]) == 2
    assert rotated["previous_fingerprints"] == [first[0]["root_fingerprint"]]
    assert rotated["root_fingerprint"] != first[0]["root_fingerprint"]
    assert rotated["trust_bundle"].startswith((ca / "root-cert.pem").read_text())
    assert (ca / "root-key.pem").read_text() != old_root_key
    (tmp_path / "bundle.pem").write_text(rotated["trust_bundle"])
    assert verifies(certs, tmp_path / "bundle.pem")

    # the bundle reaches the VM first (no chain: only root-cert.pem changes), the old leaf stays in force
    checked = play(tmp_path, flow(ca, certs, ca_options=options)[:2], check=True)
    assert checked[1]["reason"] == "issuer"
    bundle_only = play(tmp_path, [ca_task(ca, **options), {"vmesh.mesh.workload_cert": {
        "path": str(certs), "trust_bundle": "{{ r0.trust_bundle }}", "group": GROUP}}])
    assert ok(bundle_only[1])["changed_files"] == ["root-cert.pem"]
    assert bundle_only[1]["diff"]["after"]["bundle_fingerprints"] == [rotated["root_fingerprint"],
                                                                      first[0]["root_fingerprint"]]
    assert (certs / "cert-chain.pem").read_text() == old_leaf and verifies(certs)

    # step 2: reissue; the new leaf's issuer is the new intermediate
    reissued = [ok(r) for r in play(tmp_path, flow(ca, certs, ca_options=options))]
    assert reissued[1]["reason"] == "issuer" and reissued[3]["changed"] is True
    new_leaf = (certs / "cert-chain.pem").read_text()
    aki = ext(new_leaf, "authorityKeyIdentifier").splitlines()[1].strip()
    assert aki == ext(rotated["chain"], "subjectKeyIdentifier").splitlines()[1].strip()
    assert verifies(certs)
    assert [r["changed"] for r in play(tmp_path, flow(ca, certs, ca_options=options))] == [False] * 4

    # step 3: retire the old root; the bundle is one root again, and retiring twice changes nothing
    (retired,) = play(tmp_path, [ca_task(ca, retire_previous=True)])
    assert ok(retired)["changed"] is True and count_certs(retired["trust_bundle"]) == 1
    assert retired["previous_fingerprints"] == [] and (ca / "previous-roots.pem").read_text() == ""
    (again,) = play(tmp_path, [ca_task(ca, retire_previous=True)])
    assert ok(again)["changed"] is False
    final = [ok(r) for r in play(tmp_path, flow(ca, certs, ca_options=options))]
    assert final[3]["changed_files"] == ["root-cert.pem"] and final[1]["needed"] is False
    assert verifies(certs)
    assert_no_private_key(tmp_path, ca / "root-key.pem", ca / "ca-key.pem", certs / "key.pem")


def test_adopt_auser_root(tmp_path):
    ca, certs = tmp_path / "ca", tmp_path / "certs"
    root, root_key = user_root(tmp_path / "pki")
    options = {"root_cert": str(root), "root_key": str(root_key)}
    (checked,) = play(tmp_path, [ca_task(ca, **options)], check=True)
    assert ok(checked)["changed"] is True and not ca.exists()
    applied = [ok(r) for r in play(tmp_path, flow(ca, certs, ca_options=options))]
    assert applied[0]["changed"] is True and sorted(applied[0]["created"]) == ["root-cert.pem", "root-key.pem"]
    assert (ca / "root-cert.pem").read_bytes() == root.read_bytes() and mode(ca / "root-key.pem") == 0o600
    assert applied[0]["chain"] == "" and count_certs((certs / "cert-chain.pem").read_text()) == 1
    assert verifies(certs, root)
    assert [r["changed"] for r in play(tmp_path, flow(ca, certs, ca_options=options))] == [False] * 4

    # the key in the vault instead of a file: same key, nothing changes
    content = {"root_cert": str(root), "root_key_content": root_key.read_text()}
    (again,) = play(tmp_path, [ca_task(ca, **content)])
    assert ok(again)["changed"] is False

    # mistakes are refused with a clear message, and nothing changes
    other_root, other_key = user_root(tmp_path / "other")
    results = play(tmp_path, [ca_task(ca, root_cert=str(root), root_key=str(other_key)),
                              ca_task(ca, root_cert=str(other_root), root_key=str(other_key)),
                              ca_task(ca, root_cert=str(certs / "cert-chain.pem"))])
    assert results[0]["failed"] and "does not match root_cert" in results[0]["msg"]
    assert results[1]["failed"] and "holds a different root" in results[1]["msg"] and "rotate" in results[1]["msg"]
    assert results[2]["failed"] and "not a CA certificate" in results[2]["msg"]
    assert (ca / "root-cert.pem").read_bytes() == root.read_bytes()

    # rotating to the user's next root keeps the first one trusted
    (rotated,) = play(tmp_path, [ca_task(ca, rotate=True, root_cert=str(other_root), root_key=str(other_key))])
    assert ok(rotated)["changed"] is True and count_certs(rotated["trust_bundle"]) == 2
    assert rotated["previous_fingerprints"] == [applied[0]["root_fingerprint"]]
    assert_no_private_key(tmp_path, root_key, other_key, certs / "key.pem")


def test_adopt_a_user_intermediate_without_the_root_key(tmp_path):
    ca, certs = tmp_path / "ca", tmp_path / "certs"
    root, root_key = user_root(tmp_path / "pki")
    inter, inter_key = user_intermediate(tmp_path / "pki", root, root_key)
    options = {"root_cert": str(root), "intermediate_cert": str(inter),
               "intermediate_key_content": inter_key.read_text()}
    applied = [ok(r) for r in play(tmp_path, flow(ca, certs, ca_options=options))]
    assert sorted(p.name for p in ca.iterdir()) == ["ca-cert.pem", "ca-key.pem", "root-cert.pem"]
    assert applied[0]["chain"] == inter.read_text() and applied[0]["trust_bundle"] == root.read_text()
    assert count_certs((certs / "cert-chain.pem").read_text()) == 2 and verifies(certs, root)
    assert [r["changed"] for r in play(tmp_path, flow(ca, certs, ca_options=options))] == [False] * 4

    # the user's next intermediate under the same root: no rotation needed; workloads follow (issuer)
    inter2, inter2_key = user_intermediate(tmp_path / "pki", root, root_key, name="mesh2")
    renewed = {"root_cert": str(root), "intermediate_cert": str(inter2)}
    results = [ok(r) for r in play(tmp_path, flow(ca, certs, ca_options=renewed,
                                                   sign_options={"signer_key_content": inter2_key.read_text()}))]
    assert results[0]["changed"] is True and sorted(results[0]["removed"]) == ["ca-key.pem"]
    assert results[1]["reason"] == "issuer" and results[3]["changed"] is True and verifies(certs, root)

    # an intermediate the root did not issue is refused
    stranger_root, stranger_key = user_root(tmp_path / "stranger")
    stranger, _ = user_intermediate(tmp_path / "stranger", stranger_root, stranger_key)
    (refused,) = play(tmp_path, [ca_task(ca, root_cert=str(root), intermediate_cert=str(stranger))])
    assert refused["failed"] is True and "was not issued by root_cert" in refused["msg"]
    (nokey,) = play(tmp_path, [{"vmesh.mesh.ca_sign": {"path": str(ca), "csr": "x", "identity": IDENTITY}}])
    assert nokey["failed"] is True and "ca-key.pem is absent and signer_key_content is not given" in nokey["msg"]
    assert_no_private_key(tmp_path, inter_key, inter2_key, root_key, certs / "key.pem")
