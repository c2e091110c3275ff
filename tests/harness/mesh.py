"""A Bookinfo-shaped inventory as plain host variables, and helpers to compile it."""

from __future__ import annotations

import copy
import json

from harness import DATA
from vmesh import load
from vmesh.compile import render_host
from vmesh.istio.model import Mesh

_PORTS = [{"port": 9080, "protocol": "http", "name": "http"}]
BOOKINFO_HOSTS = {
    "productpage-v1": {"vmesh_service": "productpage", "vmesh_labels": {"version": "v1"}, "vmesh_ports": _PORTS,
                       "ansible_host": "10.213.0.10"},
    "details-v1": {"vmesh_service": "details", "vmesh_labels": {"version": "v1"}, "vmesh_ports": _PORTS,
                   "ansible_host": "10.213.0.11"},
    "reviews-v1": {"vmesh_service": "reviews", "vmesh_labels": {"version": "v1"}, "vmesh_ports": _PORTS,
                   "ansible_host": "10.213.0.12"},
    "reviews-v2": {"vmesh_service": "reviews", "vmesh_labels": {"version": "v2"}, "vmesh_ports": _PORTS,
                   "ansible_host": "10.213.0.13"},
    "reviews-v3": {"vmesh_service": "reviews", "vmesh_labels": {"version": "v3"}, "vmesh_ports": _PORTS,
                   "ansible_host": "10.213.0.14"},
    "ratings-v1": {"vmesh_service": "ratings", "vmesh_labels": {"version": "v1"}, "vmesh_ports": _PORTS,
                   "ansible_host": "10.213.0.15"},
}


def sidecar(app: str, *services: str) -> str:
    """A Sidecar by which the hosts labelled ``app`` see only ``services`` of namespace default (without one, every
    host sees every service)."""
    hosts = ", ".join(f'"./{service}.default.svc.cluster.local"' for service in services)
    return f"""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {app}}}
spec:
  workloadSelector: {{labels: {{app: {app}}}}}
  egress:
  - hosts: [{hosts}]
"""


PRODUCTPAGE_SIDECAR = sidecar("productpage", "reviews", "details")


# an ingress Gateway on HTTP 8080 for the hosts labelled istio: ingressgateway, routing every host to productpage
HTTP_GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pp}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
"""


def bookinfo_hosts() -> dict:
    return copy.deepcopy(BOOKINFO_HOSTS)


def destination_rules() -> tuple[str, str]:
    path = DATA / "bookinfo" / "destination-rule-all.yaml"
    return (str(path.relative_to(DATA.parent)), path.read_text())


def build(*docs: str, hosts: dict | None = None, with_rules: bool = True, drained: tuple | set = ()) -> Mesh:
    sources = [destination_rules()] if with_rules else []
    sources += [(f"mesh/doc{i}.yaml", text) for i, text in enumerate(docs)]
    return load.mesh(hosts if hosts is not None else bookinfo_hosts(), sources, drained=drained)


def routes_to(service: str, *subsets: str, every_host: bool = True) -> str:
    """A VirtualService sending ``service``'s requests by weight to all its hosts (``every_host``) and to each
    subset: the compiler writes only the clusters something sends to."""
    targets = ([{"host": service}] if every_host else []) + [{"host": service, "subset": s} for s in subsets]
    weights = [100 // len(targets)] * len(targets)
    weights[0] += 100 - sum(weights)
    return json.dumps({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                       "metadata": {"name": f"{service}-split"},
                       "spec": {"hosts": [service], "http": [{"route": [
                           {"destination": d, "weight": w} for d, w in zip(targets, weights)]}]}})


def resources(files: dict[str, str], name: str) -> list[dict]:
    return json.loads(files[name])["resources"]


def lb_endpoints(files: dict[str, str], cluster: dict) -> list[dict]:
    """A cluster's endpoints as Envoy gets them: from its endpoint file (EDS) or inline (none for a cluster that
    finds them itself, such as ORIGINAL_DST)."""
    if "eds_cluster_config" in cluster:
        path = cluster["eds_cluster_config"]["eds_config"]["path_config_source"]["path"]
        (assignment,) = resources(files, path.rsplit("/", 1)[1])
    else:
        assignment = cluster.get("load_assignment", {"endpoints": []})
    return [e for group in assignment["endpoints"] for e in group["lb_endpoints"]]


def outbound_vhost(files: dict[str, str], fqdn: str, port: int = 9080) -> dict:
    """The virtual host of ``fqdn`` in the route table of the outbound HTTP port ``port`` (its file rds_PORT.json)."""
    (config,) = resources(files, f"rds_{port}.json")
    (vhost,) = [v for v in config["virtual_hosts"] if v["name"] == f"{fqdn}:{port}"]
    return vhost


def outbound_routes(mesh: Mesh, host: str, service: str, port: int = 9080) -> list[dict]:
    return outbound_vhost(render_host(mesh, host).files, f"{service}.default.svc.cluster.local", port)["routes"]
