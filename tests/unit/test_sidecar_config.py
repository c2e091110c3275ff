"""vmesh.mesh.sidecar_config: a sidecar's Gateway certificates, config directory and service names converged in
one call per host (the module_utils it runs, and the module through ansible-playbook on a local fleet)."""

from __future__ import annotations

import grp
import os
import re
import stat

import pytest

from ansible_collections.vmesh.mesh.plugins.module_utils import sidecar
from harness.fleet import host_name, make_fleet, run_push, snapshot

BEGIN, END = sidecar.HOSTS_MARKER % "BEGIN", sidecar.HOSTS_MARKER % "END"
GROUP = grp.getgrgid(os.getegid()).gr_name


def test_the_block_is_replaced_where_blockinfile_left_it_added_or_removed():
    before = f"127.0.0.1 localhost\n{BEGIN}\n10.0.0.1 old\n{END}\n::1 localhost\n"
    assert sidecar.hosts_text(before, ["10.0.0.2 new"]) == \
        f"127.0.0.1 localhost\n{BEGIN}\n10.0.0.2 new\n{END}\n::1 localhost\n"
    assert sidecar.hosts_text("127.0.0.1 localhost\n", ["10.0.0.2 new"]) == \
        f"127.0.0.1 localhost\n{BEGIN}\n10.0.0.2 new\n{END}\n"
    assert sidecar.hosts_text(before, []) == "127.0.0.1 localhost\n::1 localhost\n"


def test_the_hosts_file_is_written_once_and_never_through_a_link(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    assert sidecar.hosts_file(str(hosts), ["10.0.0.2 reviews"], check_mode=True)[0] is True
    assert hosts.read_text() == "127.0.0.1 localhost\n"
    assert sidecar.hosts_file(str(hosts), ["10.0.0.2 reviews"])[0] is True
    assert "10.0.0.2 reviews" in hosts.read_text()
    assert sidecar.hosts_file(str(hosts), ["10.0.0.2 reviews"])[0] is False
    (tmp_path / "link").symlink_to(hosts)
    with pytest.raises(sidecar.host.FileError, match="symbolic link"):
        sidecar.hosts_file(str(tmp_path / "link"), ["10.0.0.3 ratings"])
    assert "ratings" not in hosts.read_text()


def test_given_certificates_are_written_root_owned_and_group_readable(tmp_path):
    folder = tmp_path / "credentials"
    given = {"bookinfo": {"cert": "CERT\n", "key": "KEY\n", "ca": "CA\n"}}
    assert sidecar.credentials(str(folder), given, [], GROUP, check_mode=True)
    assert not folder.exists()
    written = sidecar.credentials(str(folder), given, [], GROUP)
    assert str(folder / "bookinfo" / "tls.key") in written
    key = (folder / "bookinfo" / "tls.key").stat()
    assert (stat.S_IMODE(key.st_mode), key.st_gid) == (0o640, os.getegid())
    assert stat.S_IMODE((folder / "bookinfo").stat().st_mode) == 0o750
    assert (folder / "bookinfo" / "ca.crt").read_text() == "CA\n"
    assert sidecar.credentials(str(folder), given, [], GROUP) == []
    assert sidecar.credentials(str(folder), given, [], GROUP, check_mode=True) == []


def test_missing_expected_certificates_stop_before_anything_is_written(tmp_path):
    folder = tmp_path / "credentials"
    given = {"bookinfo": {"cert": "CERT\n", "key": "KEY\n"}}
    with pytest.raises(sidecar.SidecarError, match=r"needs these files on the host .*other/tls.crt"):
        sidecar.credentials(str(folder), given, ["other"], GROUP)
    assert not folder.exists()
    with pytest.raises(sidecar.SidecarError, match="not a folder name"):
        sidecar.credentials(str(folder), {"../etc": {"cert": "x"}}, [], GROUP)


def test_one_call_per_host_pushes_config_and_names_check_mode_first(tmp_path):
    inventory = make_fleet(tmp_path, hosts=3, services=2)
    checked = run_push(inventory, "--check", "--diff")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not snapshot(tmp_path) and "svc-1" not in (tmp_path / "etc" / "host-0" / "hosts").read_text()
    # the diff shows the names the hosts file would get
    assert re.search(r"^\+\S+ svc-1\.default\.svc\.cluster\.local .* svc-1$", checked.stdout, re.M), checked.stdout
    applied = run_push(inventory)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert sorted(snapshot(tmp_path)) == [host_name(i) for i in range(3)]
    names = (tmp_path / "etc" / "host-0" / "hosts").read_text()
    assert names.startswith("127.0.0.1 localhost\n" + BEGIN) and "svc-1.default.svc.cluster.local" in names
    again = run_push(inventory, "--check")
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", again.stdout, re.M)
    assert len(recap) == 3 and all(n == "0" for _, n in recap), again.stdout
