#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ca_sign_intermediate
short_description: Sign the CSR of an intermediate CA born elsewhere (the online CA server's) with the mesh root
description:
  - 'Signs, with the root in O(path) (see M(vmesh.mesh.ca); an intermediate there is not used), the CSR of an intermediate CA whose key was made on
    another host and never leaves it: the CA server that renews workload certificates on its own (role
    C(ca_server)). Run it where the root lives (C(delegate_to: localhost)). The root key never leaves it either.'
  - 'The certificate: X.509 v3, random 128-bit serial, valid from 5 minutes ago (clock skew) for O(days) (never
    beyond the root), subject C(O=<trust domain>, CN=<common name>) (the CSR''s own subject and extensions are
    not copied), basicConstraints CA:TRUE pathlen 0 (critical: it may sign leaves only), keyUsage keyCertSign,
    cRLSign and digitalSignature (critical), subject and authority key identifiers, and with
    O(name_constraints) a critical nameConstraints extension (see there).'
  - Refuses a CSR whose signature is invalid (the proof that its key is held), with a key that is neither EC nor
    RSA of at least 2048 bits, and a root that may not issue intermediates (pathlen 0).
  - 'Idempotent through O(current): when the certificate in use now was issued by the current root for the same
    key, with the same subject and constraints, and more than a fifth of its lifetime remains, it is returned
    unchanged and nothing is signed (V(changed=false)). Otherwise a new one is signed (V(changed=true)): on the
    first run, after a root rotation (C(issuer)), a new key (C(key)), other constraints (C(constraints), for
    example an intermediate of an earlier version constrained to URIs only, or new O(server_names)) or near its
    end (C(expiring)).'
  - Unlike M(vmesh.mesh.ca_sign), which signs short-lived leaves on every renewal and reports V(changed=false), this
    module reports V(changed=true) whenever it issues a new CA certificate, an event worth seeing in a play.
options:
  csr:
    description:
      - The intermediate's CSR, PEM, made with its key where that key lives.
      - May be empty in check mode only (the step that makes it was skipped); the task then reports what it can.
    type: str
    required: true
  trust_domain:
    description: The mesh's trust domain; the subject's C(O) and the permitted URI host of O(name_constraints).
    type: str
    default: cluster.local
  common_name:
    description: The subject's C(CN). Defaults to C(vmesh CA server (<trust domain>)).
    type: str
  days:
    description: Lifetime of the certificate, in days (never beyond the root's).
    type: int
    default: 365
  name_constraints:
    description:
      - 'Add a critical nameConstraints extension, so that even a stolen intermediate key can mint nothing that
        verifies to the mesh root outside the mesh: permitted are C(URI) names whose host is the trust domain
        (C(spiffe://<trust domain>/...)) and the C(DNS) names and C(IP) addresses of O(server_names) (a
        permitted DNS name also covers the names below it, RFC 5280); excluded are every DNS name when
        O(server_names) holds none (an empty C(dNSName) matches all) and every IPv4 and IPv6 address when it
        holds no address. Without an excluded subtree a name type with no permitted one would not be
        constrained at all.'
    type: bool
    default: true
  server_names:
    description:
      - DNS names and IP addresses the intermediate may sign besides the trust domain's URIs (with
        O(name_constraints)), that is those of the CA server's own TLS certificate (the C(ca_server) role's
        C(ca_server_names)).
    type: list
    elements: str
    default: []
  current:
    description: PEM of the intermediate certificate in use now (empty or left out when there is none).
    type: str
    default: ""
  signer_key_content:
    description:
      - PEM of the root's key, for a root key kept under Ansible Vault rather than in O(path). Must match
        C(root-cert.pem). Without it the key is read from C(root-key.pem) in O(path).
      - Not needed when O(current) is kept.
    type: str
extends_documentation_fragment:
  - action_common_attributes
  - vmesh.mesh.pki.ca_dir
