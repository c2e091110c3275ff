"""Keys never reach the wrong user: the VM-side modules run as root next to files the proxy's user reads, and a
compromised Envoy (that user) must not be able to make root copy the node key, or any root-only file, into a file
it can read -- by planting links in pending/ or in a version directory, or a link in place of pending/ itself.

Each test plants the links on a layout an earlier version left (pending/ and the files owned by the proxy's
user), runs the modules as root through ansible-playbook, then reads, AS THE LESSER USER, every file it can reach
below the test's folder, looking for the secrets. Needs root (the modules' real situation): skipped otherwise.
The lesser user is ``nobody``:``nogroup`` (it plays the proxy's user, vmesh-proxy, uid 1337 on the VMs).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.pki import IDENTITY, ca_task, flow, ok, openssl, play

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root's modules against a less-privileged user need root")

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
LESSER = "nobody"
LESSER_GROUP = "nogroup"

#: Run as the lesser user: read every file reachable below argv[1] (through links, as an attacker would, without
#: looping) and print those holding one of the needles.
SCAN = r"""
import os, sys
base, needles = sys.argv[1], [n.encode() for n in sys.argv[2:]]
seen, found, todo = set(), [], [base]
while todo:
    path = todo.pop()
    try:
        st = os.stat(path)
    except OSError:
        continue
    if (st.st_dev, st.st_ino) in seen:
        continue
    seen.add((st.st_dev, st.st_ino))
    if os.path.isdir(path):
        try:
            todo.extend(os.path.join(path, name) for name in os.listdir(path))
        except OSError:
            pass
        continue
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 20)
    except OSError:
        continue
    found.extend(path for needle in needles if needle in data)
print("\n".join(sorted(set(found))))
"""


def lesser_ids() -> tuple[int, int]:
    try:
        return pwd.getpwnam(LESSER).pw_uid, grp.getgrnam(LESSER_GROUP).gr_gid
    except KeyError:
        pytest.skip(f"no user {LESSER} or group {LESSER_GROUP} on this host")


def as_lesser(*argv: str) -> subprocess.CompletedProcess:
    uid, gid = lesser_ids()
    return subprocess.run([PYTHON, *argv], user=uid, group=gid, extra_groups=[], capture_output=True, text=True,
                          timeout=60, cwd="/")


@dataclass
class World:
    """A folder the lesser user may traverse (as it may /etc), holding root-only secrets and the certificates."""

    base: Path
    secret_dir: Path  # 0700 root, like /etc/vmesh/node
    node_key: Path  # secret_dir/key.pem, 0600 root: the never-expiring node key
    loose_secret: Path  # 0600 root in a folder the lesser user may read: readable only if root chmods/chowns it
    shadow: Path  # 0600 root, /etc/shadow-like
    needles: list

    def snapshot(self) -> dict:
        """Owner, mode and content of every secret: what a followed chown, chmod or write would change."""
        out = {}
        for path in (self.secret_dir, self.node_key, self.loose_secret, self.shadow):
            st = os.lstat(path)
            out[path.name] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode),
                              None if path.is_dir() else path.read_bytes())
        return out

    def leaks(self) -> list[str]:
        scan = as_lesser("-c", SCAN, str(self.base), *self.needles)
        assert scan.returncode == 0, scan.stderr
        return scan.stdout.split()


@pytest.fixture
def world():
    base = Path(tempfile.mkdtemp(prefix="vmesh-links-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        secret_dir = base / "node"
        secret_dir.mkdir(mode=0o700)
        node_key = secret_dir / "key.pem"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(node_key))
        os.chmod(node_key, 0o600)
        loose = base / "loose-secret.pem"
        shutil.copyfile(node_key, loose)
        os.chmod(loose, 0o600)
        shadow = base / "shadow"
        hashed = "$6$vmesh$" + os.urandom(16).hex()
        shadow.write_text(f"root:{hashed}:19000:0:99999:7:::\n")
        os.chmod(shadow, 0o600)
        # the private scalar's base64 lines (the last line of an EC key is its public half)
        key_lines = [line for line in node_key.read_text().splitlines()[1:-2] if len(line) > 20]
        yield World(base=base, secret_dir=secret_dir, node_key=node_key, loose_secret=loose, shadow=shadow,
                    needles=key_lines + [hashed])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def proxy_flow(world: World, *, force=False, check=False, tmp: Path) -> list[dict]:
    """The identity role's three steps as root, the files' group the lesser user's. ``owner`` is given as the
    role gave it before (the files were the proxy's then); it is ignored now, with a warning."""
    tasks = flow(world.base / "ca", world.base / "certs", force=force)
    for task in tasks:
        for name in ("vmesh.mesh.workload_key", "vmesh.mesh.workload_cert"):
            if name in task:
                task[name].update(owner=LESSER, group=LESSER_GROUP)
    return play(tmp, tasks, check=check)


def make_legacy(certs: Path) -> None:
    """What the earlier version left on a VM: version files and pending/ owned by the proxy's user."""
    uid, gid = lesser_ids()
    version = certs / os.readlink(certs / "..data")
    for name in ("cert-chain.pem", "key.pem", "root-cert.pem"):
        os.chown(version / name, uid, gid)
    os.chmod(version / "key.pem", 0o600)
    (certs / "pending").mkdir(mode=0o700)
    os.chown(certs / "pending", uid, gid)


def proxy_reads(certs: Path) -> dict[str, str]:
    """What the proxy's user reads through the links, as Envoy's SDS does."""
    code = ("import json, sys; print(json.dumps({n: open(sys.argv[1] + '/' + n).read() for n in "
            "('cert-chain.pem', 'key.pem', 'root-cert.pem')}))")
    read = as_lesser("-c", code, str(certs))
    assert read.returncode == 0, read.stderr
    return json.loads(read.stdout)


def assert_root_layout(certs: Path) -> None:
    """Every directory and file root's; the proxy's group reads the version; pending/ gone."""
    _, gid = lesser_ids()
    version = certs / os.readlink(certs / "..data")
    assert not (certs / "pending").exists()
    for path, mode in ((certs, 0o750), (version, 0o750), (version / "cert-chain.pem", 0o644),
                       (version / "key.pem", 0o640), (version / "root-cert.pem", 0o644)):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, mode), path


