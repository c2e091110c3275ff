"""vmesh.mesh.converge: several host modules' work in one call, as the proxy role converges a whole sidecar: files
(a large one sent only when asked for), the node key, a certificate whose CSR is signed between two calls; bad
arguments in any step change nothing; a step's no_log options stay out of what is returned."""

from __future__ import annotations

import os

from ansible_collections.vmesh.mesh.plugins.modules import converge

from harness.pki import GROUP, IDENTITY, assert_no_private_key, ca_task, mode, ok, play, verifies


def _steps(tmp_path, certs=None):
    top = tmp_path / "opt"
    steps = [
        {"id": "files", "module": "host_files",
         "args": {"directories": [str(top), str(top / "bin")],
                  "files": [{"dest": str(top / "bin" / "big"), "src": str(tmp_path / "big.bin"), "mode": "0755"},
                            {"dest": str(top / "config.json"), "content": "{}\n"}]}},
        {"id": "node_key", "module": "node_key", "args": {"path": str(tmp_path / "node" / "node-key.pem"),
                                                          "group": GROUP}},
    ]
    if certs is not None:
        steps += [
            {"id": "workload_key", "module": "workload_key",
             "args": {"path": str(certs), "identity": IDENTITY, "group": GROUP, "issuer": "{{ r0.trust_bundle }}"}},
            {"id": "workload_cert", "module": "workload_cert",
             "args": {"path": str(certs), "trust_bundle": "{{ r0.trust_bundle }}", "group": GROUP}},
            {"id": "after", "module": "host_files",
             "args": {"files": [{"dest": str(top / "after-the-certificate"), "content": "x\n"}]}},
        ]
    return steps


def test_one_call_sends_a_large_file_when_asked_makes_the_node_key_and_then_changes_nothing(tmp_path):
    big = os.urandom(2 << 20)
    (tmp_path / "big.bin").write_bytes(big)
    task = {"vmesh.mesh.converge": {"steps": _steps(tmp_path)}}
    (checked,) = play(tmp_path, [task], check=True)
    assert ok(checked)["changed"] and not (tmp_path / "opt").exists() and not (tmp_path / "node").exists()
    (first,) = play(tmp_path, [task])
    assert ok(first)["changed"] and first["pending"] == ""
    assert (tmp_path / "opt" / "bin" / "big").read_bytes() == big and mode(tmp_path / "opt" / "bin" / "big") == 0o755
    assert str(tmp_path / "opt" / "bin" / "big") in first["step_results"]["files"]["changed_files"]
    assert first["step_results"]["node_key"]["reason"] == "missing"
    assert "BEGIN PUBLIC KEY" in first["step_results"]["node_key"]["public_key"]
    assert mode(tmp_path / "node" / "node-key.pem") == 0o600
    inode = os.stat(tmp_path / "opt" / "bin" / "big").st_ino
    (again,) = play(tmp_path, [task])
    assert ok(again)["changed"] is False and os.stat(tmp_path / "opt" / "bin" / "big").st_ino == inode
    assert again["step_results"]["node_key"]["public_key"] == first["step_results"]["node_key"]["public_key"]
    assert_no_private_key(tmp_path, tmp_path / "node" / "node-key.pem")


def test_a_csr_ends_the_call_and_the_chain_signed_meanwhile_finishes_it(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"small enough to pass in the call\n")
    ca, certs = tmp_path / "ca", tmp_path / "certs"
    steps = _steps(tmp_path, certs)
    tasks = [
        ca_task(ca),
        {"vmesh.mesh.converge": {"steps": steps}},
        {"vmesh.mesh.ca_sign": {"path": str(ca), "csr": "{{ r1.csr }}", "identity": IDENTITY},
         "when": "r1.pending == 'workload_key'"},
        {"vmesh.mesh.converge": {"steps": steps, "chain": "{{ r2.chain }}", "previous": "{{ r1 }}"},
         "when": "r2 is not skipped"},
    ]
    ca_made, first, signed, second = [ok(r) for r in play(tmp_path, tasks)]
    assert first["pending"] == "workload_key" and "BEGIN CERTIFICATE REQUEST" in first["csr"]
    # the steps after the CSR wait for the chain
    assert set(first["step_results"]) == {"files", "node_key", "workload_key"}
    assert second["changed"] and second["pending"] == ""
    assert second["step_results"]["workload_key"]["reason"] == "missing"  # the first call's, merged
    assert second["step_results"]["workload_cert"]["changed_files"] == ["cert-chain.pem", "key.pem", "root-cert.pem"]
    assert (certs / "cert-chain.pem").read_text() == signed["chain"] and verifies(certs)
    assert (tmp_path / "opt" / "after-the-certificate").read_text() == "x\n"
    _ca, again, not_signed, not_again = play(tmp_path, tasks)
    assert ok(again)["changed"] is False and again["pending"] == ""
    assert not_signed.get("skipped") and not_again.get("skipped")
    assert ca_made["trust_bundle"] == (certs / "root-cert.pem").read_text()
    assert_no_private_key(tmp_path, certs / "key.pem", ca / "root-key.pem")


