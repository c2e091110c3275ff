"""Documentation shared by the PKI modules: the mesh CA's directory, a workload's identity, what each side needs."""

from __future__ import annotations


class ModuleDocFragment:
    # Not used alone: the sub-fragments below are.
    DOCUMENTATION = r"""
options: {}
"""

    # vmesh.mesh.ca_sign and vmesh.mesh.ca_sign_intermediate: they sign with the CA that vmesh.mesh.ca keeps.
    CA_DIR = r"""
options:
  path:
    description: The CA directory kept by M(vmesh.mesh.ca).
    type: path
    required: true
requirements:
  - cryptography >= 42 (on the machine running the module)
"""

    # vmesh.mesh.workload_key (the CSR) and vmesh.mesh.ca_sign (the certificate) name the same identity.
    IDENTITY = r"""
options:
  identity:
    description: The workload's SPIFFE identity, C(spiffe://<trust domain>/ns/<namespace>/sa/<service account>).
    type: str
    required: true
"""

    # The modules that run on the VM and make keys or check certificates with the openssl command.
    OPENSSL = r"""
options: {}
requirements:
  - the openssl command line (package openssl; OpenSSL 3.0 tested)
"""
