#!/usr/bin/python
"""Documentation of the build action (plugins/action/build.py): it runs on the controller only."""

from __future__ import annotations

DOCUMENTATION = r"""
module: build
short_description: Compile the mesh into a build directory on the controller, or check a given build
description:
  - With O(sources), compiles the Istio documents against the mesh hosts' C(vmesh_*) variables (the inventory is
    the service registry) and writes every host's Envoy files to O(dest) as the compiler's build directory - the
    same one C(vmesh compile --out) writes, content-addressed, with a manifest - replacing the build there. When
    O(dest) already holds this very build nothing is written and the task reports no change.
  - Without O(sources), O(dest) is a build made before (by C(vmesh compile --out), or by a run that saw the whole
    inventory) and is only checked; a slice of the fleet (C(--limit), AWX job slicing) pushes from it without
    seeing the other hosts' variables.
  - Either way every host of the play in group C(vmesh) must be in the build. Each host then reads its own part
    with the lookup M(vmesh.mesh.compiled); no host's variables hold another host's config.
  - Any mistake in the documents or the inventory fails the task before any host changes.
  - Runs on the controller, once (C(run_once)). The build directory is the compiler's output, not a host's state,
    so it is written in check mode too.
version_added: 0.1.0
options:
  dest:
    description: The build directory. A directory that is not empty and holds no build is never replaced.
    type: path
    required: true
  sources:
    description: The Istio documents, a list of C([path, text]) pairs (read on the controller by the role).
    type: list
    elements: list
  hosts:
    description: The mesh's hosts (C(groups['vmesh'])); needed with O(sources).
    type: list
    elements: str
  rollouts:
    description:
      - "The saved state of the canary rollouts, C({service: state}). A rollout declared in C(vmesh_rollouts) puts
        in force the stage its state is at, or all traffic to its stable version."
    type: dict
    default: {}
  drained:
    description:
      - The hosts taken out of service (playbooks/drain.yml): they are in no client's endpoints.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: partial
    details: The build directory is written in check mode too (the compiler's output, not a host's state).
  diff_mode:
    support: none
author: vmesh
"""

EXAMPLES = r"""
- name: Compile the mesh for every host
  vmesh.mesh.build:
    dest: "{{ inventory_dir }}/.vmesh/build"
    sources: "{{ sources }}"
    hosts: "{{ groups['vmesh'] }}"
  run_once: true
  register: build

- name: Push from a build made elsewhere (vmesh compile --out /srv/builds/42)
  vmesh.mesh.build:
    dest: /srv/builds/42
  run_once: true
  register: build
"""

RETURN = r"""
dir:
  description: The build directory, absolute.
  type: str
  returned: always
build:
  description: The build's id (a SHA-256 over every host's files); each host's part names it.
  type: str
  returned: always
hosts:
  description: How many hosts the build holds.
  type: int
  returned: always
warnings_found:
  description: Documents that route to nothing yet (the compiler's warnings).
  type: list
  elements: str
  returned: always
"""
