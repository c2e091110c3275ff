"""Mesh mTLS with real sidecars: PeerAuthentication modes, auto mTLS, ISTIO_MUTUAL and the identities each side sees.

Hosts: ``client`` (a mesh client, service account ``sleep``), ``echo-v1`` (HTTP on 8080, TCP on 9000) and
``outside``, a machine on the same network without a sidecar, which can only speak plaintext; ``newcomer`` and
``stranger`` are mesh clients for the handshake tests.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import certs
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

HOSTS = {
    "client": {"vmesh_service_account": "sleep"},
    "echo-v1": {"vmesh_service": "echo", "vmesh_labels": {"app": "echo", "version": "v1"},
                "vmesh_ports": [{"port": 8080, "protocol": "http"}, {"port": 9000, "protocol": "tcp"}]},
    "outside": {"netmesh_outside": True},
    # Clients used by one test each: a sidecar keeps its mTLS connections open across certificate swaps (new
    # certificates are for new connections), so a test about handshakes starts from a client with none.
    "newcomer": {},
    "stranger": {"vmesh_service_account": "stranger"},
}
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"


def peer_auth(name: str, namespace: str, mode: str, extra: str = "") -> tuple[str, str]:
    return (f"mesh/{name}.yaml", f"""apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  mtls: {{mode: {mode}}}
{extra}""")


STRICT_MESH = peer_auth("default", "istio-system", "STRICT")
DISABLE_NS = peer_auth("plain", "default", "DISABLE")
ECHO_PORT_LEVEL = peer_auth("echo", "default", "STRICT", """  selector: {matchLabels: {app: echo}}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
""")


def dr_istio_mutual(sans: list[str] | None = None) -> tuple[str, str]:
    alt = f", subjectAltNames: {sans}" if sans else ""
    return ("mesh/dr.yaml", f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL{alt}}}
""")


@pytest.fixture(scope="module")
def mesh(netmesh_module):
    mesh = netmesh_module(HOSTS)
    mesh.start_echo("echo-v1")
    mesh.start_echo("echo-v1", 9000, tcp=True)
    return mesh


@pytest.fixture
def policies(mesh):
    """Each test pushes its documents; afterwards the mesh goes back to no policy (PERMISSIVE)."""
    yield mesh.push
    mesh.push([])


def xfcc(response) -> str:
    assert response.status == 200, response
    return response.json()["headers"].get("x-forwarded-client-cert", "")


def from_outside(mesh, port: int = 8080, **kw):
    return mesh.request("outside", f"http://{mesh.address('echo-v1')}:{port}/", **kw)


def tcp_from_outside(mesh) -> bytes:
    # Envoy drops a connection whose peer closes (FIN) before its listener filters have seen the first bytes; a
    # real client (nc, a database driver) keeps its side open while it waits for the answer
    try:
        return mesh.tcp("outside", mesh.address("echo-v1"), 9000, "hello mesh\n", timeout=3, pause=0.3)
    except Exception:  # refused or reset: no answer
        return b""


def test_permissive_by_default_mesh_calls_are_mtls_with_both_identities(mesh, policies):
    seen = xfcc(mesh.request("client", "http://echo:8080/"))
    # Envoy's X-Forwarded-Client-Cert: By= the server's own identity, URI= the client's certificate
    assert f"By={ECHO_ID}" in seen and f"URI={CLIENT_ID}" in seen, seen
    # a plaintext caller still gets in, and cannot forge an identity
    forged = from_outside(mesh, headers={"x-forwarded-client-cert": f"URI={CLIENT_ID}"})
    assert forged.status == 200 and xfcc(forged) == ""
    assert tcp_from_outside(mesh).startswith(b"host=echo-v1")


def test_strict_refuses_plaintext_and_keeps_mesh_traffic(mesh, policies):
    policies([STRICT_MESH])
    assert f"URI={CLIENT_ID}" in xfcc(mesh.request("client", "http://echo:8080/"))
    assert mesh.tcp("client", "echo", 9000, "ping").startswith(b"host=echo-v1")
    refused = from_outside(mesh)
    assert refused.status == 0 and refused.error, refused
    assert tcp_from_outside(mesh) == b""
    # a mesh host's process that bypasses its sidecar (the proxy's own uid is not captured) is plaintext too
    bypass = mesh.request("client", f"http://{mesh.address('echo-v1')}:8080/", uid=1337)
    assert bypass.status == 0, bypass
    # undeclared ports are closed to plaintext as well under STRICT
    assert mesh.request("outside", f"http://{mesh.address('echo-v1')}:8081/").status == 0


