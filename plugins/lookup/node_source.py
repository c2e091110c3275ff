"""The source of the collection's code that also runs on the VMs, for a role to install it there."""

from __future__ import annotations

DOCUMENTATION = r"""
name: node_source
short_description: The source of a vmesh helper that runs on the VMs outside Ansible
description:
  - Returns the text of a file of the collection's C(plugins/module_utils) that a VM also runs on its own, outside
    Ansible - the boot-time iptables helper, the renewal agent, the online CA server and the certificate code they
    share - so a role installs the very code its modules use, from the installed collection, with
    M(ansible.builtin.copy) (check mode and diff included).
  - Only the names listed under O(_terms) are served.
options:
  _terms:
    description: Names of the helpers, without C(.py).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Install the boot-time helper
  ansible.builtin.copy:
    content: "{{ lookup('vmesh.mesh.node_source', 'iptables') }}"
    dest: /opt/vmesh/lib/vmesh_iptables.py
    owner: root
    group: root
    mode: "0644"
"""

RETURN = r"""
_raw:
  description: The text of each named helper, in order.
  type: list
  elements: str
"""

import pkgutil

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

PACKAGE = "ansible_collections.vmesh.mesh.plugins.module_utils"
#: The module_utils files that also run on a VM by themselves (standard library only).
SERVED = ("iptables", "certs")


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        texts = []
        for name in terms:
            if name not in SERVED:
                raise AnsibleLookupError("vmesh.mesh.node_source: %r is not a helper that runs on the VMs (one of %s)"
                                         % (name, ", ".join(SERVED)))
            data = pkgutil.get_data(PACKAGE, name + ".py")
            if data is None:
                raise AnsibleLookupError("vmesh.mesh.node_source: %s.py is missing from the collection" % name)
            texts.append(data.decode("utf-8"))
        return texts
