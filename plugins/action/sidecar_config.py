"""The controller side of vmesh.mesh.sidecar_config (documented in plugins/modules/sidecar_config.py): the host's
part of the build and the Gateway certificates given on the controller, read here and passed to the module."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase

try:
    from vmesh import artifact
    from vmesh.errors import MeshError
except ImportError as exc:  # pragma: no cover - install problem, reported when the action runs
    artifact = None
    IMPORT_ERROR = exc
else:
    IMPORT_ERROR = None

#: Options passed to the module as they are.
PASSED = ("dest", "envoy", "bootstrap", "mode", "reload_timeout", "hosts_file", "credentials_dir", "credentials_group",
          "service")
#: The certificate files a credential may name (vmesh_credentials.<name>.<part>); at most 1 MiB each.
PARTS = ("cert", "key", "ca")
MAX_CREDENTIAL_BYTES = 1 << 20


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(PASSED + ("build", "host", "credentials"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(f"vmesh.mesh.sidecar_config: the vmesh package is not installed for this "
                                    f"Python ({IMPORT_ERROR}); pip install the project")
        args = self._task.args
        build = args.get("build")
        if not isinstance(build, dict) or not isinstance(build.get("dir"), str) or not build.get("build"):
            raise AnsibleActionFail("vmesh.mesh.sidecar_config: build must be what vmesh.mesh.build returned "
                                    "({dir, build})")
        name = str(args.get("host") or task_vars["inventory_hostname"])
        try:
            entry = artifact.host_entry(build["dir"], name, str(build["build"]))
            files = artifact.entry_files(build["dir"], name, entry)
        except MeshError as exc:
            raise AnsibleActionFail(f"vmesh.mesh.sidecar_config: {exc}") from exc
        given = args.get("credentials") or {}
        if not isinstance(given, dict):
            raise AnsibleActionFail("vmesh.mesh.sidecar_config: credentials (vmesh_credentials) must be a mapping "
                                    "of credentialName to {cert, key, ca} paths")
        texts = {cred: self._read_credential(cred, given[cred]) for cred in entry["credentials"] if cred in given}
        module_args = {k: args[k] for k in PASSED if k in args}
        module_args.update(files=files, hosts_entries=entry["hosts_entries"], credential_texts=texts,
                           credentials_expected=[c for c in entry["credentials"] if c not in given])
        result.update(self._execute_module(module_name="vmesh.mesh.sidecar_config", module_args=module_args,
                                           task_vars=task_vars))
        return result

    def _read_credential(self, name, paths):
        """{part: text} of the files vmesh_credentials.<name> names on the controller; a missing one is an error
        that names it."""
        if not isinstance(paths, dict) or not paths or set(paths) - set(PARTS):
            raise AnsibleActionFail(f"vmesh.mesh.sidecar_config: vmesh_credentials.{name}: expected a mapping of "
                                    f"{', '.join(PARTS)} to files on the controller")
        texts = {}
        for part, path in paths.items():
            try:
                found = self._find_needle("files", str(path))
            except AnsibleError:
                raise AnsibleActionFail(f"vmesh_credentials names a file that is not on the controller: "
                                        f"{name}.{part}: {path}") from None
            try:
                with open(found, "rb") as handle:
                    data = handle.read(MAX_CREDENTIAL_BYTES + 1)
            except OSError as exc:
                raise AnsibleActionFail(f"vmesh_credentials.{name}.{part}: {found}: {exc.strerror}") from None
            if len(data) > MAX_CREDENTIAL_BYTES:
                raise AnsibleActionFail(f"vmesh_credentials.{name}.{part}: {found} is larger than "
                                        f"{MAX_CREDENTIAL_BYTES} bytes; refused")
            try:
                texts[part] = data.decode("ascii")
            except UnicodeDecodeError:
                raise AnsibleActionFail(f"vmesh_credentials.{name}.{part}: {found} is not PEM text") from None
        return texts
