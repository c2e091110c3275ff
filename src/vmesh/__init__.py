"""vmesh: compile an Ansible inventory plus Istio documents into per-host Envoy configuration."""

__version__ = "0.1.0"
