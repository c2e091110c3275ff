"""What the PKI tests (tests/pki) share: a play on localhost that records every task's result, the CA and the
workload modules chained as the roles chain them, the CA server and the renewal agent installed as the roles install
them, requests to the server, and checks of what was issued. The fixtures built on it are in tests/pki/conftest.py."""

from __future__ import annotations

import base64
import contextlib
import grp
import http.client
import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2
from ansible_collections.vmesh.mesh.plugins.lookup.node_source import closure

from harness import BIN, ROOT, TARGET_PYTHON, free_port

IDENTITY = "spiffe://cluster.local/ns/default/sa/reviews"
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name
_runs = itertools.count()


#: A callback that writes every task's result, in order, to $VMESH_TEST_RESULTS (faster than a copy task).
RECORDER = """
import json, os
from ansible.plugins.callback import CallbackBase

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "vmesh_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.results = []

    def _record(self, result, **flags):
        # ansible-core moves "failed" and "skipped" out of the result into the callback that is called
        self.results.append(dict(result._result, **flags))
        with open(os.environ["VMESH_TEST_RESULTS"], "w") as handle:
            json.dump(self.results, handle)

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)
"""


def play(tmp_path: Path, tasks: list[dict], *, check=False, **variables) -> list[dict]:
    """Run ``tasks`` in one play on localhost (each registered as r0, r1, ...); return their results in order.
    Every result is also kept in ``tmp_path/results-*.json`` for :func:`assert_no_private_key`."""
    run = tmp_path / f"play-{next(_runs)}"
    run.mkdir()
    (run / "callback").mkdir()
    (run / "callback" / "vmesh_record.py").write_text(RECORDER)
    (run / "vars.json").write_text(json.dumps(variables))
    registered = [dict(task, register=f"r{i}", ignore_errors=True) for i, task in enumerate(tasks)]
    doc = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable}, "vars_files": [str(run / "vars.json")],
            "tasks": registered}]
    (run / "play.yml").write_text(json.dumps(doc))
    out = tmp_path / f"results-{run.name}.json"
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "--diff", str(run / "play.yml")] + ["--check"] * check
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=180,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), VMESH_TEST_RESULTS=str(out),
                                   ANSIBLE_CALLBACK_PLUGINS=str(run / "callback"),
                                   ANSIBLE_CALLBACKS_ENABLED="vmesh_record"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert len(results) == len(tasks), proc.stdout
    return results


def ok(result: dict) -> dict:
    assert not result.get("failed"), result.get("msg")
    return result


def ca_task(path: Path, **options) -> dict:
    return {"vmesh.mesh.ca": {"path": str(path), **options}}


def flow(ca: Path, certs: Path, *, identity=IDENTITY, lifetime=24, ratio=0.5, force=False, ca_options=None,
         sign_options=None) -> list[dict]:
    """The tasks of a role: CA (r0), key and CSR on the VM (r1), signing (r2, when needed), install (r3)."""
    return [
        ca_task(ca, **(ca_options or {})),
        {"vmesh.mesh.workload_key": {"path": str(certs), "identity": identity, "group": GROUP,
                                "issuer": "{{ r0.chain or r0.trust_bundle }}", "renew_ratio": ratio, "force": force}},
        {"vmesh.mesh.ca_sign": {"path": str(ca), "csr": "{{ r1.csr }}", "identity": identity, "lifetime_hours": lifetime,
                           **(sign_options or {})},
         "when": "r1.needed | default(false)"},
        {"vmesh.mesh.workload_cert": {"path": str(certs), "chain": "{{ r2.chain | default('') }}",
                                 "trust_bundle": "{{ r0.trust_bundle }}", "group": GROUP}},
    ]


