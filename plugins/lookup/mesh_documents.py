"""The Istio documents of a mesh directory on the controller, read in-process for the preflight's compile."""

from __future__ import annotations

DOCUMENTATION = r"""
name: mesh_documents
short_description: The Istio YAML documents under a mesh directory, as [path, text] pairs
description:
  - "Returns one C([path, text]) pair per C(*.yaml) and C(*.yml) file under the directory given (its folders
    included; hidden files and folders are skipped), sorted by path: the C(sources) of M(vmesh.mesh.build)."
  - A missing directory is an error; an empty one is a mesh with no routing rules. Links to directories are not
    followed; files must be UTF-8 and at most 16 MiB each.
  - Read on the controller in the calling process, without a module run (the preflight's stat, find and file
    lookups cost a process each).
options:
  _terms:
    description: The mesh directory (one).
    type: list
    elements: path
    required: true
"""

EXAMPLES = r"""
- name: The mesh documents
  ansible.builtin.set_fact:
    sources: "{{ query('vmesh.mesh.mesh_documents', inventory_dir ~ '/mesh') }}"
"""

RETURN = r"""
_raw:
  description: "[path, text] pairs, sorted by path."
  type: list
  elements: list
"""

import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

#: A mesh document larger than this is refused rather than read.
MAX_DOCUMENT_BYTES = 16 << 20
SUFFIXES = (".yaml", ".yml")


def documents(folder):
    """[path, text] of every *.yaml and *.yml under ``folder``, sorted by path."""
    if not os.path.isdir(folder):
        raise AnsibleLookupError(f"{folder} is not a directory: set vmesh_mesh_dir to where the Istio YAML is")
    found = []
    for top, folders, names in os.walk(folder, onerror=None, followlinks=False):
        folders[:] = sorted(f for f in folders if not f.startswith("."))  # hidden ones skipped, as find does
        found.extend(os.path.join(top, n) for n in names if n.endswith(SUFFIXES) and not n.startswith("."))
    pairs = []
    for path in sorted(found):
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            raise AnsibleLookupError(f"{path}: {exc.strerror}") from None
        if len(data) > MAX_DOCUMENT_BYTES:
            raise AnsibleLookupError(f"{path} is larger than {MAX_DOCUMENT_BYTES} bytes; refused")
        try:
            pairs.append([path, data.decode("utf-8")])
        except UnicodeDecodeError:
            raise AnsibleLookupError(f"{path} is not UTF-8 text") from None
    return pairs


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if len(terms) != 1:
            raise AnsibleLookupError("vmesh.mesh.mesh_documents: give one mesh directory")
        return documents(os.path.abspath(os.path.expanduser(str(terms[0]))))
