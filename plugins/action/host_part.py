"""The controller side of vmesh.mesh.host_part (documented in plugins/modules/host_part.py): one host's part of a
build, and the checks that its push will find what it needs, made in one task before anything changes."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.vmesh.mesh.plugins.plugin_utils.host_args import (MeshError, artifact, find_credentials,
                                                                            ratelimit, read_found, require_vmesh)

#: The files a credentialName not given in vmesh_credentials needs on the host, in its folder of credentials_dir.
HOST_CREDENTIAL_FILES = ("tls.crt", "tls.key")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("build", "credentials", "credentials_dir", "ratelimit_domains", "ratelimit_checker"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        require_vmesh("vmesh.mesh.host_part")
        host = task_vars["inventory_hostname"]
        if host not in task_vars.get("groups", {}).get("vmesh", []):
            raise AnsibleActionFail(f"{host} is not in group 'vmesh'; the mesh playbooks run on that group")
        args = self._task.args
        build, given = args.get("build"), args.get("credentials") or {}
        if not isinstance(build, dict) or not isinstance(build.get("dir"), str) or not build.get("build"):
            raise AnsibleActionFail("vmesh.mesh.host_part: build must be what vmesh.mesh.build returned ({dir, build})")
        if not isinstance(given, dict):
            raise AnsibleActionFail("vmesh.mesh.host_part: credentials (vmesh_credentials) must be a mapping of "
                                    "credentialName to {cert, key, ca} paths")
        try:
            entry = artifact.host_entry(build["dir"], host, str(build["build"]))
        except MeshError as exc:
            raise AnsibleActionFail(f"vmesh.mesh.host_part: {exc}") from exc
        self._check_given(sorted(c for c in entry["credentials"] if c in given), given)
        if args.get("ratelimit_domains") is not None:
            self._check_limits(args["ratelimit_domains"], args.get("ratelimit_checker") or "")
        expected = [c for c in entry["credentials"] if c not in given]
        if expected:
            folder = args.get("credentials_dir") or "/etc/vmesh/credentials"
            self._check_on_host([f"{folder}/{c}/{f}" for c in expected for f in HOST_CREDENTIAL_FILES], task_vars)
        result.update(entry, changed=False)
        return result

    @staticmethod
    def _check_limits(domains, checker):
        """The global rate limits a host of vmesh_ratelimit serves, field by field, then by the service's own
        check (``checker``), as the rate-limit role checks them before writing them."""
        try:
            files = ratelimit.files(domains, "vmesh_ratelimit_domains")
            if checker:
                ratelimit.check(files, checker)
        except MeshError as exc:
            raise AnsibleActionFail(f"vmesh.mesh.host_part: {exc}") from exc

    def _check_given(self, names, given):
        """Every file vmesh_credentials names for this host's gateways is on the controller (all the missing ones
        named at once), and each is what the push will accept (plugin_utils/host_args.py, as the push reads them)."""
        found, missing = find_credentials(self, given, names, who="vmesh.mesh.host_part")
        if missing:
            raise AnsibleActionFail("vmesh_credentials names files that are not on the controller: "
                                    + ", ".join(missing))
        for name in names:
            read_found(name, found[name])  # readable, not too large, PEM text

    def _check_on_host(self, paths, task_vars):
        """Every one of ``paths`` exists on the host (looked at as root: the folder is not for every user)."""
        absent = []
        for path in paths:
            found = self._execute_module(module_name="ansible.builtin.stat", task_vars=task_vars, module_args={
                "path": path, "get_checksum": False, "get_mime": False, "get_attributes": False})
            if found.get("failed"):
                raise AnsibleActionFail(f"looking for {path} on the host as root: {found.get('msg', found)} (the "
                                        "Ansible user needs become, e.g. sudo, on this host)")
            if not found.get("stat", {}).get("exists"):
                absent.append(path)
        if absent:
            raise AnsibleActionFail("a Gateway's credentialName needs these files on the host (or give them in "
                                    "vmesh_credentials): " + ", ".join(absent))

