"""Where a program vmesh builds from its Go module (vmesh tools build) is on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
name: tool_path
short_description: The controller's built copy of a program vmesh deploys from its Go module (Jaeger)
description:
  - "Returns the path of each named program as C(vmesh tools build NAME) built it: C($VMESH_TOOLS_DIR), else
    C(~/.cache/vmesh/tools), then C(NAME-VERSION/NAME) at the version vmesh pins."
  - Fails, naming the command that builds it, when it is not built.
options:
  _terms:
    description: Program names (C(jaeger)).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: The Jaeger binary to install
  ansible.builtin.set_fact:
    jaeger_src: "{{ lookup('vmesh.mesh.tool_path', 'jaeger') }}"
  run_once: true
"""

RETURN = r"""
_raw:
  description: One path per term.
  type: list
  elements: path
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

try:
    from vmesh import tools
    from vmesh.errors import MeshError
except ImportError as exc:  # pragma: no cover - install problem, reported when the lookup runs
    tools = None
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if tools is None:
            raise AnsibleLookupError("vmesh.mesh.tool_path: the vmesh package is not installed for this Python (%s); "
                                     "pip install the project" % IMPORT_ERROR)
        try:
            return [str(tools.built(str(term))) for term in terms]
        except MeshError as exc:
            raise AnsibleLookupError("vmesh.mesh.tool_path: %s" % exc) from None
