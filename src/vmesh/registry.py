"""The service registry: what the inventory says each host serves, and each service's virtual IP.

Input is plain data: ``{host name: {variable: value}}`` for the hosts of the mesh (group ``vmesh``), as the
filter plugin takes it from Ansible's hostvars and the CLI from ``ansible-inventory --list``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from typing import Any, Iterable

from vmesh.errors import MeshError

PROTOCOLS = ("http", "http2", "grpc", "tcp", "tls")
HTTP_PROTOCOLS = ("http", "http2", "grpc")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
TRUST_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")

# Mesh-wide settings: the same value must hold for every host (set them in group_vars/all).
MESH_SETTINGS = {
    "vmesh_vip_cidr": "240.240.0.0/16",
    "vmesh_cluster_domain": "cluster.local",
    "vmesh_vips": {},
    "vmesh_outbound_traffic_policy": "ALLOW_ANY",
    "vmesh_trust_domain": "cluster.local",
    "vmesh_rollouts": None,  # canary rollouts, read by vmesh.rollout
    "vmesh_mesh_config": None,  # Istio's meshConfig (telemetry providers), read by vmesh.istio.meshconfig
}
# Per-host settings with their defaults.
HOST_SETTINGS = {
    "vmesh_namespace": "default",
    "vmesh_config_dir": "/etc/vmesh/envoy",
    "vmesh_credentials_dir": "/etc/vmesh/credentials",
    "vmesh_certs_dir": "/etc/vmesh/certs",
    "vmesh_access_log": False,
}


@dataclasses.dataclass(frozen=True)
class Port:
    number: int
    protocol: str
    name: str
    target_port: int

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS


@dataclasses.dataclass(frozen=True)
class Probe:
    """``vmesh_probe``, Istio's WorkloadGroup probe (Kubernetes' fields): an HTTP GET or a TCP connect to the app on
    its own host, or a command there, every ``period`` seconds; ``failure`` failures in a row make the app
    unhealthy, ``success`` successes healthy again."""

    kind: str  # http, tcp or exec
    port: int = 0  # the app's port on loopback (http, tcp)
    path: str = "/"  # http
    command: tuple[str, ...] = ()  # exec
    period: int = 10
    timeout: int = 1
    success: int = 1
    failure: int = 3


@dataclasses.dataclass(frozen=True)
class Workload:
    """One mesh host. ``service`` is None for a pure client."""

    host: str
    namespace: str
    service: str | None
    labels: dict[str, str]
    ports: tuple[Port, ...]
    service_account: str
    address: str | None
    config_dir: str
    access_log: bool
    credentials_dir: str = "/etc/vmesh/credentials"  # a gateway's TLS certificates, one folder per credentialName
    certs_dir: str = "/etc/vmesh/certs"  # the workload's own certificate, key and trust bundle (mesh mTLS)
    probe: Probe | None = None  # vmesh_probe: how the app's health is checked
    drained: bool = False  # taken out of every client's endpoints (playbooks/drain.yml)


@dataclasses.dataclass
class Service:
    name: str
    namespace: str
    fqdn: str
    ports: tuple[Port, ...]
    vip: str = ""  # none for a ServiceEntry host: apps call its real address
    workloads: list[Workload] = dataclasses.field(default_factory=list)
    entry: Any = None  # the ServiceEntry that defines this host, if it is not an inventory service
    probe: Probe | None = None  # every host of the service has the same (vmesh_probe)

    def port(self, number: int) -> Port | None:
        return next((p for p in self.ports if p.number == number), None)

    def names_for(self, namespace: str) -> list[str]:
        """The names a host in ``namespace`` may use for this service (short name only in its own namespace)."""
        names = [self.fqdn, f"{self.name}.{self.namespace}.svc", f"{self.name}.{self.namespace}"]
        if namespace == self.namespace:
            names.append(self.name)
        return names


@dataclasses.dataclass
class Registry:
    services: dict[str, Service]  # by FQDN
    workloads: dict[str, Workload]  # by host
    cluster_domain: str
    vip_cidr: str
    outbound_policy: str = "ALLOW_ANY"
    trust_domain: str = "cluster.local"
    rollout_settings: Any = None  # vmesh_rollouts as the inventory gives it (vmesh.rollout.parse reads it)
    mesh_config_settings: Any = None  # vmesh_mesh_config as the inventory gives it (vmesh.istio.meshconfig)

    def identity(self, workload: Workload) -> str:
        """The workload's SPIFFE id, the URI in its certificate."""
        return f"spiffe://{self.trust_domain}/ns/{workload.namespace}/sa/{workload.service_account}"

    def fqdn(self, name: str, namespace: str) -> str:
        """Istio's reading of a host name in a document of ``namespace``: short names are relative to it."""
        suffix = f".svc.{self.cluster_domain}"
        if name.endswith(suffix) or (name in self.services and self.services[name].entry is not None):
            return name
        parts = name.split(".")
        if len(parts) == 1:
            return f"{name}.{namespace}{suffix}"
        if len(parts) == 2:
            return f"{name}{suffix}"
        if len(parts) == 3 and parts[2] == "svc":
            return f"{name}.{self.cluster_domain}"
        return name


