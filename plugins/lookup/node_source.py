"""The source of the collection's code that also runs on the VMs, for a role to install it there."""

from __future__ import annotations

DOCUMENTATION = r"""
name: node_source
short_description: The source of a vmesh helper that runs on the VMs outside Ansible
description:
  - Returns the text of a file of the collection's C(plugins/module_utils) that a VM also runs on its own, outside
    Ansible - the boot-time iptables helper, the renewal agent, the online CA server and the code they share - so a
    role installs the very code its modules use, from the installed collection, with M(ansible.builtin.copy)
    (check mode and diff included).
  - Only the names of the standard-library-only files that run on the VMs are served.
  - With O(with_imports), each name gives the file and every module_utils file it imports, directly or not, as
    dictionaries C({name, content}) (C(name) is the file name, e.g. C(certs.py)), sorted by name and without
    repetition. A role installs them under C(<lib>/ansible_collections/vmesh/mesh/plugins/module_utils/), so the
    imports read on the VM as they do in the collection; the program then runs with C(<lib>) first on C(sys.path).
options:
  _terms:
    description: Names of the helpers, without C(.py).
    type: list
    elements: str
    required: true
  with_imports:
    description: Return each named file and the module_utils files it imports, as C({name, content}) dictionaries.
    type: bool
    default: false
  lib:
    description: "With O(with_imports): the C(<lib>) folder on the VM; each file is then returned as C({dest,
      content}), C(dest) its path under C(<lib>/ansible_collections/vmesh/mesh/plugins/module_utils/), as
      M(vmesh.mesh.host_files) takes them."
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: The text of one helper
  ansible.builtin.debug:
    msg: "{{ lookup('vmesh.mesh.node_source', 'errors') }}"

- name: Install the renewal agent and what it imports, as the collection lays them out
  ansible.builtin.copy:
    content: "{{ item.content }}"
    dest: /opt/vmesh/lib/renew/ansible_collections/vmesh/mesh/plugins/module_utils/{{ item.name }}
    owner: root
    group: root
    mode: "0644"
  loop: "{{ query('vmesh.mesh.node_source', 'renew', with_imports=true) }}"
  loop_control:
    label: "{{ item.name }}"

- name: The same in one call
  vmesh.mesh.host_files:
    files: "{{ query('vmesh.mesh.node_source', 'renew', with_imports=true, lib='/opt/vmesh/lib/renew') }}"
"""

RETURN = r"""
_raw:
  description: The text of each named helper, in order; with O(with_imports), C({name, content}) dictionaries.
  type: list
  elements: raw
"""

import ast
import os
import pkgutil

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

PACKAGE = "ansible_collections.vmesh.mesh.plugins.module_utils"
#: The module_utils files that also run on a VM by themselves (standard library and each other only).
SERVED = ("iptables", "certs", "renew", "ca_server", "errors", "host", "pem", "policy")


def source(name):
    """The text of module_utils/<name>.py, for a name in SERVED."""
    if name not in SERVED:
        raise AnsibleLookupError("vmesh.mesh.node_source: %r is not a helper that runs on the VMs (one of %s)"
                                 % (name, ", ".join(SERVED)))
    data = pkgutil.get_data(PACKAGE, name + ".py")
    if data is None:  # outside Ansible's collection loader (tests): the namespace package has no loader
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils", name + ".py")
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            raise AnsibleLookupError("vmesh.mesh.node_source: %s.py is missing from the collection" % name) from None
    return data.decode("utf-8")


def imports(text, name):
    """The module_utils names ``text`` imports: ``from <PACKAGE>.x import ...`` and ``from <PACKAGE> import x``."""
    found = set()
    for node in ast.walk(ast.parse(text, name + ".py")):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module[len(PACKAGE) + 1:].split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name[len(PACKAGE) + 1:].split(".")[0])
    return found


def closure(names):
    """{file name: text} of ``names`` and every module_utils file they import, directly or not."""
    files, todo = {}, list(names)
    while todo:
        name = todo.pop()
        if name + ".py" in files:
            continue
        text = source(name)
        files[name + ".py"] = text
        todo.extend(sorted(imports(text, name)))
    return files


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        if self.get_option("with_imports"):
            files = closure(terms)
            lib = self.get_option("lib")
            if lib:
                code = os.path.join(lib, "ansible_collections", *PACKAGE.split(".")[1:])
                return [{"dest": os.path.join(code, name), "content": files[name]} for name in sorted(files)]
            return [{"name": name, "content": files[name]} for name in sorted(files)]
        return [source(name) for name in terms]
