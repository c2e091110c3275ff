#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ca
short_description: Keep the mesh CA (root, optional intermediate, roots trusted during a rotation)
description:
  - 'Makes, keeps, rotates or adopts the CA that issues workload certificates. Run it where the CA lives: the
    Ansible controller (C(delegate_to: localhost), C(run_once: true)) or a designated CA host.'
  - 'Layout of O(path) (mode C(0700)): C(root-cert.pem), C(root-key.pem) (C(0600)), optionally C(ca-cert.pem)
    and C(ca-key.pem) (C(0600)) for an intermediate issued by the root, and C(previous-roots.pem) holding older
    roots still trusted during a root rotation.'
  - An existing, consistent CA is left alone. Every run checks that each key in O(path) matches its certificate
    and that the intermediate was issued by the root, and fails otherwise.
  - A generated intermediate (one whose root key is in O(path)) is replaced by a new one when less than a fifth
    of its lifetime remains; workloads then get new certificates (the C(issuer) reason of
    M(vmesh.mesh.workload_key)) and their old ones stay valid through the unchanged root. An adopted intermediate or a
    root near its end only gives a warning.
  - 'Root rotation is three runs apart: O(rotate=true) (new root, the old one kept in C(previous-roots.pem) so the
    trust bundle holds both); then reissue every workload certificate; then O(retire_previous=true).'
