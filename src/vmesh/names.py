"""Envoy cluster names as Istio spells them, at the bottom of the compiler (Istio keeps BuildSubsetKey in its
model package, below every builder): the compiler names its clusters with them, the canary rollouts read Envoy's
stats by them."""

from __future__ import annotations


def outbound_name(port: int, subset: str | None, fqdn: str) -> str:
    """``outbound|PORT|SUBSET|FQDN``: the client-side cluster of a service port (of one subset, or all)."""
    return f"outbound|{port}|{subset or ''}|{fqdn}"


def inbound_name(port: int) -> str:
    """``inbound|PORT||``: the server-side cluster of a workload port."""
    return f"inbound|{port}||"
