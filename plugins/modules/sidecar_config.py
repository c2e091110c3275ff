#!/usr/bin/python
"""A sidecar's compiled config on its host in one call: Gateway certificates, Envoy config directory, service
names."""

from __future__ import annotations

DOCUMENTATION = r"""
module: sidecar_config
short_description: Converge a vmesh sidecar's compiled config on its host in one call
description:
  - "Puts one host's part of a vmesh build in force, in this order: the Gateway certificates that
    C(vmesh_credentials) gives on the controller (a folder C(<credentials_dir>/<credentialName>) each, root's,
    readable by the proxy's group; the key 0640), the Envoy config directory (as M(vmesh.mesh.envoy_config) does
    it: validated by C(envoy --mode validate), staged whole, switched make-before-break, hot-reloaded), then the
    service names in the hosts file (a marked block, as M(ansible.builtin.blockinfile) wrote it before)."
  - "Checks come before changes: the certificate folders a Gateway expects on the host (not given on the
    controller) must hold C(tls.crt) and C(tls.key), the hosts file must be a regular file of root's, and a
    refused config changes no file of the config directory or the hosts file."
  - The controller's side (an action plugin) reads the host's files and entry from the build directory given in
    O(build) and the given certificates' files; the module gets their contents, never a path on the controller.
    The certificates' contents are not logged.
  - "One module call per host instead of a task per part: on the demo's VMs a routing change is pushed in a
    fraction of the time of the tasks this replaces (bench/push.py)."
options:
  build:
    description: The build (what M(vmesh.mesh.build) returned, C({dir, build})).
    type: dict
    required: true
  host:
    description: The host whose part of the build is pushed.
    type: str
    default: the inventory host the task runs for
  hosts_file:
    description: The hosts file that gets the block of service names.
    type: path
    default: /etc/hosts
  credentials:
    description: "C(vmesh_credentials): credentialName to C({cert, key, ca}) paths on the controller. Only the
      names the host's Gateways use are pushed; the others a Gateway uses must be on the host already."
    type: dict
    default: {}
  credentials_dir:
    description: The folder that holds a folder per credentialName on the host.
    type: path
    default: /etc/vmesh/credentials
  credentials_group:
    description: The group that may read the certificates (the proxy's).
    type: str
    default: vmesh-proxy
  service:
    description: "A systemd unit that runs Envoy on this config (C(vmesh-proxy.service)): once the config is in
      force, it is enabled and started unless it is already. Empty: the unit is left as it is."
    type: str
    default: ""
extends_documentation_fragment:
  - vmesh.mesh.config_dir
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - "What the action plugin passes to the module on the host is internal: the files, the hosts entries, the
    certificates' contents (C(credential_texts), never logged) and the credentialNames expected on the host."
"""

EXAMPLES = r"""
- name: Push this host's compiled config
  vmesh.mesh.sidecar_config:
    build: "{{ preflight_built }}"
    dest: /etc/vmesh/envoy
    envoy: /opt/vmesh/bin/envoy
    credentials: "{{ vmesh_credentials | default({}) }}"
  register: pushed
"""

RETURN = r"""
changed_files:
  description: Config files written (new or different), in the order their changes reach Envoy.
  type: list
  returned: always
removed_files:
  description: Config files removed because they are no longer part of the config.
  type: list
  returned: always
bootstrap_changed:
  description: Whether Envoy must restart to read the change, its bootstrap or a secret's file it read when it started (the certificate files themselves change with no restart).
  type: bool
  returned: always
steps:
  description: The swaps made (or, in check mode, to make) in the config directory.
  type: list
  returned: always
version:
  description: The version directory in force (under O(dest)); empty in check mode when it would change.
  type: str
  returned: always
envoy_confirmed:
  description: Whether a running Envoy confirmed each swap.
  type: bool
  returned: always
hosts_changed:
  description: Whether the block of service names in the hosts file changed.
  type: bool
  returned: always
credentials_changed:
  description: The certificate folders and files written.
  type: list
  returned: always
service_changed:
  description: What was done to O(service), such as C(enable vmesh-proxy.service) or C(start vmesh-proxy.service).
  type: list
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.sidecar import argument_spec, converge


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    try:
        result = converge(module)
    except HostError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