def _client_address(hostvars: dict[str, Any]) -> str | None:
    address = hostvars.get("vmesh_address", hostvars.get("ansible_host"))
    try:
        return str(ipaddress.IPv4Address(address)) if isinstance(address, str) else None
    except ValueError:
        return None


def _err(host: str, field: str, message: str) -> MeshError:
    return MeshError(message, file="inventory", doc=f"host {host}", field=field)


def _mesh_settings(hosts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    settings = {}
    for key, default in MESH_SETTINGS.items():
        values = {}
        for host, hostvars in sorted(hosts.items()):
            values.setdefault(repr(hostvars.get(key, default)), (host, hostvars.get(key, default)))
        if len(values) > 1:
            (h1, v1), (h2, v2) = list(values.values())[:2]
            raise _err(h2, key, f"mesh-wide setting differs between hosts ({h1}: {v1!r}, {h2}: {v2!r}); "
                                "set it once in group_vars/all")
        settings[key] = next(iter(values.values()))[1] if values else default
    return settings


def _ports(host: str, value: Any) -> tuple[Port, ...]:
    if not isinstance(value, list) or not value:
        raise _err(host, "vmesh_ports", "a service needs a non-empty list of ports, e.g. [{port: 9080, protocol: http}]")
    ports = []
    for i, item in enumerate(value):
        field = f"vmesh_ports[{i}]"
        if not isinstance(item, dict):
            raise _err(host, field, "expected a mapping with port and protocol")
        unknown = sorted(set(item) - {"port", "protocol", "name", "target_port"})
        if unknown:
            raise _err(host, f"{field}.{unknown[0]}", "unknown field (known: port, protocol, name, target_port)")
        number = item.get("port")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise _err(host, f"{field}.port", f"expected a port number 1-65535, got {number!r}")
        protocol = str(item.get("protocol", "")).lower()
        if protocol not in PROTOCOLS:
            raise _err(host, f"{field}.protocol", f"expected one of {', '.join(PROTOCOLS)}, got {item.get('protocol')!r}")
        target = item.get("target_port", number)
        if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= 65535:
            raise _err(host, f"{field}.target_port", f"expected a port number 1-65535, got {target!r}")
        name = item.get("name", f"{protocol}-{number}")
        if not isinstance(name, str) or not name:
            raise _err(host, f"{field}.name", "expected a non-empty string")
        if any(p.number == number for p in ports):
            raise _err(host, f"{field}.port", f"port {number} is listed twice")
        ports.append(Port(number, protocol, name, target))
    return tuple(ports)


def _labels(host: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(host, "vmesh_labels", "expected a mapping such as {version: v1}")
    labels = {}
    for key, val in value.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key):
            raise _err(host, f"vmesh_labels.{key}", "invalid label name")
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            val = str(val)
        if not isinstance(val, str) or not LABEL_VALUE.match(val) or len(val) > 63:
            raise _err(host, f"vmesh_labels.{key}", f"invalid label value {val!r}")
        labels[key] = val
    return labels


PROBE_KINDS = {"httpGet": "http", "tcpSocket": "tcp", "exec": "exec"}
PROBE_NUMBERS = {"periodSeconds": "period", "timeoutSeconds": "timeout", "successThreshold": "success",
                 "failureThreshold": "failure"}


def _count(host: str, field: str, value: Any, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 3600:
        raise _err(host, field, f"expected a whole number {least}-3600, got {value!r}")
    return value


def _probe(host: str, value: Any, ports: tuple[Port, ...]) -> Probe | None:
    """``vmesh_probe``: one of httpGet {path, port}, tcpSocket {port} or exec {command}, and the timing fields."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _err(host, "vmesh_probe", "expected a mapping such as {httpGet: {path: /health, port: 8080}}")
    unknown = sorted(set(value) - set(PROBE_KINDS) - set(PROBE_NUMBERS))
    if unknown:
        raise _err(host, f"vmesh_probe.{unknown[0]}", "unknown field (known: httpGet, tcpSocket, exec, "
                                                      "periodSeconds, timeoutSeconds, successThreshold, failureThreshold)")
    kinds = [key for key in PROBE_KINDS if key in value]
    if len(kinds) != 1:
        raise _err(host, "vmesh_probe", "give exactly one of httpGet, tcpSocket and exec")
    key = kinds[0]
    field = f"vmesh_probe.{key}"
    spec = value[key]
    if not isinstance(spec, dict):
        raise _err(host, field, "expected a mapping")
    known = {"httpGet": {"path", "port"}, "tcpSocket": {"port"}, "exec": {"command"}}[key]
    unknown = sorted(set(spec) - known)
    if unknown:
        raise _err(host, f"{field}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
    numbers = {name: _count(host, f"vmesh_probe.{field_name}", value[field_name])
               for field_name, name in PROBE_NUMBERS.items() if field_name in value}
    probe = Probe(PROBE_KINDS[key], **numbers)
    if probe.timeout > probe.period:
        raise _err(host, "vmesh_probe.timeoutSeconds", f"{probe.timeout} is longer than periodSeconds "
                                                       f"({probe.period})")
    if key == "exec":
        command = spec.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command) \
                or not command[0].startswith("/"):
            raise _err(host, f"{field}.command", "expected a list of strings, the program first by its absolute "
                                                 "path, e.g. [/usr/bin/pg_isready, -q]")
        return dataclasses.replace(probe, command=tuple(command))
    port = spec.get("port", ports[0].target_port if ports else None)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _err(host, f"{field}.port", f"expected the app's port number 1-65535, got {port!r}")
    if key == "tcpSocket":
        return dataclasses.replace(probe, port=port)
    path = spec.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
        raise _err(host, f"{field}.path", f"expected a path starting with '/', got {path!r}")
    return dataclasses.replace(probe, port=port, path=path)


def _workload(host: str, hostvars: dict[str, Any]) -> Workload:
    namespace = hostvars.get("vmesh_namespace", HOST_SETTINGS["vmesh_namespace"])
    if not isinstance(namespace, str) or not DNS_LABEL.match(namespace):
        raise _err(host, "vmesh_namespace", f"expected a DNS label such as 'default', got {namespace!r}")
    service = hostvars.get("vmesh_service")
    config_dir = hostvars.get("vmesh_config_dir", HOST_SETTINGS["vmesh_config_dir"])
    if not isinstance(config_dir, str) or not config_dir.startswith("/"):
        raise _err(host, "vmesh_config_dir", f"expected an absolute path, got {config_dir!r}")
    paths = {}
    for key in ("vmesh_credentials_dir", "vmesh_certs_dir"):
        paths[key] = hostvars.get(key, HOST_SETTINGS[key])
        if not isinstance(paths[key], str) or not paths[key].startswith("/"):
            raise _err(host, key, f"expected an absolute path, got {paths[key]!r}")
    access_log = hostvars.get("vmesh_access_log", HOST_SETTINGS["vmesh_access_log"])
    if not isinstance(access_log, bool):
        raise _err(host, "vmesh_access_log", f"expected true or false, got {access_log!r}")
    common = {"host": host, "namespace": namespace, "config_dir": config_dir, "access_log": access_log,
              "credentials_dir": paths["vmesh_credentials_dir"], "certs_dir": paths["vmesh_certs_dir"]}
    if service is None:
        for key in ("vmesh_ports", "vmesh_probe"):
            if hostvars.get(key):
                raise _err(host, key, "set only on hosts that serve a service: this host has no vmesh_service")
        account = hostvars.get("vmesh_service_account", "default")
        if not isinstance(account, str) or not DNS_LABEL.match(account):
            raise _err(host, "vmesh_service_account", f"expected a DNS label, got {account!r}")
        # a pure client's labels still count for sourceLabels matches and Sidecar selectors; its address, when the
        # inventory has one, names it in the metrics of the hosts it calls (none is needed)
        return Workload(service=None, labels=_labels(host, hostvars.get("vmesh_labels")), ports=(),
                        service_account=account, address=_client_address(hostvars), **common)
    if not isinstance(service, str) or not DNS_LABEL.match(service) or len(service) > 63:
        raise _err(host, "vmesh_service", f"expected a DNS label such as 'reviews', got {service!r}")
    address = hostvars.get("vmesh_address", hostvars.get("ansible_host"))
    if address is None:
        raise _err(host, "vmesh_address", "the address other hosts reach this one at is unknown: "
                                          "set vmesh_address (or ansible_host) to an IP address")
    try:
        address = str(ipaddress.IPv4Address(address))
    except (ipaddress.AddressValueError, ValueError):
        raise _err(host, "vmesh_address", f"expected an IPv4 address, got {address!r} "
                                          "(set vmesh_address when ansible_host is a name)") from None
    account = hostvars.get("vmesh_service_account", service)
    if not isinstance(account, str) or not DNS_LABEL.match(account):
        raise _err(host, "vmesh_service_account", f"expected a DNS label, got {account!r}")
    # Kubernetes workloads carry app: <name>, and Istio documents select on it (AuthorizationPolicy, Sidecar...)
    labels = {"app": service, **_labels(host, hostvars.get("vmesh_labels"))}
    ports = _ports(host, hostvars.get("vmesh_ports"))
    return Workload(service=service, labels=labels, ports=ports, service_account=account, address=address,
                    probe=_probe(host, hostvars.get("vmesh_probe"), ports), **common)


def allocate_vips(fqdns: list[str], cidr: str, pinned: dict[str, str]) -> dict[str, str]:
    """A stable virtual IP per service: a hash of its name into the CIDR, independent of inventory order.

    Pinned addresses win; a hash collision moves the later name (in sorted order) to the next free address.
    """
    net = ipaddress.IPv4Network(cidr)
    size = net.num_addresses - 2
    taken = {ipaddress.IPv4Address(ip) for ip in pinned.values()}
    out = dict(pinned)
    for fqdn in sorted(set(fqdns) - set(pinned)):
        offset = int.from_bytes(hashlib.sha256(fqdn.encode()).digest()[:8], "big") % size
        for step in range(size):
            candidate = net.network_address + 1 + (offset + step) % size
            if candidate not in taken:
                break
        else:
            raise MeshError(f"no free address left in {cidr}", file="inventory", field="vmesh_vip_cidr")
        taken.add(candidate)
        out[fqdn] = str(candidate)
    return out


def build(hosts: dict[str, dict[str, Any]], drained: Iterable[str] = ()) -> Registry:
    """Read the mesh hosts' variables into a Registry, or raise MeshError naming host and variable. The hosts in
    ``drained`` (those playbooks/drain.yml took out; names no longer in the mesh are ignored) are in no client's
    endpoints."""
    settings = _mesh_settings(hosts)
    domain = settings["vmesh_cluster_domain"]
    cidr = settings["vmesh_vip_cidr"]
    try:
        net = ipaddress.IPv4Network(cidr)
    except (ValueError, TypeError):
        raise MeshError(f"expected an IPv4 CIDR such as 240.240.0.0/16, got {cidr!r}", file="inventory",
                        field="vmesh_vip_cidr") from None
    if net.num_addresses < 4:
        raise MeshError(f"{cidr} is too small for service addresses", file="inventory", field="vmesh_vip_cidr")
    drained = set(drained)
    workloads = {}
    for host, hostvars in sorted(hosts.items()):
        workload = _workload(host, hostvars)
        workloads[host] = dataclasses.replace(workload, drained=True) if host in drained else workload
    services: dict[str, Service] = {}
    for workload in workloads.values():
        if workload.service is None:
            continue
        fqdn = f"{workload.service}.{workload.namespace}.svc.{domain}"
        service = services.get(fqdn)
        if service is None:
            service = services[fqdn] = Service(workload.service, workload.namespace, fqdn, workload.ports,
                                               probe=workload.probe)
        elif workload.ports != service.ports:
            other = service.workloads[0].host
            raise _err(workload.host, "vmesh_ports", f"differs from {other}'s ports for the same service "
                                                     f"{workload.service}: every host of a service serves the same ports")
        elif workload.probe != service.probe:
            other = service.workloads[0].host
            raise _err(workload.host, "vmesh_probe", f"differs from {other}'s probe for the same service "
                                                     f"{workload.service}: clients check every host of a service "
                                                     "alike (set it in the service's group_vars)")
        service.workloads.append(workload)
    pinned = settings["vmesh_vips"]
    if not isinstance(pinned, dict):
        raise MeshError("expected a mapping of service name to address", file="inventory", field="vmesh_vips")
    pins = {}
    policy = settings["vmesh_outbound_traffic_policy"]
    if policy not in ("ALLOW_ANY", "REGISTRY_ONLY"):
        raise MeshError(f"expected ALLOW_ANY or REGISTRY_ONLY, got {policy!r}", file="inventory",
                        field="vmesh_outbound_traffic_policy")
    trust_domain = settings["vmesh_trust_domain"]
    if not isinstance(trust_domain, str) or not TRUST_DOMAIN.match(trust_domain):
        raise MeshError(f"expected a trust domain such as cluster.local, got {trust_domain!r}", file="inventory",
                        field="vmesh_trust_domain")
    reg = Registry(services, workloads, domain, cidr, policy, trust_domain, settings["vmesh_rollouts"],
                   settings["vmesh_mesh_config"])
    for name, ip in pinned.items():
        fqdn = reg.fqdn(str(name), "default")
        try:
            if ipaddress.IPv4Address(ip) not in net:
                raise ValueError
        except ValueError:
            raise MeshError(f"{ip!r} is not an address in {cidr}", file="inventory", field=f"vmesh_vips.{name}") from None
        pins[fqdn] = str(ip)
    if len(set(pins.values())) != len(pins):
        raise MeshError("two services pinned to one address", file="inventory", field="vmesh_vips")
    for fqdn, vip in allocate_vips(list(services), cidr, pins).items():
        if fqdn in services:
            services[fqdn].vip = vip
    return reg
