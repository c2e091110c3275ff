"""Gateway: the ports an edge proxy (an ingress VM) listens on, with their hosts and TLS settings.

A Gateway applies to every mesh host whose ``vmesh_labels`` carry its ``selector`` (Istio's default: the
selector is not limited to the Gateway's namespace). VirtualServices bind to it by name through ``gateways``.

TLS certificates: ``credentialName: NAME`` reads ``<vmesh_credentials_dir>/NAME/tls.crt`` and ``tls.key`` (and
``ca.crt`` for MUTUAL) on the gateway host — the playbook copies them there from ``vmesh_credentials`` on the
controller; ``serverCertificate`` / ``privateKey`` / ``caCertificates`` are paths on the gateway host, as in
Istio's file-mounted gateway certificates.
"""

from __future__ import annotations

import dataclasses

from vmesh.documents import Document, dns_subdomain_problem, show
from vmesh.istio.fields import Node, gateway_host_problem, namespace_problem, root

SERVER_PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS")
HTTP_SERVER_PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC")
TLS_MODES = ("SIMPLE", "MUTUAL", "PASSTHROUGH")
TLS_MODES_LATER = ("ISTIO_MUTUAL", "AUTO_PASSTHROUGH", "OPTIONAL_MUTUAL")
TLS_VERSIONS = {"TLS_AUTO": "TLS_AUTO", "TLSV1_0": "TLSv1_0", "TLSV1_1": "TLSv1_1", "TLSV1_2": "TLSv1_2",
                "TLSV1_3": "TLSv1_3"}


@dataclasses.dataclass(frozen=True)
class ServerTls:
    mode: str
    credential: str | None  # credentialName
    cert: str | None  # serverCertificate (path on the gateway host)
    key: str | None
    ca: str | None
    https_redirect: bool = False
    min_version: str | None = None
    max_version: str | None = None
    cipher_suites: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Server:
    port: int
    protocol: str
    port_name: str
    hosts: tuple[str, ...]  # host names or wildcards; a "namespace/" prefix is dropped
    tls: ServerTls | None
    name: str | None
    node: Node = dataclasses.field(compare=False, repr=False)

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_SERVER_PROTOCOLS and not (self.tls and self.tls.mode == "PASSTHROUGH")

    @property
    def terminates_tls(self) -> bool:
        return self.tls is not None and self.tls.mode in ("SIMPLE", "MUTUAL")


@dataclasses.dataclass
class Gateway:
    doc: Document
    selector: dict[str, str]
    servers: list[Server]

    @property
    def key(self) -> str:
        return f"{self.doc.namespace}/{self.doc.name}"


def host_matches(pattern: str, name: str) -> bool:
    """Istio's host matching between a Gateway server host and a VirtualService host (either may be a wildcard)."""
    if pattern == "*" or name == "*":
        return True
    if pattern.startswith("*."):
        if name.startswith("*."):
            return name.endswith(pattern[1:]) or pattern.endswith(name[1:])
        return name.endswith(pattern[1:])
    if name.startswith("*."):
        return pattern.endswith(name[1:])
    return pattern == name


def _tls(node: Node, protocol: str) -> ServerTls | None:
    if not node.present:
        if protocol in ("HTTPS", "TLS"):
            raise node.error(f"a {protocol} server needs tls (mode SIMPLE, MUTUAL or PASSTHROUGH)")
        return None
    node.mapping(("mode", "credentialName", "serverCertificate", "privateKey", "caCertificates", "httpsRedirect",
                  "minProtocolVersion", "maxProtocolVersion", "cipherSuites", "subjectAltNames"),
                 ("credentialNames", "tlsCertificates", "caCrl", "verifyCertificateSpki", "verifyCertificateHash"))
    redirect = node.get("httpsRedirect").boolean()
    mode_node = node.get("mode")
    if protocol in ("HTTP", "HTTP2", "GRPC", "TCP"):
        if not redirect or mode_node.present:
            raise node.error(f"a plain {protocol} server takes only tls.httpsRedirect; use protocol HTTPS or TLS "
                             "to serve TLS")
        return ServerTls("REDIRECT", None, None, None, None, https_redirect=True)
    mode = mode_node.string(default="SIMPLE")
    if mode in TLS_MODES_LATER:
        raise mode_node.error(f"tls mode {mode} is not supported by vmesh yet (supported: {', '.join(TLS_MODES)})")
    if mode not in TLS_MODES:
        raise mode_node.error(f"expected one of {', '.join(TLS_MODES)}, got {show(mode)}")
    versions = []
    for field in ("minProtocolVersion", "maxProtocolVersion"):
        value = node.get(field).string()
        if value is not None and value not in TLS_VERSIONS:
            raise node.get(field).error(f"expected one of {', '.join(TLS_VERSIONS)}, got {show(value)}")
        versions.append(TLS_VERSIONS.get(value) if value else None)
    credential = node.get("credentialName").string()
    cert, key, ca = (node.get(f).string() for f in ("serverCertificate", "privateKey", "caCertificates"))
    if mode == "PASSTHROUGH":
        if credential or cert or key:
            raise node.error("PASSTHROUGH forwards TLS untouched: it takes no certificate")
    else:
        if credential and (cert or key):
            raise node.get("credentialName").error("set credentialName or serverCertificate/privateKey, not both")
        if not credential and not (cert and key):
            raise node.error(f"tls mode {mode} needs credentialName, or serverCertificate and privateKey "
                             "(paths on the gateway host)")
        if credential is not None and dns_subdomain_problem(credential):
            raise node.get("credentialName").error(f"expected a name such as 'bookinfo-credential', got "
                                                   f"{show(credential)}: {dns_subdomain_problem(credential)}")
        for field, path in (("serverCertificate", cert), ("privateKey", key), ("caCertificates", ca)):
            if path is not None and not path.startswith("/"):
                raise node.get(field).error(f"expected an absolute path on the gateway host, got {show(path)}")
        if mode == "MUTUAL" and not credential and not ca:
            raise node.error("tls mode MUTUAL needs caCertificates (or a credentialName whose ca.crt is given)")
    return ServerTls(mode, credential, cert, key, ca, redirect, versions[0], versions[1],
                     tuple(node.get("cipherSuites").strings()), tuple(node.get("subjectAltNames").strings()))


