#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ca_sign
short_description: Sign a workload's CSR with the mesh CA, for exactly the identity the inventory assigns
description:
  - 'Signs a CSR made on a VM by M(vmesh.mesh.workload_key) with the CA in O(path) (see M(vmesh.mesh.ca)): with the
    intermediate C(ca-cert.pem) when there is one, else with the root. Run it where the CA lives
    (C(delegate_to: localhost)).'
  - Refuses a CSR whose signature is invalid, whose key is neither EC (P-256, P-384) nor RSA of 2048 to 8192 bits,
    that is not exactly one PEM certificate request, or whose subjectAltName is not exactly the one URI
    O(identity). The CA signs only the identity the inventory assigns, whatever the VM asks for.
  - This is the mesh's one certificate policy (C(plugins/module_utils/policy.py)), which the online CA server of
    the C(vmesh.mesh.ca_server) role applies too.
  - 'The certificate: X.509 v3, random 128-bit serial, valid from 5 minutes ago (clock skew) for
    O(lifetime_hours) (never beyond the issuer), subject C(O=<trust domain of identity>), subjectAltName
    C(URI:<identity>) (not critical, as the subject is not empty), keyUsage digitalSignature and
    keyEncipherment (critical), extendedKeyUsage serverAuth and clientAuth, basicConstraints CA:FALSE
    (critical), authority key identifier of the issuer, subject key identifier. The CSR''s own subject and
    extensions are not copied.'
  - Writes nothing, so it always reports V(changed=false).
options:
  csr:
    description: The CSR, PEM (RV(vmesh.mesh.workload_key#module:csr)).
    type: str
    required: true
  lifetime_hours:
    description: Lifetime of the certificate, in hours, from 1 to 2160 (90 days, Istio's default maximum).
    type: int
    default: 24
  signer_key_content:
    description:
      - PEM of the signing key (the intermediate's when there is one, else the root's), for a key kept under
        Ansible Vault rather than in O(path). Must match the signing certificate.
      - Without it the key is read from C(ca-key.pem) or C(root-key.pem) in O(path).
    type: str
extends_documentation_fragment:
  - action_common_attributes
  - vmesh.mesh.pki.ca_dir
  - vmesh.mesh.pki.identity
attributes:
  check_mode:
    support: full
    details: In check mode nothing is signed (the CSR of a check-mode run does not exist); the task is reported
      skipped with empty values.
  diff_mode:
    support: none
  platform:
    platforms: posix
seealso:
  - module: vmesh.mesh.ca
  - module: vmesh.mesh.workload_key
  - module: vmesh.mesh.workload_cert
"""

EXAMPLES = r"""
- name: Sign the workload's CSR on the controller
  vmesh.mesh.ca_sign:
    path: "{{ playbook_dir }}/../.vmesh-ca"
    csr: "{{ workload_key.csr }}"
    identity: "spiffe://cluster.local/ns/default/sa/{{ vmesh_service_account }}"
    lifetime_hours: 24
  delegate_to: localhost
  when: workload_key.needed
  register: workload_signed
"""

RETURN = r"""
certificate:
  description: The leaf certificate, PEM. Empty in check mode.
  type: str
  returned: always
chain:
  description: The leaf then the intermediate (when there is one), PEM; what M(vmesh.mesh.workload_cert) installs.
  type: str
  returned: always
serial:
  description: Serial number of the leaf, lower-case hex.
  type: str
  returned: always
not_after:
  description: End of the leaf's validity, ISO 8601 UTC.
  type: str
  returned: always
  sample: "2026-01-02T03:04:05Z"
skipped:
  description: True in check mode, where nothing is signed.
  type: bool
  returned: when check mode
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.vmesh.mesh.plugins.module_utils.ca import HAS_CRYPTOGRAPHY, CRYPTOGRAPHY_IMPORT_ERROR, CAError, sign


def argument_spec():
    return dict(
        path=dict(type="path", required=True),
        csr=dict(type="str", required=True),
        identity=dict(type="str", required=True),
        lifetime_hours=dict(type="int", default=24),
        signer_key_content=dict(type="str", no_log=True),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if module.check_mode:
        # The CSR comes from a check-mode run of vmesh.mesh.workload_key, which made none: nothing to sign or judge.
        module.exit_json(changed=False, skipped=True, msg="nothing is signed in check mode", certificate="",
                         chain="", serial="", not_after="")
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    p = module.params
    try:
        result = sign(p["path"], p["csr"], p["identity"], lifetime_hours=p["lifetime_hours"],
                      signer_key_content=p["signer_key_content"])
    except CAError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