def test_a_link_planted_in_pending_never_hands_the_node_key_to_the_proxy(world, tmp_path):
    certs = world.base / "certs"
    [ok(r) for r in proxy_flow(world, tmp=tmp_path)]
    make_legacy(certs)
    before = world.snapshot()
    # the compromised proxy, owner of pending/, points pending/key.pem at the node key
    planted = as_lesser("-c", "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(world.node_key),
                        str(certs / "pending" / "key.pem"))
    assert planted.returncode == 0, planted.stderr

    renewed = [ok(r) for r in proxy_flow(world, force=True, tmp=tmp_path)]
    assert renewed[1]["changed"] is True and renewed[3]["changed"] is True
    assert world.snapshot() == before  # nothing chowned, chmodded or written through the link
    assert world.leaks() == []
    # the proxy still reads its own key and certificate through the ..data links; the key is a new one
    files = proxy_reads(certs)
    assert files["key.pem"] != world.node_key.read_text()
    assert openssl("pkey", "-pubout", data=files["key.pem"]) == openssl("x509", "-noout", "-pubkey",
                                                                          data=files["cert-chain.pem"])
    assert f"URI:{IDENTITY}" in openssl("x509", "-noout", "-ext", "subjectAltName", data=files["cert-chain.pem"])
    assert_root_layout(certs)


def test_pending_as_a_link_to_a_root_only_folder_is_removed_not_followed(world, tmp_path):
    certs = world.base / "certs"
    [ok(r) for r in proxy_flow(world, tmp=tmp_path)]
    (certs / "pending").symlink_to(world.secret_dir)  # pending -> the node key's folder (it holds key.pem)
    before = world.snapshot()

    renewed = [ok(r) for r in proxy_flow(world, force=True, tmp=tmp_path)]
    assert renewed[3]["changed"] is True
    assert world.snapshot() == before and world.leaks() == []
    assert proxy_reads(certs)["key.pem"] != world.node_key.read_text()
    assert_root_layout(certs)


@pytest.mark.parametrize("owner", ["proxy", "root"])
def test_a_link_in_a_version_folder_is_never_read(world, tmp_path, owner):
    """key.pem of the version in force -> a shadow-like file: by the proxy in a version it owns (an earlier
    layout), or found in one of root's. A new trust bundle alone must then not copy it anywhere; the module says
    why, and the next renewal replaces the version."""
    certs = world.base / "certs"
    first = [ok(r) for r in proxy_flow(world, tmp=tmp_path)]
    version = certs / os.readlink(certs / "..data")
    if owner == "proxy":
        uid, gid = lesser_ids()
        os.chown(version, uid, gid)
        planted = as_lesser("-c", "import os, sys; os.unlink(sys.argv[2]); os.symlink(sys.argv[1], sys.argv[2])",
                            str(world.shadow), str(version / "key.pem"))
        assert planted.returncode == 0, planted.stderr
    else:
        (version / "key.pem").unlink()
        (version / "key.pem").symlink_to(world.loose_secret)
    before = world.snapshot()

    # root rotation step 1 (identity_trust_only): only the bundle changes, the certificate and key stay
    other_root = world.base / "other-root.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            str(world.base / "other-root.key"), "-subj", "/CN=other", "-days", "2", "-out", str(other_root))
    bundle = first[0]["trust_bundle"] + other_root.read_text()
    (trust_only,) = play(tmp_path, [{"vmesh.mesh.workload_cert": {"path": str(certs), "trust_bundle": bundle,
                                                             "owner": LESSER, "group": LESSER_GROUP}}])
    assert world.snapshot() == before and world.leaks() == []
    assert trust_only.get("failed") is True
    assert "no certificate is installed" in trust_only["msg"]
    reason = "another user can write it" if owner == "proxy" else "is a symbolic link, not a regular file"
    assert reason in trust_only["msg"]

    # the identity role's run: the key module sees no usable certificate (and says why), a new one is installed
    renewed = proxy_flow(world, tmp=tmp_path)
    assert ok(renewed[1])["reason"] == "missing"
    assert any(reason in w for w in renewed[1].get("warnings", []))
    assert ok(renewed[3])["changed"] is True and not version.exists()
    assert world.snapshot() == before and world.leaks() == []
    assert_root_layout(certs)