def _server(node: Node) -> Server:
    node.mapping(("port", "hosts", "tls", "name", "bind"), ("defaultEndpoint",), required=True)
    port = node.get("port").mapping(("number", "name", "protocol"), ("targetPort",), required=True)
    number = port.get("number").integer(required=True, minimum=1, maximum=65535)
    protocol = (port.get("protocol").string(required=True) or "").upper()
    if protocol not in SERVER_PROTOCOLS:
        raise port.get("protocol").error(f"expected one of {', '.join(SERVER_PROTOCOLS)}, got "
                                         f"{show(port.get('protocol').value)}")
    if number in (15000, 15001, 15006, 15021, 15090):
        raise port.get("number").error(f"port {number} is the proxy's own")
    bind = node.get("bind").string()
    if bind is not None and bind != "0.0.0.0":
        raise node.get("bind").error("vmesh gateways listen on every address (bind 0.0.0.0) for now")
    hosts = []
    for item in node.get("hosts").items(required=True, non_empty=True):
        text = item.string(required=True)
        namespace, _, name = text.rpartition("/") if "/" in text else ("", "", text)
        problem = gateway_host_problem(name)
        if "/" in text:
            ns_problem = namespace_problem(namespace, ("*", "."))
            if ns_problem:
                raise item.error(f"invalid namespace {show(namespace)} in host {show(text)}: {ns_problem}")
        if problem:
            raise item.error(f"invalid host {show(text)}: {problem}")
        hosts.append(name.lower())
    return Server(number, protocol, port.get("name").string(default=f"{protocol.lower()}-{number}"), tuple(hosts),
                  _tls(node.get("tls"), protocol), node.get("name").string(), node)


def parse(doc: Document) -> Gateway:
    spec = root(doc).mapping(("selector", "servers"))
    selector = spec.get("selector").string_map()
    if not selector:
        raise spec.get("selector").error("a Gateway needs a selector naming its hosts' labels, "
                                         "e.g. {istio: ingressgateway}")
    servers = [_server(item) for item in spec.get("servers").items(required=True, non_empty=True)]
    for i, server in enumerate(servers):
        if server.name is not None and server.name in [s.name for s in servers[:i]]:
            raise server.node.get("name").error(f"server name {show(server.name)} is already the name of another "
                                                "server of this Gateway (Istio: names must be unique)")
        for other in servers[:i]:
            if other.port != server.port:
                continue
            if other.is_http != server.is_http or other.terminates_tls != server.terminates_tls:
                raise server.node.get("port").error(
                    f"port {server.port} is already served as {other.protocol}"
                    f"{' ' + other.tls.mode if other.tls else ''}; one port serves one protocol")
            if not (server.terminates_tls or server.protocol == "TLS") and (server.port_name != other.port_name):
                raise server.node.get("port").error(f"port {server.port} is already served under the name "
                                                    f"{show(other.port_name)}")
            overlap = [h for h in server.hosts if h in other.hosts]
            if overlap and (server.terminates_tls or server.protocol == "TLS"):
                raise server.node.get("hosts").error(f"host {show(overlap[0])} is already served on port {server.port} "
                                                     "by another server of this Gateway")
    return Gateway(doc, selector, servers)
