#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: workload_key
short_description: Decide whether a VM's workload certificate must be renewed; if so make a key and CSR on the VM
description:
  - Step 1 of 3 of issuing a workload certificate (then M(vmesh.mesh.ca_sign) where the CA lives, then
    M(vmesh.mesh.workload_cert) on the VM). The private key is born on the VM and never leaves it.
  - 'Decides whether the certificate installed in O(path) must be replaced. Reasons, most serious first:
    C(missing) (no certificate, or one that cannot be read), C(key) (C(key.pem) does not match the certificate),
    C(identity) (its URI subjectAltName is not O(identity)), C(issuer) (its authority key identifier is not the
    subject key identifier of O(issuer), for example after a root rotation; CAs without key identifiers are
    compared by name), C(expiring) (less than O(renew_ratio) of its lifetime remains), C(forced).'
  - When a renewal is needed, makes C(pending/key.pem) (EC P-256, C(openssl genpkey), mode C(0600)) unless an
    interrupted run left one there, which is reused, and a new C(pending/csr.pem) (C(openssl req -new), subject
    C(O=<trust domain>), subjectAltName C(URI:<identity>)), and returns the CSR.
  - 'Runs as root, so it never follows a link or opens a file in a directory another user can write: C(pending/)
    is C(0700) C(root:root); one found owned or writable by another user (the proxy''s user owned it in earlier
    versions), or a link in its place, is removed without being looked into and made again; a C(key.pem) there that
    is not a regular file is replaced, never followed. Directories above O(path) must belong to root and be
    writable by root only, else the module fails.'
  - A version in force that another user can write, or that holds anything but regular files, counts as no
    certificate (reason C(missing), with a warning); it is never read, and the next install replaces it.
  - Uses the C(openssl) command line and the Python standard library only.
options:
  path:
    description: The certificate directory (see M(vmesh.mesh.workload_cert)). Made (C(0750), group O(group)) when needed.
    type: path
    required: true
  owner:
    description:
      - Ignored, with a warning when it names another user than the one running the module. The key and its
        directories belong to root; the proxy reads the installed key through O(group) (see M(vmesh.mesh.workload_cert)).
    type: str
  group:
    description: Group of O(path) (the proxy's group, which reads the installed files). A name or a gid.
    type: str
    default: vmesh-proxy
  issuer:
    description:
      - PEM of the CA certificate that issues leaves now (the intermediate, or the root when there is none); only
        its first certificate is used, so C({{ ca.chain or ca.trust_bundle }}) from M(vmesh.mesh.ca) works.
      - Leave it out (or empty) to skip the C(issuer) check.
    type: str
  renew_ratio:
    description: Renew once less than this fraction of the certificate's total lifetime remains (Istio's grace ratio).
    type: float
    default: 0.5
  force:
    description: Renew whatever the state of the certificate.
    type: bool
    default: false
extends_documentation_fragment:
  - action_common_attributes
  - vmesh.mesh.pki.identity
  - vmesh.mesh.pki.openssl
attributes:
  check_mode:
    support: full
    details: Decides and returns RV(needed) and RV(reason); writes nothing, and RV(csr) is empty.
  diff_mode:
    support: full
    details: Shows the pending request (identity), never key material.
  platform:
    platforms: posix
seealso:
  - module: vmesh.mesh.ca_sign
  - module: vmesh.mesh.workload_cert
"""

EXAMPLES = r"""
- name: Decide on renewal; make a key and CSR on the VM when needed
  vmesh.mesh.workload_key:
    path: /etc/vmesh/certs
    identity: "spiffe://cluster.local/ns/default/sa/{{ vmesh_service_account }}"
    issuer: "{{ mesh_ca.chain or mesh_ca.trust_bundle }}"
  register: workload_key
"""

RETURN = r"""
needed:
  description: Whether the certificate must be replaced.
  type: bool
  returned: always
reason:
  description: The most serious reason (C(missing), C(key), C(identity), C(issuer), C(expiring), C(forced)); empty
    when not needed.
  type: str
  returned: always
reasons:
  description: Every reason that applies, most serious first.
  type: list
  elements: str
  returned: always
csr:
  description: The CSR (PEM) to sign when RV(needed); empty otherwise and in check mode.
  type: str
  returned: always
serial:
  description: Serial of the installed certificate, lower-case hex; empty when there is none.
  type: str
  returned: always
not_after:
  description: End of validity of the installed certificate, ISO 8601 UTC; empty when there is none.
  type: str
  returned: always
identity:
  description: URI subjectAltName of the installed certificate; empty when there is none.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.workload import workload_key, workload_key_spec


def main():
    module = AnsibleModule(argument_spec=workload_key_spec(), supports_check_mode=True)
    try:
        result = workload_key(module)
    except HostError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
