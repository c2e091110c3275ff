#!/usr/bin/python
"""Documentation of the host_part action (plugins/action/host_part.py): it reads on the controller, and looks on
the host only for Gateway certificates expected there."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_part
short_description: One host's part of a vmesh build, and a check that its push will find what it needs
description:
  - Reads, from the build directory M(vmesh.mesh.build) wrote or checked, this host's entry (its files' digests,
    SPIFFE id, /etc/hosts lines, edge ports, gateway credentials) and returns it; no other host's part is read.
  - "Checks, before anything changes, what a push of it needs beside the build: the host must be in group
    C(vmesh); each file O(credentials) names for the host's Gateways (C(credentialName)) must be on the controller
    (all the missing ones are named at once) and be PEM text of at most 1 MiB; a C(credentialName) not in
    O(credentials) needs C(tls.crt) and C(tls.key) in its folder of O(credentials_dir) on the host, looked for
    with M(ansible.builtin.stat) (as root, with C(become): the folder is for root and the proxy's group only);
    only then is the host contacted."
  - On a host of the rate-limit service, its limits (O(ratelimit_domains)) are checked too, field by field, then by
    the service's own check (O(ratelimit_checker)), as the rate-limit role checks them before writing them.
  - Any of these failing fails the task, naming the files; run it with C(any_errors_fatal) so nothing is pushed.
  - Changes nothing, here or on the host.
version_added: 0.1.0
options:
  build:
    description: What M(vmesh.mesh.build) returned (C(dir) and C(build)); an entry of another build is an error.
    type: dict
    required: true
  credentials:
    description: "Gateway certificates given on the controller (C(vmesh_credentials)): C({credentialName: {cert,
      key, ca}}), each a file on the controller."
    type: dict
    default: {}
  credentials_dir:
    description: Where a C(credentialName) not given in O(credentials) has its folder on the host.
    type: path
    default: /etc/vmesh/credentials
  ratelimit_domains:
    description:
      - The global rate limits the host serves (C(vmesh_ratelimit_domains) of a host of group
        C(vmesh_ratelimit)), in the service's own format; none are checked when it is not given.
    type: list
    elements: dict
  ratelimit_checker:
    description: The rate-limit service's own check on the controller (C(ratelimit-check)); empty, the fields only.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author: vmesh
"""

EXAMPLES = r"""
- name: This host's part of the build, and the gateway certificates it needs
  vmesh.mesh.host_part:
    build: "{{ preflight_built }}"
    credentials: "{{ vmesh_credentials | default({}) }}"
  become: true
  register: preflight_host
"""

RETURN = r"""
host:
  description: The inventory host.
  type: str
  returned: always
build:
  description: The build's id.
  type: str
  returned: always
files:
  description: Each file of the host's Envoy config, by name, with its SHA-256.
  type: dict
  returned: always
hosts_entries:
  description: The host's lines for /etc/hosts (the service names it calls).
  type: list
  elements: str
  returned: always
edge_ports:
  description: The ports the host's Gateways serve from outside the mesh.
  type: list
  elements: int
  returned: always
credentials:
  description: The C(credentialName)s of the host's Gateways.
  type: list
  elements: str
  returned: always
identity:
  description: The host's SPIFFE id.
  type: str
  returned: always
"""
