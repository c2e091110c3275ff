# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""A workload's identity on its VM, one function per step: the node key (``node_key``), the decision to renew with
a new key and CSR (``workload_key``) and the install of the signed chain and trust bundle (``workload_cert``).

Each takes an AnsibleModule (or vmesh.mesh.converge's step in its place: ``params``, ``check_mode``, ``_diff``,
``warn``, ``run_command``, ``get_bin_path``) and returns the module's result; the modules of the same names and
vmesh.mesh.converge call them. The cryptography is certs.py's (the ``openssl`` command line).
"""

from __future__ import annotations

import hashlib
import os
import stat

from ansible_collections.vmesh.mesh.plugins.module_utils.certs import KEY_MODE, CertError, Openssl, ignored_owner, install
from ansible_collections.vmesh.mesh.plugins.module_utils.certs import installed, parse_identity, pem_blocks, plan_install
from ansible_collections.vmesh.mesh.plugins.module_utils.certs import prepare_pending, renewal_reasons, resolve_group
from ansible_collections.vmesh.mesh.plugins.module_utils.certs import resolve_owner, state
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.host import check_parents, ensure_dir, fix_attributes
from ansible_collections.vmesh.mesh.plugins.module_utils.host import lstat_or_none, owner, write_file


def node_key_spec():
    return dict(
        path=dict(type="path", default="/etc/vmesh/node/node-key.pem"),
        owner=dict(type="str", default="root"),
        group=dict(type="str", default="root"),
        force=dict(type="bool", default=False),
    )


def openssl_for(module):
    def run(argv, data=None):
        # rc is checked by certs.py, which raises CertError with openssl's message.
        return module.run_command(argv, data=data, binary_data=True, environ_update={"LC_ALL": "C"},
                                  check_rc=False)
    return Openssl(run=run, binary=module.get_bin_path("openssl", required=True))


def fingerprint(public_key):
    ders = pem_blocks(public_key, "PUBLIC KEY")
    return hashlib.sha256(ders[0]).hexdigest() if ders else ""


def _attributes(st):
    return {"mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def node_key(module):
    """Decide (make, keep, or fix mode and owner), then act unless in check mode. Raises CertError."""
    p = module.params
    path = p["path"]
    openssl = openssl_for(module)
    try:
        uid, gid = resolve_owner(p["owner"], p["group"])
    except CertError:
        if not module.check_mode:
            raise
        uid = gid = None  # the user is made by a task that check mode skipped
    check_parents(path)  # nothing above the key that another user could swap
    st = lstat_or_none(path)
    if st is not None and not stat.S_ISREG(st.st_mode) and not p["force"]:
        raise CertError("%s is %s, not a regular file; refused (a root process does not follow it): remove it, or "
                        "set force=true to replace it with a new key" % (path, "a symbolic link" if stat.S_ISLNK(
                            st.st_mode) else "not a regular file"))
    public = ""
    if st is not None and not p["force"]:
        try:
            public = openssl.key_public_key(path, path)  # a regular file in directories only root can write
        except HostError as exc:
            raise CertError("%s is not a private key openssl can read (%s); remove it, or set force=true to make "
                            "a new one" % (path, exc)) from None
    before = dict(_attributes(st), fingerprint=fingerprint(public)) if st is not None else None

    if st is None:
        reason = "missing"
    elif p["force"]:
        reason = "forced"
    elif uid is not None and before != dict(before, mode="%04o" % KEY_MODE, uid=uid, gid=gid):
        reason = "attributes"
    else:
        reason = ""

    if reason and not module.check_mode:
        directory = os.path.dirname(path) or "."
        if lstat_or_none(directory) is None:
            ensure_dir(directory, 0o700, owner(), os.getegid())
        if reason in ("missing", "forced"):
            write_file(path, openssl.new_key(path), KEY_MODE, uid, gid)  # rename(2) replaces a link, unfollowed
            public = openssl.key_public_key(path, path)
        else:
            fix_attributes(path, KEY_MODE, uid, gid)
    result = dict(changed=bool(reason), reason=reason, path=path, public_key=public, fingerprint=fingerprint(public))
    if module._diff:
        after = {"mode": "%04o" % KEY_MODE, "uid": uid, "gid": gid,
                 "fingerprint": fingerprint(public) or ("(new)" if reason in ("missing", "forced") else "")}
        result["diff"] = {"before_header": path, "before": before or {}, "after_header": path, "after": after}
    return result


def workload_key_spec():
    return dict(
        path=dict(type="path", required=True),
        identity=dict(type="str", required=True),
        owner=dict(type="str"),
        group=dict(type="str", default="vmesh-proxy"),
        issuer=dict(type="str"),
        renew_ratio=dict(type="float", default=0.5),
        force=dict(type="bool", default=False),
    )


def workload_key(module):
    """Decide, then make the pending key and CSR unless in check mode. Raises CertError."""
    p = module.params
    parse_identity(p["identity"])
    if not 0 < p["renew_ratio"] <= 1:
        raise CertError("renew_ratio must be in (0, 1], got %s" % p["renew_ratio"])
    if ignored_owner(p["owner"]):
        module.warn(ignored_owner(p["owner"]))
    openssl = openssl_for(module)
    current = state(p["path"], openssl)
    if current["error"]:
        module.warn(current["error"])
    issuer = openssl.info(p["issuer"], "issuer") if (p["issuer"] or "").strip() else None
    reasons = renewal_reasons(current, p["identity"], issuer, p["renew_ratio"], p["force"])
    result = dict(changed=bool(reasons), needed=bool(reasons), reason=reasons[0] if reasons else "",
                  reasons=reasons, csr="", serial=current["serial"], not_after=current["not_after"],
                  identity=current["identity"])
    if module._diff:
        result["diff"] = {"before": {"installed_identity": current["identity"], "pending_csr_for": ""},
                          "after": {"installed_identity": current["identity"],
                                    "pending_csr_for": p["identity"] if reasons else ""}}
    if reasons and not module.check_mode:
        result["csr"] = prepare_pending(p["path"], p["identity"], resolve_group(p["group"]), openssl)
    return result


def workload_cert_spec():
    return dict(
        path=dict(type="path", required=True),
        chain=dict(type="str"),
        trust_bundle=dict(type="str", required=True),
        owner=dict(type="str"),
        group=dict(type="str", default="vmesh-proxy"),
    )


def workload_cert(module):
    """Decide (plan_install), then install unless in check mode. Raises CertError."""
    p = module.params
    if ignored_owner(p["owner"]):
        module.warn(ignored_owner(p["owner"]))
    try:
        gid = resolve_group(p["group"])
    except CertError:
        if not module.check_mode:
            raise
        gid = None  # the group is made by a task that check mode skipped
    plan = plan_install(p["path"], p["chain"], p["trust_bundle"], openssl_for(module), module.check_mode, gid)
    for warning in plan.warnings:
        module.warn(warning)
    version = installed(p["path"]).version or ""
    if plan.changed and not module.check_mode:
        version = install(p["path"], plan, gid)
    result = dict(changed=plan.changed, changed_files=plan.changed_files, version=version, removed=plan.cleanup,
                  serial=plan.after["serial"], not_after=plan.after["not_after"], identity=plan.after["identity"])
    if module._diff:
        result["diff"] = {"before_header": os.path.join(p["path"], "..data"), "before": plan.before,
                          "after_header": os.path.join(p["path"], "..data"), "after": plan.after}
    return result
