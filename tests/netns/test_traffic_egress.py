"""ServiceEntry with real traffic: services outside the inventory, under the mesh-wide REGISTRY_ONLY policy.

External servers are network namespaces outside the mesh (no sidecar). The client's /etc/hosts gives their names,
as DNS would; its sidecar finds a ServiceEntry host by port and Host header (HTTP) or TLS server name, resolves
DNS entries itself, sends STATIC entries to their endpoints and NONE entries where the app was going, and
originates TLS where a DestinationRule says SIMPLE (port-level settings). Anything else is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.certs import ca_folder, make_ca, make_server
from harness.netmesh import FIRST_HOST_ADDRESS, NETWORK
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

CERTS = Path("/run/vmesh-tests-egress")
ORDER = ["client", "api", "other", "tlsonly"]
ADDRESS = {name: str(NETWORK.network_address + FIRST_HOST_ADDRESS + i) for i, name in enumerate(ORDER)}
NOBODY = str(NETWORK.network_address + 250)  # an address no host has

ENTRIES = f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {{number: 8080, name: http, protocol: HTTP}}
  - {{number: 8443, name: https, protocol: HTTPS}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: static}}
spec:
  hosts: [static.example.test]
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: {ADDRESS['other']}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wildcard}}
spec:
  hosts: ["*.wild.example.test"]
  resolution: NONE
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls-origination}}
spec:
  hosts: [tls.example.test]
  resolution: DNS
  ports:
  - {{number: 8080, name: http, protocol: HTTP}}
  - {{number: 8443, name: https, protocol: HTTPS}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tls-origination}}
spec:
  hosts: [tls.example.test]
  http:
  - match: [{{port: 8080}}]
    route: [{{destination: {{host: tls.example.test, port: {{number: 8443}}}}}}]
"""


def origination_rule(ca: Path) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tls-origination}}
spec:
  host: tls.example.test
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 8443}}
      tls: {{mode: SIMPLE, caCertificates: {ca}}}
"""


@pytest.fixture(scope="module")
def certs():
    with ca_folder(CERTS):
        make_ca(CERTS / "untrusted", "some other CA")
        for name in ("api", "other", "tls"):
            make_server(CERTS, CERTS, [f"{name}.example.test"], name)
        yield CERTS


@pytest.fixture(scope="module")
def mesh(netmesh_module, certs):
    names = [f"{ADDRESS['api']} api.example.test", f"{ADDRESS['other']} other.example.test",
             f"{NOBODY} static.example.test", f"{ADDRESS['other']} any.wild.example.test",
             f"{ADDRESS['tlsonly']} tls.example.test"]
    policy = {"vmesh_outbound_traffic_policy": "REGISTRY_ONLY"}
    hosts = {"client": {**policy, "netmesh_etc_hosts": names},
             "api": {"netmesh_outside": True}, "other": {"netmesh_outside": True},
             "tlsonly": {"netmesh_outside": True}}
    assert list(hosts) == ORDER
    mesh = netmesh_module(hosts, [("mesh/entries.yaml", ENTRIES)])
    for host in ("api", "other"):
        mesh.start_echo(host, 8080)
        mesh.start_echo(host, 8443, tls=(certs / f"{host}.crt", certs / f"{host}.key"))
    mesh.start_echo("tlsonly", 8443, tls=(certs / "tls.crt", certs / "tls.key"))
    return mesh


def test_service_entry_is_reachable_and_the_rest_is_refused(mesh):
    answer = mesh.request("client", "http://api.example.test:8080/")
    assert answer.status == 200, answer
    assert answer.headers["x-vmesh-host"] == "api"
    assert "x-envoy-upstream-service-time" in answer.headers  # routed by the sidecar, not passed through
    assert mesh.stats("client", "cluster.outbound|8080||api.example.test.upstream_rq_total")[
        "cluster.outbound|8080||api.example.test.upstream_rq_total"] >= 1
    refused = mesh.request("client", "http://other.example.test:8080/")
    assert refused.status == 502, refused  # REGISTRY_ONLY: a host no ServiceEntry names


def test_static_entry_goes_to_its_endpoints(mesh):
    # the name points at an address nobody has; the entry's endpoint answers
    answer = mesh.request("client", "http://static.example.test:8080/")
    assert answer.status == 200, answer
    assert answer.headers["x-vmesh-host"] == "other"


def test_resolution_none_goes_where_the_app_was_going(mesh):
    answer = mesh.request("client", "http://any.wild.example.test:8080/")
    assert answer.status == 200, answer
    assert answer.headers["x-vmesh-host"] == "other"


def test_tls_to_a_service_entry_passes_by_sni(mesh, certs):
    answer = mesh.request("client", "https://api.example.test:8443/", cafile=certs / "ca.crt")
    assert answer.status == 200, answer
    assert answer.headers["x-vmesh-host"] == "api"
    refused = mesh.request("client", "https://other.example.test:8443/", cafile=certs / "ca.crt")
    assert refused.status == 0, refused  # no entry for this server name: the connection is closed


def test_simple_tls_origination_with_port_level_settings(mesh, certs):
    # the app speaks plain HTTP to port 8080; its sidecar sends it to 8443 and speaks TLS there
    mesh.push([("mesh/entries.yaml", ENTRIES), ("mesh/dr.yaml", origination_rule(certs / "ca.crt"))])
    answer = mesh.request("client", "http://tls.example.test:8080/hello")
    assert answer.status == 200, answer
    assert answer.headers["x-vmesh-host"] == "tlsonly"
    assert answer.json()["path"] == "/hello"
    # the server's certificate is checked: with a CA that did not sign it, no answer comes back
    mesh.push([("mesh/entries.yaml", ENTRIES), ("mesh/dr.yaml", origination_rule(certs / "untrusted" / "ca.crt"))])
    assert mesh.request("client", "http://tls.example.test:8080/hello").status == 503
    # and without the DestinationRule, plaintext to a TLS port gets no answer either
    mesh.push([("mesh/entries.yaml", ENTRIES)])
    assert mesh.request("client", "http://tls.example.test:8080/hello").status in (502, 503)