def openssl(*args: str, data: str | None = None) -> str:
    proc = subprocess.run(["openssl", *args], input=data, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, LC_ALL="C"))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def verifies(certs: Path, bundle: Path | None = None) -> bool:
    """``openssl verify -CAfile bundle -untrusted chain leaf`` with the files in force."""
    chain = (certs / "cert-chain.pem").read_text()
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", chain, re.S)
    (certs.parent / "leaf.pem").write_text(blocks[0])
    proc = subprocess.run(["openssl", "verify", "-CAfile", str(bundle or certs / "root-cert.pem"), "-untrusted",
                           str(certs / "cert-chain.pem"), str(certs.parent / "leaf.pem")],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode == 0


def count_certs(pem: str) -> int:
    return pem.count("-----BEGIN CERTIFICATE-----")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ext(pem: str, name: str) -> str:
    return openssl("x509", "-noout", "-ext", name, data=pem)


def assert_no_private_key(tmp_path: Path, *key_files: Path) -> None:
    """No private key appears in any module result of the test: not its PEM, not the base64 lines that hold the
    private scalar (the last line of an EC key is its public key, which certificates rightly carry), not the
    scalar in hex."""
    results = "".join(p.read_text() for p in tmp_path.glob("results-*.json"))
    assert "PRIVATE KEY" not in results
    for key in key_files:
        body = key.read_text().splitlines()[1:-1]
        for line in body[:-1]:
            assert line not in results and json.dumps(line)[1:-1] not in results
        text = openssl("pkey", "-in", str(key), "-noout", "-text")
        scalar = "".join(re.search(r"priv:\n(.*?)\npub:", text, re.S).group(1).split()).replace(":", "")
        assert scalar not in results.replace(":", "").lower()


def user_root(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(exist_ok=True)
    (folder / "req.cnf").write_text("[req]\ndistinguished_name = dn\n[dn]\n")
    openssl("req", "-x509", "-config", str(folder / "req.cnf"), "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", "/O=Example Corp/CN=Example Root",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash", "-keyout", str(folder / "root.key"),
            "-out", str(folder / "root.pem"))
    return folder / "root.pem", folder / "root.key"


def user_intermediate(folder: Path, root: Path, root_key: Path, name="mesh") -> tuple[Path, Path]:
    (folder / f"{name}.ext").write_text("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,"
                                        "cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    openssl("req", "-new", "-config", str(folder / "req.cnf"), "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-subj", f"/O=Example Corp/CN=Example {name}", "-keyout", str(folder / f"{name}.key"),
            "-out", str(folder / f"{name}.csr"))
    openssl("x509", "-req", "-in", str(folder / f"{name}.csr"), "-CA", str(root), "-CAkey", str(root_key),
            "-set_serial", "0x" + os.urandom(8).hex(), "-days", "10", "-extfile", str(folder / f"{name}.ext"),
            "-out", str(folder / f"{name}.pem"))
    return folder / f"{name}.pem", folder / f"{name}.key"


# one folder per pytest-xdist worker: each installs at import, and two at once in one folder collide
INSTALLS = ROOT / ".cache" / "node-install" / os.environ.get("PYTEST_XDIST_WORKER", "main")
CODE = ("ansible_collections", "vmesh", "mesh", "plugins", "module_utils")


def install_program(name: str, home: Path, lib: Path, template: Path, **variables) -> Path:
    """Install module_utils/<name>.py as its role does: the node_source lookup's files (it and what it imports)
    in ``lib`` laid out as the collection, and the role's launcher template rendered in ``home/bin``; returns the
    launcher. Nothing else is on its path: it runs with ``python3 -I``, as on a VM."""
    shutil.rmtree(home, ignore_errors=True)
    code = lib.joinpath(*CODE)
    code.mkdir(parents=True)
    for file_name, text in closure([name]).items():  # what the lookup returns (test_node_source_ships_...)
        (code / file_name).write_text(text)
    launcher = home / "bin" / template.name.removesuffix(".j2")
    launcher.parent.mkdir(parents=True)
    launcher.write_text(jinja2.Template(template.read_text(), keep_trailing_newline=True).render(
        ansible_managed="Ansible managed (test)", **variables))
    launcher.chmod(0o755)
    return launcher


SERVER = install_program("ca_server", INSTALLS / "vmesh-ca", INSTALLS / "vmesh-ca" / "lib",
                         ROOT / "roles" / "ca_server" / "templates" / "vmesh-ca-server.j2",
                         ca_server_install_dir=str(INSTALLS / "vmesh-ca"))
AGENT = install_program("renew", INSTALLS / "vmesh", INSTALLS / "vmesh" / "lib" / "renew",
                        ROOT / "roles" / "identity" / "templates" / "vmesh-renew.j2",
                        __identity_renewal_lib=str(INSTALLS / "vmesh" / "lib" / "renew"))
ENV = dict(os.environ, LC_ALL="C")
OTHER = "spiffe://cluster.local/ns/default/sa/ratings"
SERVER_ID = "spiffe://cluster.local/ns/istio-system/sa/vmesh-ca"


# --- the CA, as the ca_server role makes it ------------------------------------------------------------------------


def write_server_config(path: Path, state: Path, port: int = 0, **settings) -> Path:
    path.write_text(json.dumps({"listen": "127.0.0.1", "port": port or 1, "state_dir": str(state),
                                "server_names": ["127.0.0.1"], **settings}))
    return path


def server_cli(config: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([TARGET_PYTHON, "-I", str(SERVER), "--config", str(config), *command], capture_output=True,
                          text=True, env=ENV, timeout=60)


def ca_server_tasks(ca: Path, state: Path, config: Path) -> list[dict]:
    """The ca_server role's steps on one host: root (r0), the intermediate's key born in the state dir (r1), its
    CSR and the certificate in force (r2), the root signs (r3), the certificate and the bundle installed (r4, r5)."""
    request = "(r2.stdout | from_json)"
    return [
        {"vmesh.mesh.ca": {"path": str(ca)}},
        {"vmesh.mesh.node_key": {"path": str(state / "intermediate-key.pem"), "owner": OWNER, "group": GROUP}},
        {"ansible.builtin.command": {"argv": [TARGET_PYTHON, "-I", str(SERVER), "--config", str(config),
                                              "intermediate-request"]},
         "changed_when": False, "check_mode": False},
        {"vmesh.mesh.ca_sign_intermediate": {"path": str(ca), "csr": "{{ %s.csr }}" % request,
                                        "current": "{{ %s.current }}" % request, "name_constraints": True,
                                        "server_names": ["127.0.0.1"]}},
        {"ansible.builtin.copy": {"content": "{{ r3.certificate }}", "dest": str(state / "intermediate-cert.pem"),
                                  "mode": "0644"}},
        {"ansible.builtin.copy": {"content": "{{ r3.trust_bundle }}", "dest": str(state / "root-cert.pem"),
                                  "mode": "0644"}},
    ]


@dataclass
class Pki:
    base: Path
    ca: Path
    state: Path
    config: Path
    bundle: Path


@dataclass
class Running:
    port: int
    log: Path
    state: Path
    bundle: Path

    def log_text(self) -> str:
        return self.log.read_text()

    def signed(self) -> int:
        return self.log_text().count(" signed serial=")


def tls_context(bundle: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(bundle))


def call(running: Running, method: str, path: str, body: bytes | None = None,
         declared_length: int | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of one request; ``declared_length`` sends only headers announcing that many bytes."""
    conn = http.client.HTTPSConnection("127.0.0.1", running.port, context=tls_context(running.bundle), timeout=10)
    try:
        if declared_length is None:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        else:
            conn.putrequest(method, path)
            conn.putheader("Content-Length", str(declared_length))
            conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


@contextlib.contextmanager
def ca_server(pki: Pki, state: Path | None = None, **settings):
    """The server on 127.0.0.1:<free port> with ``state`` (the shared one by default), stopped afterwards."""
    state = state or pki.state
    port = free_port()
    config = write_server_config(state.parent / f"server-{port}.json", state, port, **settings)
    log = state.parent / f"server-{port}.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([TARGET_PYTHON, "-I", str(SERVER), "--config", str(config), "serve"], stdout=handle,
                                stderr=subprocess.STDOUT, env=ENV)
    running = Running(port=port, log=log, state=state, bundle=state / "root-cert.pem")
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                if call(running, "GET", "/healthz")[0] == 200:
                    break
            assert time.monotonic() < deadline, "the CA server did not answer within 15 s: " + log.read_text()
            time.sleep(0.1)
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- nodes and requests, made here independently of the agent ----------------------------------------------------


def new_key(path: Path) -> str:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    return openssl("pkey", "-in", str(path), "-pubout")


def register(state: Path, node: str, identity: str, public_key: str) -> None:
    (state / "nodes" / f"{node}.json").write_text(json.dumps({"identity": identity, "public_key": public_key}))


def new_csr(folder: Path, identity: str, extra: str = "") -> str:
    key = folder / f"csr-key-{secrets.token_hex(4)}.pem"
    return openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                   str(key), "-subj", "/O=cluster.local", "-addext", f"subjectAltName=URI:{identity}{extra}")


def body(node: str, key: Path, csr: str, *, when: float | None = None, nonce: str | None = None,
         payload: bytes | None = None) -> bytes:
    """POST /v1/sign's body: the request signed with ``key`` (``openssl dgst -sha256 -sign``)."""
    payload = payload or json.dumps({"node": node, "csr": csr, "time": int(time.time() if when is None else when),
                                     "nonce": nonce or secrets.token_hex(16)}).encode()
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=payload,
                               capture_output=True, check=True, timeout=30).stdout
    return json.dumps({"request": base64.b64encode(payload).decode(),
                       "signature": base64.b64encode(signature).decode()}).encode()


@dataclass
class Node:
    name: str
    key: Path
    identity: str


def leaf_of(chain: str) -> str:
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", chain, re.S)[0]


def verify_chain(chain: str, bundle: Path, folder: Path) -> subprocess.CompletedProcess:
    (folder / "chain.pem").write_text(chain)
    (folder / "leaf.pem").write_text(leaf_of(chain))
    return subprocess.run(["openssl", "verify", "-CAfile", str(bundle), "-untrusted", str(folder / "chain.pem"),
                           str(folder / "leaf.pem")], capture_output=True, text=True, timeout=30)
