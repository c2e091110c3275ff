"""Documentation shared by the modules that push Envoy's config directory (envoy_config, sidecar_config)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  dest:
    description: The config directory Envoy watches (the compiler's C(vmesh_config_dir)).
    type: path
    required: true
  envoy:
    description: The Envoy binary used for validation.
    type: path
    required: true
  bootstrap:
    description: The name of the bootstrap file; a change to it needs a restart, which the module reports.
    type: str
    default: envoy.json
  mode:
    description: Mode of the written files.
    type: raw
    default: "0644"
  reload_timeout:
    description: Seconds a running Envoy may take to read and warm each step before the push is undone.
    type: float
    default: 30
"""
