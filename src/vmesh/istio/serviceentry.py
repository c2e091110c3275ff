"""ServiceEntry: services outside the inventory (MESH_EXTERNAL) or extra ones (MESH_INTERNAL) the mesh may call.

Each host of a ServiceEntry becomes a service of the registry that VirtualServices, DestinationRules and Sidecars
name like any other. Apps reach it by its real address (vmesh writes no /etc/hosts line for it, so Envoy's own DNS
lookup of a DNS entry never meets a vmesh address): the sidecar picks the entry by the destination port and then
by the HTTP Host header (HTTP ports) or the TLS server name (TLS/HTTPS ports), or by ``addresses`` when given.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from vmesh.documents import Document, show
from vmesh.istio.fields import Node, check_host, host_problem, root
from vmesh.registry import LABEL_KEY, Port, Registry, Service

# Istio's port protocols -> the registry's. HTTPS and TLS are both opaque TLS to the sidecar (routed by SNI).
PROTOCOLS = {"HTTP": "http", "HTTP2": "http2", "GRPC": "grpc", "HTTPS": "tls", "TLS": "tls", "TCP": "tcp"}
RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")
LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    address: str  # an IP (STATIC) or a name or IP (DNS)
    ports: tuple[tuple[str, int], ...]  # port name -> port on this endpoint
    labels: tuple[tuple[str, str], ...]
    weight: int | None

    def port_for(self, port: Port) -> int:
        return dict(self.ports).get(port.name, port.target_port)


@dataclasses.dataclass
class ServiceEntry:
    doc: Document
    hosts: list[str]
    addresses: list[str]  # CIDRs
    ports: tuple[Port, ...]
    location: str
    resolution: str
    endpoints: list[Endpoint]


def _port(node: Node, index: int) -> Port:
    node.mapping(("number", "protocol", "name", "targetPort"), required=True)
    number = node.get("number").integer(required=True, minimum=1, maximum=65535)
    raw = node.get("protocol").string(default="TCP")
    protocol = PROTOCOLS.get(raw.upper())
    if protocol is None:
        raise node.get("protocol").error(f"expected one of {', '.join(PROTOCOLS)}, got {show(raw)}")
    name = node.get("name").string(default=f"{raw.lower()}-{number}")
    target = node.get("targetPort").integer(default=number, minimum=1, maximum=65535)
    return Port(number, protocol, name, target)


def _endpoint(node: Node, resolution: str, port_names: set[str]) -> Endpoint:
    node.mapping(("address", "ports", "labels", "weight", "locality", "network"), ("serviceAccount",),
                 required=True)
    address = node.get("address").string(required=True)
    if address.startswith("unix://"):
        raise node.get("address").error("unix domain socket endpoints are not supported by vmesh")
    try:
        ipaddress.ip_address(address)
        is_ip = True
    except ValueError:
        is_ip = False
    if resolution == "STATIC" and not is_ip:
        raise node.get("address").error(f"resolution STATIC needs IP addresses, got {show(address)} (use resolution "
                                        "DNS for names)")
    if not is_ip and ("*" in address or host_problem(address)):
        raise node.get("address").error(f"expected an IP address or a host name, got {show(address)}: "
                                        f"{host_problem(address) or 'no wildcard in an address'}")
    ports = []
    for name, value in node.get("ports").entries():
        if name not in port_names:
            raise value.error(f"no port of this ServiceEntry is named {show(name)} (names: {', '.join(sorted(port_names))})")
        ports.append((name, value.integer(required=True, minimum=1, maximum=65535)))
    labels = node.get("labels").string_map()
    for key in labels:
        if not LABEL_KEY.match(key):
            raise node.get("labels").get(key).error("invalid label name")
    return Endpoint(address, tuple(sorted(ports)), tuple(sorted(labels.items())),
                    node.get("weight").integer(minimum=1))


def parse(doc: Document, registry: Registry) -> ServiceEntry:
    spec = root(doc).mapping(("hosts", "addresses", "ports", "location", "resolution", "endpoints", "exportTo",
                              "subjectAltNames"), ("workloadSelector",))
    hosts = []
    for node in spec.get("hosts").items(required=True, non_empty=True):
        name = check_host(node, node.string(required=True).lower())
        if "*" in name and not (name.startswith("*.") and "*" not in name[1:]):
            raise node.error(f"expected a host name or a leading wildcard such as '*.example.com', got {show(name)}")
        if "." not in name:
            raise node.error(f"expected a fully qualified name such as 'api.example.com', got {show(name)}")
        if name in registry.services or name in hosts:
            raise node.error(f"host {show(name)} is already a service of the mesh")
        hosts.append(name)
    addresses = []
    for node in spec.get("addresses").items():
        try:
            addresses.append(str(ipaddress.IPv4Network(node.string(required=True), strict=False)))
        except ValueError:
            raise node.error(f"expected an IPv4 address or CIDR, got {show(node.value)}") from None
    ports = tuple(_port(node, i) for i, node in enumerate(spec.get("ports").items(required=True, non_empty=True)))
    seen: dict[int, Port] = {}
    for i, port in enumerate(ports):
        if port.number in seen:
            raise spec.get("ports").get(i).get("number").error(f"port {port.number} is listed twice")
        seen[port.number] = port
    location = spec.get("location").string(default="MESH_EXTERNAL")
    if location not in LOCATIONS:
        raise spec.get("location").error(f"expected one of {', '.join(LOCATIONS)}, got {show(location)}")
    resolution = spec.get("resolution").string(default="NONE")
    if resolution not in RESOLUTIONS:
        raise spec.get("resolution").error(f"expected one of {', '.join(RESOLUTIONS)}, got {show(resolution)}")
    endpoints = [_endpoint(node, resolution, {p.name for p in ports}) for node in spec.get("endpoints").items()]
    if resolution == "NONE" and endpoints:
        raise spec.get("endpoints").error("resolution NONE sends traffic to the address the app called: "
                                          "endpoints need resolution STATIC or DNS")
    if resolution == "STATIC" and not endpoints:
        raise spec.get("endpoints").error("resolution STATIC needs endpoints")
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        raise spec.get("endpoints").error("resolution DNS_ROUND_ROBIN takes at most one endpoint")
    if resolution != "NONE" and any("*" in h for h in hosts):
        raise spec.get("hosts").error(f"wildcard hosts need resolution NONE (got {resolution}): there is no single "
                                      "name to resolve")
    spec.get("exportTo").strings()
    spec.get("subjectAltNames").strings()
    return ServiceEntry(doc, hosts, addresses, ports, location, resolution, endpoints)


def register(entry: ServiceEntry, registry: Registry) -> None:
    """Make each host of ``entry`` a service of the registry (no virtual IP: apps use its real address)."""
    for host in entry.hosts:
        registry.services[host] = Service(host, entry.doc.namespace, host, entry.ports, vip="", entry=entry)