def test_bad_arguments_in_any_step_stop_the_call_before_the_first_change(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"x\n")
    steps = _steps(tmp_path) + [{"id": "rules", "module": "redirect", "args": {"proxy_uid": "not a number"}}]
    (failed,) = play(tmp_path, [{"vmesh.mesh.converge": {"steps": steps}}])
    assert failed["failed"] and failed["msg"].startswith("step rules (redirect): ")
    assert "proxy_uid" in failed["msg"]
    assert not (tmp_path / "opt").exists() and not (tmp_path / "node").exists()
    (same_id,) = play(tmp_path, [{"vmesh.mesh.converge": {"steps": _steps(tmp_path)[:1] * 2}}])
    assert same_id["failed"] and "each id must be unique" in same_id["msg"]


class _Module:
    """What checked_steps reads of an AnsibleModule."""

    def __init__(self, **params):
        self.params = dict({"chain": "", "secrets": {}}, **params)
        self.no_log_values = set()


def test_a_steps_no_log_options_are_kept_from_what_is_returned():
    key = "-----BEGIN PRIVATE KEY-----\nnot really a key\n-----END PRIVATE KEY-----\n"
    module = _Module(steps=[{"id": "config", "module": "sidecar_config",
                             "args": {"dest": "/etc/vmesh/envoy", "envoy": "/opt/vmesh/bin/envoy", "files": {}}}],
                     secrets={"config": {"credential_texts": {"gw": {"key": key}}}})
    ((step, params),) = converge.checked_steps(module)
    assert params["credential_texts"] == {"gw": {"key": key}} and key in module.no_log_values
    signed = _Module(chain="CHAIN", steps=[{"id": "k", "module": "workload_key", "args": {}},
                                           {"id": "c", "module": "workload_cert",
                                            "args": {"path": "/etc/vmesh/certs", "trust_bundle": "B"}}])
    assert [(s["id"], p["chain"]) for s, p in converge.checked_steps(signed)] == [("c", "CHAIN")]


def test_a_program_step_reports_its_output_and_fails_with_its_message(tmp_path):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho \"$1: $(cat " + str(tmp_path / "state") + " 2>/dev/null)\"\n"
                    "[ \"$1\" = fail ] && { echo 'it broke' >&2; exit 3; }\nexit 0\n")
    tool.chmod(0o755)
    (tmp_path / "state").write_text("old")

    def step(word, **args):
        return {"id": word, "module": "program", "args": {"argv": [str(tool), word], **args}}

    task = {"vmesh.mesh.converge": {"steps": [step("issued", changed_prefix="issued"), step("show", read_only=True),
                                              step("show-missing", read_only=True)]}}
    task["vmesh.mesh.converge"]["steps"][2]["args"]["argv"] = [str(tmp_path / "not-installed-yet")]
    (checked,) = play(tmp_path, [task], check=True)
    # in check mode only a read-only program that is there runs
    assert ok(checked)["changed"] is False
    assert checked["step_results"]["issued"]["skipped"] and checked["step_results"]["show-missing"]["skipped"]
    assert checked["step_results"]["show"]["stdout"] == "show: old\n"
    del task["vmesh.mesh.converge"]["steps"][2]
    (ran,) = play(tmp_path, [task])
    assert ok(ran)["changed"] is True and ran["step_results"]["issued"]["stdout"] == "issued: old\n"
    assert ran["step_results"]["show"]["changed"] is False
    (failed,) = play(tmp_path, [{"vmesh.mesh.converge": {"steps": [step("show"), step("fail")]}}])
    assert failed["failed"] and failed["msg"] == "step fail (program): %s fail exited with 3: it broke" % tool
