"""Mesh mTLS: the workload's certificate and trust bundle through file-based SDS, and the TLS contexts using them.

As Istio names them, the secret ``default`` is the workload's certificate chain and key and ``ROOTCA`` the
trust bundle. Both are read from the workload's certs directory (``vmesh_certs_dir``), which the certs role
fills with symlinks into a versioned folder; swapping that folder (one rename) makes Envoy reload both with no
restart. Clients offer ALPN ``istio`` so a server can tell mesh mTLS from an application's own TLS.
"""

from __future__ import annotations

from typing import Any

from vmesh.compile.envoy_types import DOWNSTREAM_TLS, SECRET, UPSTREAM_TLS, secret_source
from vmesh.registry import Registry, Workload

CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
CHAIN_FILE = "cert-chain.pem"
KEY_FILE = "key.pem"
ROOT_FILE = "root-cert.pem"
# What Istio's clients offer and its servers match on, so older and newer peers meet.
ISTIO_ALPNS = ["istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
TLS = "envoy.transport_sockets.tls"


def secret_file(name: str) -> str:
    return f"sds_{name}.json"


def secrets(workload: Workload) -> dict[str, dict[str, Any]]:
    """The SDS files of the workload's identity: file name -> Secret."""
    watched = {"path": workload.certs_dir}
    return {
        secret_file(CERT_SECRET): {"@type": SECRET, "name": CERT_SECRET, "tls_certificate": {
            "certificate_chain": {"filename": f"{workload.certs_dir}/{CHAIN_FILE}"},
            "private_key": {"filename": f"{workload.certs_dir}/{KEY_FILE}"},
            "watched_directory": watched}},
        secret_file(ROOT_SECRET): {"@type": SECRET, "name": ROOT_SECRET, "validation_context": {
            "trusted_ca": {"filename": f"{workload.certs_dir}/{ROOT_FILE}"},
            "watched_directory": watched}},
    }


def _sds(workload: Workload, name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": secret_source(workload.config_dir, secret_file(name))}


def _common(workload: Workload, san_matchers: list[dict[str, Any]], alpn: list[str], *,
            server: bool) -> dict[str, Any]:
    common: dict[str, Any] = {
        "tls_certificate_sds_secret_configs": [_sds(workload, CERT_SECRET)],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": san_matchers},
            "validation_context_sds_secret_config": _sds(workload, ROOT_SECRET)},
    }
    if server:  # a client's minimum is TLS 1.2 by Envoy's default; a server's is 1.0
        common["tls_params"] = {"tls_minimum_protocol_version": "TLSv1_2"}
    if alpn:
        common["alpn_protocols"] = alpn
    return common


def upstream(workload: Workload, identities: list[str], sni: str) -> dict[str, Any]:
    """A client's mTLS to mesh workloads: its own certificate, and the server must be one of ``identities``
    (SPIFFE ids); an empty list accepts any certificate of the trust bundle."""
    matchers = [{"san_type": "URI", "matcher": {"exact": identity}} for identity in sorted(set(identities))]
    return {"name": TLS, "typed_config": {"@type": UPSTREAM_TLS, "sni": sni,
                                          "common_tls_context": _common(workload, matchers, ["istio"], server=False)}}


def downstream(workload: Workload, registry: Registry, http: bool) -> dict[str, Any]:
    """A server's mTLS: a client certificate of this trust domain is required."""
    matchers = [{"san_type": "URI", "matcher": {"prefix": f"spiffe://{registry.trust_domain}/"}}]
    alpn = ["h2", "http/1.1"] if http else []
    return {"name": TLS, "typed_config": {"@type": DOWNSTREAM_TLS, "require_client_certificate": True,
                                          "common_tls_context": _common(workload, matchers, alpn, server=True)}}


def sni(port: int, subset: str | None, fqdn: str) -> str:
    """Istio's SNI for mesh mTLS: outbound_.9080_.v1_.reviews.default.svc.cluster.local."""
    return f"outbound_.{port}_.{subset or ''}_.{fqdn}"
