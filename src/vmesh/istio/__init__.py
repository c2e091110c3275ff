"""Istio's kinds read against the registry: one module per kind, and :mod:`vmesh.istio.model`, the validated
model the compiler turns into Envoy config (built by :func:`vmesh.load.mesh`)."""