attributes:
  check_mode:
    support: full
    details: Decides, and signs nothing; RV(certificate) is then O(current) when it is kept, else empty.
  diff_mode:
    support: full
    details: Subject, SHA-256 fingerprint and end of validity of the certificate in use and of the one returned.
  platform:
    platforms: posix
seealso:
  - module: vmesh.mesh.ca
  - module: vmesh.mesh.ca_sign
  - module: vmesh.mesh.node_key
"""

EXAMPLES = r"""
- name: Sign the CA server's intermediate with the mesh root on the controller
  vmesh.mesh.ca_sign_intermediate:
    path: "{{ inventory_dir }}/ca"
    csr: "{{ (ca_server_request.stdout | from_json).csr }}"
    current: "{{ (ca_server_request.stdout | from_json).current }}"
    trust_domain: cluster.local
    name_constraints: true
    server_names: [10.0.0.5, ca.mesh.example]
  delegate_to: localhost
  run_once: true
  register: ca_server_intermediate
"""

RETURN = r"""
certificate:
  description: The intermediate certificate, PEM (O(current) when it is kept). Empty in check mode when a new one
    would be signed.
  type: str
  returned: always
issued:
  description: Whether a new certificate was (in check mode, would be) signed.
  type: bool
  returned: always
reasons:
  description: Why O(current) could not stay (C(missing), C(issuer), C(key), C(subject), C(constraints),
    C(expiring)); empty when it was kept.
  type: list
  elements: str
  returned: always
serial:
  description: Serial number of RV(certificate), lower-case hex; empty with it.
  type: str
  returned: always
not_after:
  description: End of validity of RV(certificate), ISO 8601 UTC; empty with it.
  type: str
  returned: always
  sample: "2027-01-02T03:04:05Z"
fingerprint:
  description: SHA-256 of the DER of RV(certificate), lower-case hex; empty with it.
  type: str
  returned: always
trust_bundle:
  description: PEM of the current root, then the roots still trusted during a rotation; what verifies the chain.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.vmesh.mesh.plugins.module_utils.ca import HAS_CRYPTOGRAPHY, CRYPTOGRAPHY_IMPORT_ERROR, NEW, CAError, describe
from ansible_collections.vmesh.mesh.plugins.module_utils.ca import load_cert, sign_intermediate


def argument_spec():
    return dict(
        path=dict(type="path", required=True),
        csr=dict(type="str", required=True),
        trust_domain=dict(type="str", default="cluster.local"),
        common_name=dict(type="str"),
        days=dict(type="int", default=365),
        name_constraints=dict(type="bool", default=True),
        server_names=dict(type="list", elements="str", default=[]),
        current=dict(type="str", default=""),
        signer_key_content=dict(type="str", no_log=True),
    )


def _described(pem):
    return describe(load_cert(pem.encode("ascii", "replace"), "certificate")) if (pem or "").strip() else None


def ensure(module):
    """Decide, then sign unless in check mode or the current certificate stays. Raises CAError."""
    p = module.params
    if not (p["csr"] or "").strip():
        if not module.check_mode:
            raise CAError("csr is empty: give the intermediate's CSR (PEM)")
        # The CSR comes from a step that check mode skipped: nothing can be judged.
        return dict(changed=False, skipped=True, msg="no CSR in check mode; nothing is judged or signed",
                    certificate="", issued=False, reasons=[], serial="", not_after="", fingerprint="",
                    trust_bundle="")
    result = sign_intermediate(p["path"], p["csr"], trust_domain=p["trust_domain"], common_name=p["common_name"],
                               days=p["days"], name_constraints=p["name_constraints"],
                               server_names=p["server_names"], current=p["current"],
                               signer_key_content=p["signer_key_content"], check_mode=module.check_mode)
    result["changed"] = result["issued"]
    if module._diff:
        after = _described(result["certificate"]) if result["certificate"] else describe(NEW)
        result["diff"] = {"before": _described(p["current"]), "after": after}
    return result


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        result = ensure(module)
    except CAError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
