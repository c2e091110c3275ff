#!/usr/bin/python
"""A vmesh program's files on its host in one call: system user, directories, files, leftovers, systemd units."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_files
short_description: Converge a vmesh program's user, directories, files and systemd units in one call
description:
  - "Converges, in this order and in one module call: a system user with its own group (O(user)); directories
    (O(directories), parents first); files (O(files)); the removal of what an earlier version left (O(sweep),
    O(absent)); then systemd: a daemon-reload when a file under C(/etc/systemd/system) changed, and each unit in
    O(services) enabled, started, or restarted when a file it depends on changed."
  - "Every directory and file belongs to root and root's group. Checks come before changes: a path that is not
    absolute, a directory above it that another user could change, or something other than a directory (or a
    regular file) in its place stops the module before anything is written. Nothing is followed: files are
    written atomically through a new file renamed into place."
  - "A file given with O(files[].src) is read on the controller: up to 1 MiB it is passed in the call; a larger one
    (the Envoy binary) goes by its SHA-256, and is sent only when the host's copy differs. The host hashes the copy
    sent while it puts it in place, and refuses it unless the hash is the one expected."
  - "It replaces the group, user, file, copy, template, find and systemd tasks of the vmesh roles: one call per
    host instead of a task per file (bench/push.py measures site.yml)."
options:
  user:
    description: A system user with a group of the same name and id, no home and no login shell. An existing
      user or group with another id is refused, never changed.
    type: dict
    suboptions:
      name:
        description: Its name.
        type: str
        required: true
      uid:
        description: Its uid, and its group's gid.
        type: int
        required: true
      comment:
        description: Its GECOS field.
        type: str
        default: vmesh
  directories:
    description: Directories, root's; a path alone is a directory with mode C(0755).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The directory.
        type: path
        required: true
      mode:
        description: Its mode, in octal.
        type: str
        default: "0755"
  files:
    description: Files, root's. Each gives O(files[].content) or O(files[].src).
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: The file on the host.
        type: path
        required: true
      content:
        description: Its text (or base64 with O(files[].encoding)).
        type: str
      src:
        description: A file on the controller (a role's C(files/) are looked in first).
        type: str
      sha256:
        description: The SHA-256 of O(files[].src), when known (spares hashing it on the controller for every
          host); a copy with another hash is refused on the host.
        type: str
      mode:
        description: Its mode, in octal.
        type: str
        default: "0644"
  sweep:
    description: Directories whose entries not among O(files) (nor O(directories)) are removed; Python's
      C(__pycache__) stays.
    type: list
    elements: path
    default: []
  absent:
    description: Paths removed (files, links or directories), never followed.
    type: list
    elements: path
    default: []
  daemon_reload:
    description: Run C(systemctl daemon-reload) when a file under C(/etc/systemd/system) changed.
    type: bool
    default: true
  services:
    description: systemd units to enable and start, after the files.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The unit.
        type: str
        required: true
      enabled:
        description: Enable it.
        type: bool
        default: true
      state:
        description: C(started) to start it (and restart it when a file in O(services[].restart_on) changed);
          C(none) to leave it as it is.
        type: str
        choices: [started, none]
        default: started
      restart_on:
        description: Files (among O(files)) whose change restarts the running unit.
        type: list
        elements: path
        default: []
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - "What the action plugin passes to the module on the host is internal: files read on the controller as
    C(content) (with C(encoding)) or as C(sha256) and C(size), the paths of the copies it sent (C(staged)) and the
    paths a first call changed (C(changed_before))."
"""

EXAMPLES = r"""
- name: Install the agent
  vmesh.mesh.host_files:
    directories:
      - {path: /opt/vmesh/bin}
    files:
      - {dest: /opt/vmesh/bin/vmesh-renew, src: vmesh-renew, mode: "0755"}
      - {dest: /etc/systemd/system/vmesh-renew.timer, src: vmesh-renew.timer}
      - {dest: /etc/vmesh/renew.json, content: "{{ config | to_nice_json }}\n"}
    services:
      - {name: vmesh-renew.timer, restart_on: [/etc/systemd/system/vmesh-renew.timer]}
"""

RETURN = r"""
changed_files:
  description: Directories and files made or changed (or, in check mode, to be), and the paths removed.
  type: list
  returned: always
user_changed:
  description: Whether the user or its group was made.
  type: bool
  returned: always
services_changed:
  description: The systemd actions taken, such as C(daemon-reload) or C(start vmesh-renew.timer).
  type: list
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.host_files import argument_spec, converge


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    try:
        result = converge(module)
    except HostError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
