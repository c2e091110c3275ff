"""One host's part of a vmesh build directory (vmesh.mesh.build, vmesh compile --out)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: compiled
short_description: One host's part of a vmesh build directory
description:
  - Reads, from a build directory written by M(vmesh.mesh.build) or C(vmesh compile --out), what the compiler made
    for each named host, and nothing of the other hosts.
  - "With O(part=entry), the host's entry, C({files, hosts_entries, edge_ports, credentials, identity, build}),
    where C(files) maps each file name to its SHA-256. With O(part=files), the files themselves, C({name: text}),
    each checked against its digest."
  - Given O(build), an entry of another build (the directory replaced by another compile meanwhile) is an error.
options:
  _terms:
    description: Inventory host names.
    type: list
    elements: str
    required: true
  dir:
    description: The build directory.
    type: path
    required: true
  build:
    description: The build id the entry must belong to (the C(build) that M(vmesh.mesh.build) returned).
    type: str
  part:
    description: C(entry) or C(files).
    type: str
    choices: [entry, files]
    default: entry
"""

EXAMPLES = r"""
- name: This host's part of the build
  ansible.builtin.set_fact:
    host_part: "{{ lookup('vmesh.mesh.compiled', inventory_hostname, dir=build.dir, build=build.build) }}"

- name: Push this host's files
  vmesh.mesh.envoy_config:
    dest: /etc/vmesh/envoy
    files: "{{ lookup('vmesh.mesh.compiled', inventory_hostname, dir=build.dir, build=build.build, part='files') }}"
    envoy: /opt/vmesh/bin/envoy
"""

RETURN = r"""
_raw:
  description: "One entry or one C({name: text}) mapping per host named."
  type: list
  elements: dict
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

try:
    from vmesh import artifact
    from vmesh.errors import MeshError
except ImportError as exc:  # pragma: no cover - install problem, reported when the lookup is used
    artifact = None
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        if IMPORT_ERROR is not None:
            raise AnsibleLookupError(f"vmesh.mesh.compiled: the vmesh package is not installed for this Python "
                                     f"({IMPORT_ERROR}); pip install the project")
        folder, build, part = self.get_option("dir"), self.get_option("build"), self.get_option("part")
        read = artifact.host_files if part == "files" else artifact.host_entry
        try:
            return [read(folder, str(host), build or None) for host in terms]
        except MeshError as exc:
            raise AnsibleLookupError(f"vmesh.mesh.compiled: {exc}") from exc