def test_an_earlier_layout_is_migrated_and_then_left_alone(world, tmp_path):
    """A host installed by the earlier version (files and pending/ the proxy's): check mode, apply, check mode,
    apply: the rerun makes everything root's without following anything, then changes nothing."""
    certs = world.base / "certs"
    first = [ok(r) for r in proxy_flow(world, tmp=tmp_path)]
    make_legacy(certs)
    (certs / "pending" / "key.pem").write_text(world.shadow.read_text())  # whatever the proxy left there
    serial = first[3]["serial"]

    checked = [ok(r) for r in proxy_flow(world, check=True, tmp=tmp_path)]
    assert checked[1]["needed"] is False and checked[3]["changed"] is True and checked[3]["removed"] == ["pending"]
    assert os.lstat(certs / "pending").st_uid == lesser_ids()[0]
    migrated = [ok(r) for r in proxy_flow(world, tmp=tmp_path)]
    assert migrated[1]["needed"] is False and migrated[3]["changed"] is True
    assert migrated[3]["changed_files"] == ["cert-chain.pem", "key.pem", "root-cert.pem"]
    assert migrated[3]["serial"] == serial  # the same certificate and key, now root's
    assert_root_layout(certs)
    for check in (True, False):
        again = [ok(r) for r in proxy_flow(world, check=check, tmp=tmp_path)]
        assert [r["changed"] for r in again] == [False] * 4 and again[3]["removed"] == []
    assert world.leaks() == []


def test_node_key_refuses_a_link_and_a_folder_another_user_can_write(world, tmp_path):
    uid, gid = lesser_ids()
    folder = world.base / "node-dir"
    folder.mkdir()
    os.chown(folder, uid, gid)  # a folder the proxy's user owns
    os.chmod(folder, 0o755)
    planted = as_lesser("-c", "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(world.loose_secret),
                        str(folder / "node-key.pem"))
    assert planted.returncode == 0, planted.stderr
    safe = world.base / "safe"
    safe.mkdir(mode=0o700)
    (safe / "node-key.pem").symlink_to(world.loose_secret)
    before = world.snapshot()
    results = play(tmp_path, [
        {"vmesh.mesh.node_key": {"path": str(folder / "node-key.pem"), "owner": LESSER, "group": LESSER_GROUP}},
        {"vmesh.mesh.node_key": {"path": str(safe / "node-key.pem"), "owner": LESSER, "group": LESSER_GROUP}},
    ])
    assert results[0]["failed"] is True and "another user could swap what it holds" in results[0]["msg"]
    assert results[1]["failed"] is True and "is a symbolic link, not a regular file" in results[1]["msg"]
    assert world.snapshot() == before and world.leaks() == []
    # force replaces the link itself with a new key (rename(2) over it), never writing through it
    (forced,) = play(tmp_path, [{"vmesh.mesh.node_key": {"path": str(safe / "node-key.pem"), "force": True}}])
    assert ok(forced)["reason"] == "forced" and not (safe / "node-key.pem").is_symlink()
    assert world.snapshot() == before
    assert re.search(r"BEGIN PUBLIC KEY", forced["public_key"])


def test_no_module_touches_anything_under_a_parent_another_user_can_write(world, tmp_path):
    uid, gid = lesser_ids()
    shared = world.base / "shared"
    shared.mkdir()
    os.chown(shared, 0, gid)
    os.chmod(shared, 0o775)  # writable by the proxy's group
    results = play(tmp_path, [ca_task(world.base / "ca"),
                              {"vmesh.mesh.workload_key": {"path": str(shared / "certs"), "identity": IDENTITY,
                                                      "owner": LESSER, "group": LESSER_GROUP}}])
    assert results[1]["failed"] is True and "another user could swap what it holds" in results[1]["msg"]
    assert not (shared / "certs").exists()
