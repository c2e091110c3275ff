#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""Several of the collection's host modules in one module call (a whole sidecar: install, identity, config, redirect)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: converge
short_description: Run several of the collection's host modules in one call (a whole sidecar at once)
description:
  - "Runs O(steps) in order, in one module call on the host: each is the work of one of the collection's host
    modules (M(vmesh.mesh.host_files), M(vmesh.mesh.node_key), M(vmesh.mesh.workload_key),
    M(vmesh.mesh.workload_cert), M(vmesh.mesh.sidecar_config), M(vmesh.mesh.redirect)), given that module's own
    options and checked against that module's own argument spec. A module run costs the host a Python start and
    the import of Ansible's module code (about 0.4 s of CPU on a small VM); the proxy role converges a whole
    sidecar (its files, identity, config and redirect) with one call instead of eight (bench/push.py)."
  - "The first step that fails stops the call: the steps before it stay done, as they would with one task each.
    The error names the step."
  - "Two steps need the controller before the steps after them can run, and end the call early, with RV(pending)
    naming them: a M(vmesh.mesh.host_files) step that needs a large file sent (the action plugin sends it and calls
    again, as M(vmesh.mesh.host_files) does), and a M(vmesh.mesh.workload_key) step that made a CSR (outside check
    mode): the play has it signed (M(vmesh.mesh.ca_sign)) and calls again with O(chain)."
options:
  steps:
    description: The steps, in order.
    type: list
    elements: dict
    required: true
    suboptions:
      id:
        description: The step's name, unique in O(steps); its result is RV(step_results.<id>).
        type: str
        required: true
      module:
        description: The module whose work the step does (its short name).
        type: str
        required: true
        choices: [host_files, node_key, workload_key, workload_cert, sidecar_config, redirect, program]
      args:
        description:
          - The module's options, as its own task would give them (for C(host_files) and C(sidecar_config), the
            options of their action plugins).
          - 'A C(program) step runs one of vmesh''s programs on the host: C(argv) (a list), C(read_only) (run in
            check mode too, when the program is there) and C(changed_prefix) (the step changed something when the
            program''s output starts with it). It fails when the program exits with another status than 0.'
        type: dict
        default: {}
  secrets:
    description: Options of the steps that are not to be logged (the Gateway certificates of a
      C(sidecar_config) step), by O(steps[].id); the action plugin moves them here from O(steps[].args).
    type: dict
    default: {}
  chain:
    description:
      - The certificate chain signed for the CSR that a M(vmesh.mesh.workload_key) step made in an earlier call
        (RV(csr)). The M(vmesh.mesh.workload_key) steps are then skipped, and each M(vmesh.mesh.workload_cert) step
        installs this chain.
    type: str
    default: ""
  previous:
    description: The result of an earlier call of the same task (one that ended with RV(pending)); the result of
      this call is merged with it, so that what the earlier call changed is reported. Used on the controller only.
    type: dict
attributes:
  check_mode:
    support: full
    details: Each step as its module does it in check mode.
  diff_mode:
    support: full
    details: The steps' diffs, in order.
  platform:
    platforms: posix
seealso:
  - module: vmesh.mesh.host_files
  - module: vmesh.mesh.sidecar_config
"""

EXAMPLES = r"""
- name: The node key and the renewal agent, in one call
  vmesh.mesh.converge:
    steps:
      - id: node_key
        module: node_key
        args: {path: /etc/vmesh/node/node-key.pem}
      - id: agent
        module: host_files
        args:
          files:
            - {dest: /etc/vmesh/renew.json, content: "{{ renew_config | to_nice_json }}\n"}
  register: converged
"""

RETURN = r"""
step_results:
  description: Each step's result by its O(steps[].id), as its module returns it (without its diff); steps not
    run are missing.
  type: dict
  returned: always
pending:
  description: The O(steps[].id) of the step that ended the call for the controller's part; empty when every step
    ran.
  type: str
  returned: always
csr:
  description: The CSR to sign, when RV(pending) is a M(vmesh.mesh.workload_key) step; empty otherwise.
  type: str
  returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.vmesh.mesh.plugins.module_utils import host_files, redirect, sidecar, workload
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError


def program_spec():
    return dict(argv=dict(type="list", elements="str", required=True),
                read_only=dict(type="bool", default=False),
                changed_prefix=dict(type="str", default=""))


def program(module):
    """A vmesh program run on the host (a step of its own: the modules do not run programs of their choice)."""
    p = module.params
    if module.check_mode and not (p["read_only"] and os.path.exists(p["argv"][0])):
        # it changes something, or an earlier step would install it: not run, as a command task in check mode
        return dict(changed=False, skipped=True, rc=None, stdout="", stderr="")
    rc, out, err = host_files.runner_of(module)(p["argv"])
    if rc != 0:
        raise HostError("%s exited with %d: %s" % (" ".join(p["argv"]), rc, (err or out).strip()))
    return dict(changed=bool(p["changed_prefix"]) and out.startswith(p["changed_prefix"]), rc=rc, stdout=out,
                stderr=err)


#: Each step's module: (its argument spec, its work on a module-like object).
MODULES = {
    "host_files": (host_files.argument_spec, host_files.converge),
    "node_key": (workload.node_key_spec, workload.node_key),
    "workload_key": (workload.workload_key_spec, workload.workload_key),
    "workload_cert": (workload.workload_cert_spec, workload.workload_cert),
    "sidecar_config": (sidecar.argument_spec, sidecar.converge),
    "redirect": (redirect.argument_spec, redirect.ensure),
    "program": (program_spec, program),
}


class StepError(Exception):
    """A step's arguments are wrong, or its module failed: the message names the step."""


class Step:
    """The AnsibleModule as one step's module sees it: the step's own validated params, the rest shared."""

    def __init__(self, module, params):
        self.params = params
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)


def checked_steps(module):
    """[(step, its validated params)], every step checked before the first runs (bad arguments change nothing)."""
    steps, secrets = module.params["steps"], module.params["secrets"]
    ids = [step["id"] for step in steps]
    if len(set(ids)) != len(ids):
        raise StepError("steps: each id must be unique, got %s" % ", ".join(ids))
    checked = []
    for step in steps:
        if module.params["chain"] and step["module"] == "workload_key":
            continue  # its CSR was signed: the chain goes to the workload_cert step
        spec, _work = MODULES[step["module"]]
        args = dict(step["args"] or {}, **(secrets.get(step["id"]) or {}))
        if module.params["chain"] and step["module"] == "workload_cert":
            args["chain"] = module.params["chain"]
        validation = ArgumentSpecValidator(spec()).validate(args)
        # values the step's spec marks no_log (gateway keys) stay out of what is returned
        module.no_log_values.update(validation._no_log_values)
        if validation.error_messages:
            raise StepError("step %s (%s): %s" % (step["id"], step["module"], "; ".join(validation.error_messages)))
        checked.append((step, validation.validated_parameters))
    return checked


def converge(module):
    results, diffs, pending, csr = {}, [], "", ""
    for step, params in checked_steps(module):
        try:
            result = MODULES[step["module"]][1](Step(module, params))
        except HostError as exc:
            raise StepError("step %s (%s): %s" % (step["id"], step["module"], exc)) from None
        diff = result.pop("diff", None)
        if module._diff and diff:
            diffs.extend(diff if isinstance(diff, list) else [diff])
        results[step["id"]] = result
        if step["module"] == "host_files" and result.get("needed"):
            pending = step["id"]  # the controller sends the large files and calls again
            break
        if step["module"] == "workload_key" and result.get("csr"):
            pending, csr = step["id"], result["csr"]  # signed where the CA lives, then a call with the chain
            break
    outcome = dict(changed=any(r.get("changed") for r in results.values()), step_results=results, pending=pending,
                   csr=csr)
    if module._diff:
        outcome["diff"] = diffs
    return outcome


def main():
    module = AnsibleModule(
        argument_spec=dict(
            steps=dict(type="list", elements="dict", required=True,
                       options=dict(id=dict(type="str", required=True),
                                    module=dict(type="str", required=True, choices=sorted(MODULES)),
                                    args=dict(type="dict", default={}))),
            secrets=dict(type="dict", default={}, no_log=True),
            chain=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    try:
        result = converge(module)
    except StepError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
