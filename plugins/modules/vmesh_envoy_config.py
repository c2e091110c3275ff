#!/usr/bin/python
"""Push a compiled Envoy config directory: validate on the host, then swap files atomically."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vmesh_envoy_config
short_description: Install an Envoy config directory atomically, validated first
description:
  - Compares the wanted files with those in O(dest). When any differs, writes the new files to a staging
    directory beside O(dest), runs C(envoy --mode validate) on O(validation) there, and only if Envoy accepts
    it moves each file into O(dest) with an atomic rename, clusters first, then routes, then listeners, so a
    running Envoy that watches O(dest) hot-reloads without a restart. Files in O(dest) that are no longer
    wanted are removed last.
  - When validation fails nothing in O(dest) changes: the last good config stays in force.
options:
  dest:
    description: The config directory Envoy watches.
    type: path
    required: true
  files:
    description: File name to content.
    type: dict
    required: true
  validation:
    description: A static bootstrap equivalent to O(files), for C(envoy --mode validate).
    type: str
    required: true
  envoy:
    description: The Envoy binary used for validation.
    type: path
    required: true
  bootstrap:
    description: The name of the bootstrap file; a change to it needs a restart, which the module reports.
    type: str
    default: envoy.json
  mode:
    description: Mode of the written files.
    type: raw
    default: "0644"
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Push the Envoy config
  vmesh_envoy_config:
    dest: /etc/vmesh/envoy
    files: "{{ preflight_compiled[inventory_hostname].files }}"
    validation: "{{ preflight_compiled[inventory_hostname].validation }}"
    envoy: /opt/vmesh/bin/envoy
  notify: Proxy | restart
"""

RETURN = r"""
changed_files:
  description: Files written (new or different).
  type: list
  returned: always
removed_files:
  description: Files removed because they are no longer part of the config.
  type: list
  returned: always
bootstrap_changed:
  description: Whether the bootstrap changed (Envoy must restart to read it).
  type: bool
  returned: always
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule


class ConfigError(Exception):
    pass


def _read(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _rank(name, bootstrap):
    # Secrets before the clusters and listeners that use them, clusters before the routes that use them, routes
    # before the listeners that use them.
    if name == bootstrap:
        return 0
    for rank, prefix in enumerate(("sds", "cds", "rds", "lds"), start=1):
        if name.startswith(prefix):
            return rank
    return 5


def plan(dest, files, bootstrap):
    current = {}
    if os.path.isdir(dest):
        for name in os.listdir(dest):
            path = os.path.join(dest, name)
            if os.path.isfile(path) and name.endswith(".json"):
                current[name] = _read(path)
    changed = sorted((n for n in files if current.get(n) != files[n]), key=lambda n: (_rank(n, bootstrap), n))
    removed = sorted(n for n in current if n not in files)
    return current, changed, removed


def apply(module, dest, files, changed, removed, validation, envoy, mode):
    parent = os.path.dirname(dest.rstrip("/"))
    staging = tempfile.mkdtemp(prefix=".vmesh-staging-", dir=parent)
    try:
        check = os.path.join(staging, "validate.json")
        with open(check, "w", encoding="utf-8") as fh:
            fh.write(validation)
        rc, out, err = module.run_command([envoy, "--mode", "validate", "-c", check, "-l", "critical",
                                           "--use-dynamic-base-id"], environ_update={"LC_ALL": "C"})
        if rc != 0:
            raise ConfigError("envoy --mode validate refused the new config; the running config is unchanged:\n"
                              + (out + err).strip().replace(check, "<new config>"))
        if not os.path.isdir(dest):
            os.makedirs(dest, mode=0o755)
        for name in changed:
            staged = os.path.join(staging, name)
            with open(staged, "w", encoding="utf-8") as fh:
                fh.write(files[name])
            os.chmod(staged, mode)
            os.rename(staged, os.path.join(dest, name))  # atomic; Envoy reloads on the move
        for name in removed:
            os.unlink(os.path.join(dest, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            files=dict(type="dict", required=True),
            validation=dict(type="str", required=True),
            envoy=dict(type="path", required=True),
            bootstrap=dict(type="str", default="envoy.json"),
            mode=dict(type="raw", default="0644"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    files = {str(k): str(v) for k, v in p["files"].items()}
    for name in files:
        if "/" in name or not name.endswith(".json"):
            module.fail_json(msg=f"file name {name!r} must be a plain *.json name")
    mode = int(str(p["mode"]), 8)
    current, changed, removed = plan(p["dest"], files, p["bootstrap"])
    diff = [{"before_header": os.path.join(p["dest"], n), "after_header": os.path.join(p["dest"], n),
             "before": current.get(n) or "", "after": files.get(n, "")} for n in changed + removed]
    result = dict(changed=bool(changed or removed), changed_files=changed, removed_files=removed,
                  bootstrap_changed=p["bootstrap"] in changed)
    if module._diff:
        result["diff"] = diff
    if result["changed"] and not module.check_mode:
        try:
            apply(module, p["dest"], files, changed, removed, p["validation"], p["envoy"], mode)
        except (ConfigError, OSError) as exc:
            module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