def test_port_level_override(mesh, policies):
    policies([ECHO_PORT_LEVEL])
    assert from_outside(mesh).status == 200  # 8080 PERMISSIVE
    assert tcp_from_outside(mesh) == b""  # 9000 STRICT from the workload's policy
    assert mesh.tcp("client", "echo", 9000, "ping").startswith(b"host=echo-v1")


def test_disable_makes_clients_send_plaintext(mesh, policies):
    policies([DISABLE_NS])
    assert xfcc(mesh.request("client", "http://echo:8080/")) == ""  # auto mTLS: the server takes no mTLS
    assert from_outside(mesh).status == 200


def test_istio_mutual_checks_the_server_identity(mesh, policies):
    policies([dr_istio_mutual()])
    assert f"By={ECHO_ID}" in xfcc(mesh.request("client", "http://echo:8080/"))
    policies([dr_istio_mutual(["spiffe://cluster.local/ns/default/sa/payments"])])
    assert mesh.request("client", "http://echo:8080/").status == 503
    # ISTIO_MUTUAL to a server that has mTLS disabled fails, as in Istio
    policies([dr_istio_mutual(), DISABLE_NS])
    assert mesh.request("client", "http://echo:8080/").status == 503


def test_a_server_with_another_identity_is_refused_by_the_client(mesh, policies):
    mesh.issue("echo-v1", "spiffe://cluster.local/ns/default/sa/impostor")
    try:
        assert _eventually(lambda: mesh.request("newcomer", "http://echo:8080/").status == 503)
    finally:
        mesh.issue("echo-v1")
    assert _eventually(lambda: mesh.request("newcomer", "http://echo:8080/").status == 200)


def test_a_client_certificate_from_another_ca_is_refused(mesh, policies, tmp_path):
    policies([STRICT_MESH])
    rogue = certs.make_ca(tmp_path / "rogue-ca", "rogue CA")
    # the client still trusts the mesh CA (it could verify echo), but its own certificate is the rogue CA's
    stranger = mesh.identity("stranger")
    mesh.issue("stranger", stranger, ca_dir=rogue.parent, bundle=(mesh.ca_dir / "ca.crt").read_text())
    try:
        assert _eventually(lambda: mesh.request("stranger", "http://echo:8080/").status == 503)
    finally:
        mesh.issue("stranger")
    assert _eventually(lambda: mesh.request("stranger", "http://echo:8080/").status == 200)


def _eventually(check, attempts: int = 40) -> bool:
    """SDS reloads a swapped certificate within moments; poll a bounded number of times."""
    for _ in range(attempts):
        if check():
            return True
        time.sleep(0.1)
    return False


def test_root_rotation_under_load_fails_no_request(mesh, policies, tmp_path):
    """Istio's root rotation, step by step, while the client sends a steady stream, each request on a new
    connection (a new mTLS handshake): 1) both roots trusted, 2) certificates from the new root, 3) only the new
    root trusted. Envoy swaps each file set through SDS: no request fails and no Envoy restarts."""
    policies([STRICT_MESH, ("mesh/dr.yaml", """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  trafficPolicy:
    connectionPool: {http: {maxRequestsPerConnection: 1}}
""")])
    old_root = (mesh.ca_dir / "ca.crt").read_text()
    new_dir = certs.make_ca(tmp_path / "new-root", "vmesh netmesh CA 2").parent
    new_root = (new_dir / "ca.crt").read_text()
    pair = ["client", "echo-v1"]
    uptime = {host: mesh.uptime(host) for host in pair}
    try:
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(mesh.sample, "client", "http://echo:8080/", 600, concurrency=2)
            for host in pair:
                mesh.issue(host, bundle=old_root + new_root)
            time.sleep(0.5)
            for host in pair:
                mesh.issue(host, ca_dir=new_dir, bundle=old_root + new_root)
            time.sleep(0.5)
            for host in pair:
                mesh.issue(host, ca_dir=new_dir, bundle=new_root)
            counts = load.result(timeout=120)
        assert counts == {(200, "echo-v1"): 600}, counts
        assert all(mesh.uptime(host) >= uptime[host] for host in pair)
        serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(new_dir / "ca.crt")],
                                capture_output=True, text=True, check=True).stdout.strip().split("=")[1].lower()
        assert serial.lstrip("0") in mesh.admin("echo-v1", "/certs").lower()
        assert mesh.request("client", "http://echo:8080/").status == 200
    finally:
        for host in pair:
            mesh.issue(host)  # back to the mesh's own CA for the other tests
