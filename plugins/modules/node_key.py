#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_key
short_description: A private key made once on this host, which never leaves it; returns its public key
description:
  - Makes an EC P-256 private key at O(path) (C(openssl genpkey), PKCS#8 PEM), written atomically with mode
    C(0600) and owner O(owner):O(group) set before it appears. Its parent directory is made C(0700), owned by the
    user running the module (root), when it is missing.
  - An existing key is kept, whatever its type, as long as C(openssl) can read it; a wrong mode or owner is
    corrected. Only the public key (SPKI PEM) is returned, never key bytes.
  - 'Runs as root, so it never follows a link or opens a file in a directory another user can write: the
    directories above O(path) must belong to root and be writable by root only, and O(path) must be a regular
    file, not a link (O(force) replaces whatever is there without following it); otherwise the module fails.'
  - 'The node key of the certificate renewal agent (C(vmesh-renew)): it signs the agent''s requests to the CA
    server, which holds the public key and the one identity this node may ask for. The key does not expire;
    deleting the node''s registration on the CA server revokes it. The CA server''s intermediate key is made
    the same way (O(path) in its state directory).'
  - Uses the C(openssl) command line and the Python standard library only.
options:
  path:
    description: Where the key is.
    type: path
    default: /etc/vmesh/node/node-key.pem
  owner:
    description: User owning the key (its directory, when made, is root's). A name or a uid.
    type: str
    default: root
  group:
    description: Group of the key. A name or a gid.
    type: str
    default: root
  force:
    description:
      - Replace the key with a new one (for example after a suspected leak). The new public key must then be
        registered again where the old one was (the C(identity) role does it in the same play).
      - Also the way to replace a file that is not a readable key; without it that fails.
    type: bool
    default: false
extends_documentation_fragment:
  - action_common_attributes
  - vmesh.mesh.pki.openssl
attributes:
  check_mode:
    support: full
    details: Decides only; RV(public_key) is empty when a key would be made.
  diff_mode:
    support: full
    details: SHA-256 of the public key, mode and owner; never key material.
  platform:
    platforms: posix
seealso:
  - module: vmesh.mesh.workload_key
  - module: vmesh.mesh.ca_sign_intermediate
"""

EXAMPLES = r"""
- name: The node key of the renewal agent (made once; only its public key leaves the host)
  vmesh.mesh.node_key:
    path: /etc/vmesh/node/node-key.pem
  register: node_key

- name: The CA server's intermediate key, born on the CA server
  vmesh.mesh.node_key:
    path: /var/lib/vmesh-ca/intermediate-key.pem
"""

RETURN = r"""
public_key:
  description: The public key, SPKI PEM (C(-----BEGIN PUBLIC KEY-----)). Empty in check mode when a key would be
    made.
  type: str
  returned: always
fingerprint:
  description: SHA-256 of the public key's DER (SubjectPublicKeyInfo), lower-case hex; empty with RV(public_key).
  type: str
  returned: always
path:
  description: Where the key is.
  type: str
  returned: always
reason:
  description: Why something changed (C(missing), C(forced), C(attributes)); empty when nothing did.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.workload import node_key, node_key_spec


def main():
    module = AnsibleModule(argument_spec=node_key_spec(), supports_check_mode=True)
    try:
        result = node_key(module)
    except HostError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
