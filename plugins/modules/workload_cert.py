#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: workload_cert
short_description: Install a VM's workload certificate and trust bundle atomically, for Envoy's SDS to reload
description:
  - Step 3 of 3 of issuing a workload certificate (after M(vmesh.mesh.workload_key) and M(vmesh.mesh.ca_sign)).
  - 'Layout of O(path) (Kubernetes'' atomic-writer layout): a version directory C(..<YYYYmmddTHHMMSS>.<6 hex>)
    (C(0750)) holding C(cert-chain.pem) (C(0644)), C(key.pem) (C(0640)) and C(root-cert.pem) (C(0644), the trust
    bundle), all owned by C(root):O(group); a link C(..data) to it, swapped with one C(rename(2)) of
    C(..data_tmp); and top-level links C(cert-chain.pem), C(key.pem), C(root-cert.pem) into C(..data). Envoy''s
    SDS C(watched_directory) on O(path) reloads on the swap, with no restart; Envoy runs as the proxy''s user and
    reads the files through its group. O(path) itself is C(0750) C(root):O(group).'
  - With O(chain), checks that the leaf's public key matches C(pending/key.pem) and that the chain verifies to
    O(trust_bundle) (C(openssl verify)); if either fails nothing changes. Then installs a new version with the
    chain, the pending key and the bundle, swaps C(..data), and removes C(pending/) and the old versions. A chain
    that is already installed is not installed again.
  - Without O(chain) (or with an empty one), keeps the current certificate and key and installs a new version only
    when O(trust_bundle) differs from the installed one (the steps of a root rotation). It warns when the kept
    certificate does not verify against the new bundle (a root retired before the workload was reissued).
  - Contents are compared as bytes after normalising the PEM (64-column base64, no text outside the blocks). A
    new version is also written when the files in force have another mode or owner than wanted (files owned by
    the proxy's user, as earlier versions made them, are rewritten as root's).
  - 'Runs as root, so it never follows a link or opens a file in a directory another user can write: every file
    is opened with C(O_NOFOLLOW) and must be a regular file; a C(pending/) or version directory that another user
    owns or can write is never read, and is removed (without following links) by the next install, which is then
    reported as a change. Directories above O(path) must belong to root and be writable by root only.'
  - Uses the C(openssl) command line and the Python standard library only.
options:
  path:
    description: The certificate directory.
    type: path
    required: true
  chain:
    description: The leaf then its intermediates, PEM (RV(vmesh.mesh.ca_sign#module:chain)), signed for the pending key.
    type: str
  trust_bundle:
    description: The roots to trust, PEM (RV(vmesh.mesh.ca#module:trust_bundle)).
    type: str
    required: true
  owner:
    description:
      - Ignored, with a warning when it names another user than the one running the module. The files belong to
        root; the proxy reads them through O(group).
    type: str
  group:
    description: Group of the files and of O(path) (the proxy's group). A name or a gid.
    type: str
    default: vmesh-proxy
extends_documentation_fragment:
  - action_common_attributes
  - vmesh.mesh.pki.openssl
attributes:
  check_mode:
    support: full
    details:
      - Decides only. An empty O(chain) or O(trust_bundle), as earlier steps give in check mode, is accepted
        then; with no certificate installed all files are reported as changing.
  diff_mode:
    support: full
    details: Serial, expiry and identity of the certificate and the SHA-256 fingerprints of the bundle; never a key.
  platform:
    platforms: posix
seealso:
  - module: vmesh.mesh.workload_key
  - module: vmesh.mesh.ca_sign
  - name: Envoy SDS watched_directory
    description: How Envoy reloads certificates swapped in this layout.
    link: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto#config-core-v3-watcheddirectory
"""

EXAMPLES = r"""
- name: Install the signed certificate (or only a new trust bundle)
  vmesh.mesh.workload_cert:
    path: /etc/vmesh/certs
    chain: "{{ workload_signed.chain | default('') }}"
    trust_bundle: "{{ mesh_ca.trust_bundle }}"
"""

RETURN = r"""
serial:
  description: Serial of the certificate in force afterwards, lower-case hex.
  type: str
  returned: always
not_after:
  description: End of validity of the certificate in force afterwards, ISO 8601 UTC.
  type: str
  returned: always
identity:
  description: URI subjectAltName of the certificate in force afterwards.
  type: str
  returned: always
changed_files:
  description: Which of C(cert-chain.pem), C(key.pem), C(root-cert.pem) changed (or would change).
  type: list
  elements: str
  returned: always
version:
  description: Name of the version directory in force afterwards (in check mode, the current one).
  type: str
  returned: always
removed:
  description: Staging and version directories that another user owned or could write, removed (or, in check
    mode, to remove) without being read.
  type: list
  elements: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.workload import workload_cert, workload_cert_spec


def main():
    module = AnsibleModule(argument_spec=workload_cert_spec(), supports_check_mode=True)
    try:
        result = workload_cert(module)
    except HostError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
