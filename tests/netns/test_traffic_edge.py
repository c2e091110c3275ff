"""The edge of the mesh with real traffic: an ingress host running Istio Gateways, and TLS routes by SNI.

A browser outside the mesh (a network namespace with no sidecar) calls the ingress host's address, as a person
opens Bookinfo through the ingress VM: plain HTTP, HTTPS terminated with the user's certificate (credentialName
and file paths), an HTTP-to-HTTPS redirect, TLS passed through by SNI to a mesh service, and a TCP port. Inside
the mesh a client's TLS connections are routed by SNI to subsets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.certs import ca_folder, make_server
from harness.netmesh import FIRST_HOST_ADDRESS, NETWORK
from harness.netmesh_fixtures import netmesh_module, requires_netns  # noqa: F401

pytestmark = [pytest.mark.netns, requires_netns]

CERTS = Path("/run/vmesh-tests-edge")  # readable by the proxy's uid; removed after the module
INGRESS = str(NETWORK.network_address + FIRST_HOST_ADDRESS)  # the first host below

DOCS = f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [bookinfo.example.test]
    tls: {{mode: SIMPLE, credentialName: bookinfo-credential}}
  - port: {{number: 8444, name: https-files, protocol: HTTPS}}
    hosts: [files.example.test]
    tls: {{mode: SIMPLE, serverCertificate: {CERTS}/files.crt, privateKey: {CERTS}/files.key}}
  - port: {{number: 8081, name: http-redirect, protocol: HTTP}}
    hosts: [bookinfo.example.test]
    tls: {{httpsRedirect: true}}
  - port: {{number: 9443, name: tls, protocol: TLS}}
    hosts: [secure.example.test]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo}}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {{exact: /productpage}}
    - uri: {{prefix: /static}}
    route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure-edge}}
spec:
  hosts: [secure.example.test]
  gateways: [bookinfo-gateway]
  tls:
  - match: [{{sniHosts: [secure.example.test]}}]
    route: [{{destination: {{host: secure, port: {{number: 8443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-edge}}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  tcp:
  - route: [{{destination: {{host: tcp-echo, port: {{number: 9000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure}}
spec:
  hosts: [secure]
  tls:
  - match: [{{sniHosts: [v1.secure.example.test]}}]
    route: [{{destination: {{host: secure, subset: v1}}}}]
  - match: [{{sniHosts: [v2.secure.example.test]}}]
    route: [{{destination: {{host: secure, subset: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: secure
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


@pytest.fixture(scope="module")
def certs():
    with ca_folder(CERTS):
        make_server(CERTS, CERTS, ["bookinfo.example.test"], "bookinfo")
        make_server(CERTS, CERTS, ["files.example.test"], "files")
        make_server(CERTS, CERTS, ["secure.example.test", "v1.secure.example.test", "v2.secure.example.test"],
                    "secure")
        yield CERTS


@pytest.fixture(scope="module")
def mesh(netmesh_module, certs):
    credential = {"credentials/bookinfo-credential/tls.crt": (certs / "bookinfo.crt").read_text(),
                  "credentials/bookinfo-credential/tls.key": (certs / "bookinfo.key").read_text()}
    hosts = {
        "ingress": {"vmesh_labels": {"istio": "ingressgateway"}, "vmesh_credentials_dir": "{root}/credentials",
                    "netmesh_files": credential},
        "productpage-v1": {"vmesh_service": "productpage", "vmesh_ports": [{"port": 9080, "protocol": "http"}]},
        **{f"secure-v{i}": {"vmesh_service": "secure", "vmesh_labels": {"version": f"v{i}"},
                            "vmesh_ports": [{"port": 8443, "protocol": "tls"}]} for i in (1, 2)},
        "tcp-echo-v1": {"vmesh_service": "tcp-echo", "vmesh_ports": [{"port": 9000, "protocol": "tcp"}]},
        "client": {},
        "browser": {"netmesh_outside": True},
    }
    mesh = netmesh_module(hosts, [("mesh/edge.yaml", DOCS)])
    assert mesh.address("ingress") == INGRESS
    mesh.start_echo("productpage-v1")
    for i in (1, 2):
        mesh.start_echo(f"secure-v{i}", tls=(certs / "secure.crt", certs / "secure.key"))
    mesh.start_echo("tcp-echo-v1", tcp=True)
    return mesh


def test_gateway_routes_bookinfo_paths_to_productpage(mesh):
    answer = mesh.request("browser", f"http://{INGRESS}:8080/productpage")
    assert answer.status == 200, answer
    assert answer.headers["x-vmesh-host"] == "productpage-v1"
    seen = answer.json()["headers"]
    # the ingress is the edge: it records the browser's address, as Istio's ingress gateway does
    assert seen["x-forwarded-for"] == mesh.address("browser")
    assert mesh.request("browser", f"http://{INGRESS}:8080/static/app.css").status == 200
    assert mesh.request("browser", f"http://{INGRESS}:8080/admin").status == 404  # no route for it
    stats = mesh.stats("ingress", "http.outbound_0.0.0.0_8080.downstream_rq_")
    assert stats["http.outbound_0.0.0.0_8080.downstream_rq_2xx"] >= 2


def test_gateway_terminates_tls_with_the_credential(mesh, certs):
    url = "https://bookinfo.example.test:8443/productpage"
    answer = mesh.request("browser", url, resolve=INGRESS, cafile=certs / "ca.crt")
    assert answer.status == 200, answer
    assert answer.headers["x-vmesh-host"] == "productpage-v1"
    # plaintext to the TLS port is refused, and so is a name this server has no certificate for
    plain = mesh.request("browser", f"http://{INGRESS}:8443/productpage")
    assert plain.status != 200, plain
    other = mesh.request("browser", "https://other.example.test:8443/productpage", resolve=INGRESS,
                         cafile=certs / "ca.crt")
    assert other.status == 0, other


def test_gateway_terminates_tls_with_certificate_files(mesh, certs):
    answer = mesh.request("browser", "https://files.example.test:8444/productpage", resolve=INGRESS,
                          cafile=certs / "ca.crt")
    assert answer.status == 200, answer
    assert answer.headers["x-vmesh-host"] == "productpage-v1"


def test_gateway_redirects_http_to_https(mesh):
    answer = mesh.request("browser", "http://bookinfo.example.test:8081/productpage", resolve=INGRESS)
    assert answer.status == 301, answer
    assert answer.headers["location"].startswith("https://bookinfo.example.test"), answer


def test_gateway_passes_tls_through_by_sni(mesh, certs):
    answer = mesh.request("browser", "https://secure.example.test:9443/", resolve=INGRESS, cafile=certs / "ca.crt")
    # the certificate the browser verified is the backend's own: TLS went through the ingress untouched
    assert answer.status == 200, answer
    assert answer.headers["x-vmesh-host"] in ("secure-v1", "secure-v2")
    unknown = mesh.request("browser", "https://nobody.example.test:9443/", resolve=INGRESS, cafile=certs / "ca.crt")
    assert unknown.status == 0, unknown


def test_gateway_tcp_server(mesh):
    assert mesh.tcp("browser", INGRESS, 9000, "hello").startswith(b"host=tcp-echo-v1 ")


def test_mesh_tls_routes_by_sni(mesh, certs):
    vip = mesh.resolve("client", "secure")
    for version in ("v1", "v2"):
        url = f"https://{version}.secure.example.test:8443/"
        answers = [mesh.request("client", url, resolve=vip, cafile=certs / "ca.crt") for _ in range(6)]
        assert {(a.status, a.headers.get("x-vmesh-host")) for a in answers} == {(200, f"secure-{version}")}, answers
    # a name no tls route lists goes to any host of the service
    other = mesh.request("client", "https://secure.example.test:8443/", resolve=vip, cafile=certs / "ca.crt")
    assert other.status == 200 and other.headers["x-vmesh-host"] in ("secure-v1", "secure-v2"), other
    assert json.loads(other.body)["host"] in ("secure-v1", "secure-v2")


RATE_LIMIT = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ingress-rate-limit, namespace: istio-system}
spec:
  workloadSelector:
    labels: {istio: ingressgateway}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: ingress_rate_limiter
          token_bucket: {max_tokens: 5, tokens_per_fill: 5, fill_interval: 60s}
          filter_enabled:
            runtime_key: local_rate_limit_enabled
            default_value: {numerator: 100, denominator: HUNDRED}
          filter_enforced:
            runtime_key: local_rate_limit_enforced
            default_value: {numerator: 100, denominator: HUNDRED}
          response_headers_to_add:
          - append_action: OVERWRITE_IF_EXISTS_OR_ADD
            header: {key: x-local-rate-limit, value: "true"}
"""


def test_rate_limit_at_the_ingress_5_a_minute(mesh):
    # the seed: 5 requests a minute at the ingress, the 6th gets 429 (one ingress VM: its token bucket is the limit)
    mesh.push([("mesh/edge.yaml", DOCS), ("mesh/limit.yaml", RATE_LIMIT)])
    try:
        statuses = [mesh.request("browser", f"http://{INGRESS}:8080/productpage").status for _ in range(6)]
        assert statuses == [200] * 5 + [429], statuses
        limited = mesh.request("browser", f"http://{INGRESS}:8080/productpage")
        assert limited.status == 429 and limited.headers.get("x-local-rate-limit") == "true", limited
        # the sidecars are not limited: inside the mesh calls go on
        assert mesh.request("client", "http://productpage:9080/productpage").status == 200
    finally:
        mesh.push([("mesh/edge.yaml", DOCS)])