options:
  path:
    description: The CA directory. Made with mode C(0700) when missing.
    type: path
    required: true
  trust_domain:
    description: The mesh's trust domain; a generated root is C(O=<trust domain>, CN=vmesh root CA (<trust domain>)).
    type: str
    default: cluster.local
  intermediate:
    description:
      - Make an intermediate (its key born here) when there is none, and sign leaves with it.
      - V(false) does not remove an existing intermediate; O(rotate=true) with O(intermediate=false) does.
      - Ignored when O(intermediate_cert) is given.
    type: bool
    default: false
  key_type:
    description: Key type of generated roots and intermediates.
    type: str
    choices: [ec-p256, rsa-2048]
    default: ec-p256
  root_days:
    description: Lifetime of a generated root, in days.
    type: int
    default: 3650
  intermediate_days:
    description: Lifetime of a generated intermediate, in days (never beyond the root's).
    type: int
    default: 365
  rotate:
    description:
      - An action, V(changed) whenever it runs. Makes a new root (or adopts O(root_cert), which must then differ
        from the current root), and a new intermediate when O(intermediate) (or adopts O(intermediate_cert));
        moves the old root into C(previous-roots.pem) and deletes the old root key and the old intermediate.
      - Run it once, not on every play.
    type: bool
    default: false
  retire_previous:
    description: Empty C(previous-roots.pem), ending a rotation. Changed only when it held roots.
    type: bool
    default: false
  root_cert:
    description:
      - Path (on the machine running the module) of your own self-signed root to adopt. Copied into O(path) once;
        unchanged when the same root is already there. A different root fails unless O(rotate=true).
    type: path
  root_key:
    description:
      - Path of the key of O(root_cert), copied into O(path) (C(0600)). Optional when O(intermediate_cert) is
        given (the root key is then not needed here) or when the root key is given to M(vmesh.mesh.ca_sign) as
        O(vmesh.mesh.ca_sign#module:signer_key_content).
    type: path
  root_key_content:
    description: The PEM of the root key, for example decrypted from Ansible Vault; instead of O(root_key).
    type: str
  intermediate_cert:
    description:
      - Path of your own intermediate, issued by O(root_cert) (required with it). Leaves are signed with it.
        Replaces an intermediate in O(path) when different (same root, so no rotation is needed).
    type: path
  intermediate_key:
    description:
      - Path of the key of O(intermediate_cert), copied into O(path) (C(0600)). Leave it out to keep the key
        off this disk and give it to M(vmesh.mesh.ca_sign) as O(vmesh.mesh.ca_sign#module:signer_key_content).
    type: path
  intermediate_key_content:
    description: The PEM of the intermediate's key (for example from Ansible Vault); instead of O(intermediate_key).
    type: str
extends_documentation_fragment:
  - action_common_attributes
attributes:
  check_mode:
    support: full
    details: In check mode the returned values describe the CA as it is now; nothing is generated.
  diff_mode:
    support: full
    details: Subjects, fingerprints and expiry dates of the certificates, whether keys are present; never a key.
  platform:
    platforms: posix
requirements:
  - cryptography >= 42 (on the machine running the module)
notes:
  - Keys given with O(root_key_content) or O(intermediate_key_content) are written into O(path) unencrypted
    (C(0600)). To keep a key only in the vault, do not give it here; give it to M(vmesh.mesh.ca_sign).
seealso:
  - module: vmesh.mesh.ca_sign
  - module: vmesh.mesh.workload_key
  - module: vmesh.mesh.workload_cert
"""

EXAMPLES = r"""
- name: Mesh CA on the controller, with an intermediate
  vmesh.mesh.ca:
    path: "{{ playbook_dir }}/../.vmesh-ca"
    trust_domain: cluster.local
    intermediate: true
  delegate_to: localhost
  run_once: true
  register: mesh_ca

- name: Plug in the company CA; its root key stays offline
  vmesh.mesh.ca:
    path: /srv/vmesh-ca
    root_cert: /srv/pki/root.pem
    intermediate_cert: /srv/pki/mesh-intermediate.pem
    intermediate_key_content: "{{ vault_mesh_intermediate_key }}"
  delegate_to: localhost
  run_once: true

- name: Root rotation, step 1 of 3 (then reissue all workload certificates, then retire_previous)
  vmesh.mesh.ca:
    path: /srv/vmesh-ca
    intermediate: true
    rotate: true
  delegate_to: localhost
  run_once: true

- name: Root rotation, step 3 of 3
  vmesh.mesh.ca:
    path: /srv/vmesh-ca
    retire_previous: true
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
trust_bundle:
  description: PEM of the current root, then the previous roots (stable order). What every workload trusts.
  type: str
  returned: always
chain:
  description: PEM of the intermediate, or an empty string when leaves are signed by the root.
  type: str
  returned: always
root_fingerprint:
  description: SHA-256 of the current root's DER, lower-case hex; empty when there is no root (check mode).
  type: str
  returned: always
  sample: 3f1a0c...
previous_fingerprints:
  description: SHA-256 fingerprints of the previous roots, in bundle order.
  type: list
  elements: str
  returned: always
created:
  description: Names of the files in O(path) written (in check mode, that would be written).
  type: list
  elements: str
  returned: always
  sample: [root-key.pem, root-cert.pem]
removed:
  description: Names of the files in O(path) removed (the old root key after a rotation, for example).
  type: list
  elements: str
  returned: always
reasons:
  description: Why an existing CA changed, when it did (C(rotate), C(intermediate expiring)).
  type: list
  elements: str
  returned: always
"""

import re

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.vmesh.mesh.plugins.module_utils.ca import HAS_CRYPTOGRAPHY, CRYPTOGRAPHY_IMPORT_ERROR, KEY_TYPES, CAError
from ansible_collections.vmesh.mesh.plugins.module_utils.ca import apply, load_adopted, plan, results

TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")


def argument_spec():
    return dict(
        path=dict(type="path", required=True),
        trust_domain=dict(type="str", default="cluster.local"),
        intermediate=dict(type="bool", default=False),
        key_type=dict(type="str", default="ec-p256", choices=list(KEY_TYPES)),
        root_days=dict(type="int", default=3650),
        intermediate_days=dict(type="int", default=365),
        rotate=dict(type="bool", default=False),
        retire_previous=dict(type="bool", default=False),
        root_cert=dict(type="path"),
        root_key=dict(type="path", no_log=False),
        root_key_content=dict(type="str", no_log=True),
        intermediate_cert=dict(type="path"),
        intermediate_key=dict(type="path", no_log=False),
        intermediate_key_content=dict(type="str", no_log=True),
    )


def ensure(module):
    """Decide (plan), then act unless in check mode. Raises CAError."""
    p = module.params
    if p["root_days"] <= 0 or p["intermediate_days"] <= 0:
        raise CAError("root_days and intermediate_days must be positive")
    if not TRUST_DOMAIN_RE.match(p["trust_domain"]):
        raise CAError("trust_domain %r: use lower-case letters, digits, '.', '-' and '_' (a SPIFFE trust domain)"
                      % p["trust_domain"])
    adopted = load_adopted(root_cert=p["root_cert"], root_key=p["root_key"], root_key_content=p["root_key_content"],
                           intermediate_cert=p["intermediate_cert"], intermediate_key=p["intermediate_key"],
                           intermediate_key_content=p["intermediate_key_content"])
    the_plan = plan(p["path"], trust_domain=p["trust_domain"], intermediate=p["intermediate"], rotate=p["rotate"],
                    retire_previous=p["retire_previous"], adopted=adopted)
    for warning in the_plan.warnings:
        module.warn(warning)
    changed = bool(the_plan.changed_files or the_plan.removed_files)
    before = the_plan.current.summary()
    if changed and not module.check_mode:
        ca = apply(p["path"], the_plan, p["trust_domain"], p["key_type"], p["root_days"], p["intermediate_days"])
    else:
        ca = the_plan.current if module.check_mode else the_plan.wanted
    after = ca.summary() if not module.check_mode else the_plan.wanted.summary()
    result = dict(changed=changed, created=the_plan.changed_files, removed=the_plan.removed_files,
                  reasons=the_plan.reasons, **results(ca))
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    return result


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        mutually_exclusive=[("root_key", "root_key_content"), ("intermediate_key", "intermediate_key_content"),
                            ("rotate", "retire_previous")],
        required_by={"root_key": "root_cert", "root_key_content": "root_cert", "intermediate_cert": "root_cert",
                     "intermediate_key": "intermediate_cert", "intermediate_key_content": "intermediate_cert"},
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        result = ensure(module)
    except CAError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
