"""vmesh.mesh.host_files: a program's directories, files, leftovers and systemd units converged in one call (the
module_utils it runs, and the module with its action plugin through ansible-playbook on this machine)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess

import pytest

from ansible_collections.vmesh.mesh.plugins.module_utils import host_files
from harness import BIN, ROOT, TARGET_PYTHON


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_directories_and_files_are_made_once_and_check_mode_changes_nothing(tmp_path):
    top = str(tmp_path / "opt")
    dirs = [{"path": top + "/bin"}, {"path": top, "mode": "0700"}]
    files = [{"dest": top + "/bin/tool", "content": "#!/bin/sh\n", "mode": "0755"}]
    host_files.check(dirs, files, [])
    assert host_files.directories(dirs, check_mode=True) == [top, top + "/bin"]
    assert host_files.files(files, check_mode=True)[0] == [top + "/bin/tool"]
    assert not os.path.exists(top)
    assert host_files.directories(dirs) == [top, top + "/bin"]  # parents first, whatever the order given
    changed, needed, diffs = host_files.files(files)
    assert (changed, needed) == ([top + "/bin/tool"], [])
    assert diffs[0]["after"] == "#!/bin/sh\n" and diffs[0]["before"] == ""
    assert (_mode(top), _mode(top + "/bin/tool")) == (0o700, 0o755)
    assert host_files.directories(dirs) == [] and host_files.files(files)[0] == []
    os.chmod(top + "/bin/tool", 0o777)
    assert host_files.files(files)[0] == [top + "/bin/tool"] and _mode(top + "/bin/tool") == 0o755


def test_a_link_in_the_way_stops_everything_before_a_change(tmp_path):
    (tmp_path / "elsewhere").write_text("root's secret\n")
    os.symlink(tmp_path / "elsewhere", tmp_path / "tool")
    dirs = [{"path": str(tmp_path / "new")}]
    files = [{"dest": str(tmp_path / "tool"), "content": "planted\n"}]
    with pytest.raises(host_files.HostFilesError, match="symbolic link, not a regular file"):
        host_files.check(dirs, files, [])
    assert not (tmp_path / "new").exists() and (tmp_path / "elsewhere").read_text() == "root's secret\n"
    with pytest.raises(host_files.HostFilesError, match="not a normalized absolute path"):
        host_files.check([{"path": str(tmp_path) + "/a/../b"}], [], [])
    with pytest.raises(host_files.HostFilesError, match="content or its sha256"):
        host_files.check([], [{"dest": str(tmp_path / "x")}], [])


def test_a_sweep_removes_what_an_earlier_version_left_and_keeps_byte_code(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("kept.py", "old.py", "__pycache__"):
        (lib / name).mkdir() if name == "__pycache__" else (lib / name).write_text("x\n")
    os.symlink("/etc/passwd", lib / "link.py")
    assert host_files.sweep(str(lib), {"kept.py"}, check_mode=True) == [str(lib / "link.py"), str(lib / "old.py")]
    assert (lib / "old.py").exists()
    assert host_files.sweep(str(lib), {"kept.py"}) == [str(lib / "link.py"), str(lib / "old.py")]
    assert sorted(p.name for p in lib.iterdir()) == ["__pycache__", "kept.py"]
    assert os.path.exists("/etc/passwd")
    assert host_files.remove([str(lib / "kept.py"), str(lib / "gone.py")]) == [str(lib / "kept.py")]


def test_a_large_file_goes_by_checksum_and_a_wrong_copy_is_refused(tmp_path):
    data = os.urandom(3 << 20)
    entry = {"dest": str(tmp_path / "envoy"), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
             "mode": "0755"}
    assert host_files.files([entry]) == ([entry["dest"]], [entry["dest"]], [
        {"before_header": entry["dest"], "after_header": entry["dest"], "before": "",
         "after": "(sha256 %s)\n" % entry["sha256"]}])
    assert not os.path.exists(entry["dest"])  # asked for, not written
    wrong = tmp_path / "sent-wrong"
    wrong.write_bytes(data[:-1] + b"!")
    with pytest.raises(host_files.HostFilesError, match="the copy sent has sha256"):
        host_files.files([entry], staged={entry["dest"]: str(wrong)})
    assert not os.path.exists(entry["dest"]) and [p.name for p in tmp_path.iterdir()] == ["sent-wrong"]
    sent = tmp_path / "sent"
    sent.write_bytes(data)
    assert host_files.files([entry], staged={entry["dest"]: str(sent)})[:2] == ([entry["dest"]], [])
    assert (tmp_path / "envoy").read_bytes() == data and _mode(entry["dest"]) == 0o755
    assert host_files.files([entry]) == ([], [], [])  # the same copy: nothing asked for again


def test_an_existing_user_with_another_id_is_refused_not_changed():
    with pytest.raises(host_files.HostFilesError, match="group root exists with gid 0, not 4321"):
        host_files.system_user("root", 4321, "x", check_mode=True)
    with pytest.raises(host_files.HostFilesError, match="gid 0 is taken by root"):
        host_files.system_user("vmesh-no-such-user", 0, "x", check_mode=True)


class Systemctl:
    """systemctl as the module sees it: units enabled and active, and the commands it was given."""

    def __init__(self, enabled=(), active=()):
        self.enabled, self.active, self.calls = set(enabled), set(active), []

    def __call__(self, argv):
        verb, name = argv[1], argv[-1]
        if verb == "is-enabled":
            return (0, "enabled\n", "") if name in self.enabled else (1, "disabled\n", "")
        if verb == "is-active":
            return (0, "active\n", "") if name in self.active else (3, "inactive\n", "")
        self.calls.append(" ".join(argv[1:]))
        return 0, "", ""


def test_units_are_reloaded_enabled_started_and_restarted_only_when_needed():
    unit = "/etc/systemd/system/vmesh-renew.timer"
    entries = [{"name": "vmesh-renew.timer", "enabled": True, "state": "started", "restart_on": [unit]}]
    fresh = Systemctl()
    assert host_files.services(entries, [unit], True, run=fresh) == [
        "daemon-reload", "enable vmesh-renew.timer", "start vmesh-renew.timer"]
    assert fresh.calls == ["daemon-reload", "enable --quiet vmesh-renew.timer", "start vmesh-renew.timer"]
    running = Systemctl(enabled=["vmesh-renew.timer"], active=["vmesh-renew.timer"])
    assert host_files.services(entries, [], False, run=running) == [] and running.calls == []
    assert host_files.services(entries, [unit], True, check_mode=True, run=running) == [
        "daemon-reload", "reenable vmesh-renew.timer", "restart vmesh-renew.timer"]
    assert running.calls == []
    assert host_files.units_changed(["/opt/vmesh/bin/x", unit]) and not host_files.units_changed(["/etc/x"])


PLAY = """---
- name: Install a program's files
  hosts: localhost
  gather_facts: false
  tasks:
    - name: One call
      vmesh.mesh.host_files:
        directories:
          - {path: "{{ top }}"}
          - {path: "{{ top }}/bin"}
          - {path: "{{ top }}/lib", mode: "0700"}
        files:
          - {dest: "{{ top }}/bin/big", src: "{{ big }}", mode: "0755"}
          - {dest: "{{ top }}/bin/tool", src: "{{ tool }}", mode: "0755"}
          - {dest: "{{ top }}/lib/config.json", content: "{{ {'a': 1} | to_json }}\\n"}
        sweep: ["{{ top }}/lib"]
      register: installed

    - name: Keep the result
      ansible.builtin.copy:
        content: "{{ installed | to_json }}"
        dest: "{{ result }}"
        mode: "0600"
      check_mode: false
"""


def _play(tmp_path, *extra):
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "play.yml"), "-e",
         json.dumps({"top": str(tmp_path / "opt"), "big": str(tmp_path / "big.bin"), "tool": str(tmp_path / "tool"),
                     "result": str(tmp_path / "result.json"),
                     "ansible_connection": "local", "ansible_python_interpreter": TARGET_PYTHON}), *extra],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((tmp_path / "result.json").read_text())


def test_one_call_installs_sends_a_large_file_only_when_it_differs_and_converges(tmp_path):
    (tmp_path / "play.yml").write_text(PLAY)
    big = os.urandom(2 << 20)
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "tool").write_text("#!/bin/sh\necho tool\n")
    top = tmp_path / "opt"
    checked = _play(tmp_path, "--check")
    assert checked["changed"] and not top.exists()
    first = _play(tmp_path)
    assert first["changed"] and str(top / "bin" / "big") in first["changed_files"]
    assert (top / "bin" / "big").read_bytes() == big and (top / "bin" / "tool").read_text().endswith("echo tool\n")
    assert (_mode(top / "lib"), _mode(top / "bin" / "big")) == (0o700, 0o755)
    assert json.loads((top / "lib" / "config.json").read_text()) == {"a": 1}
    inode = os.stat(top / "bin" / "big").st_ino
    (top / "lib" / "left-by-an-older-version.py").write_text("x\n")
    again = _play(tmp_path)
    assert again["changed_files"] == [str(top / "lib" / "left-by-an-older-version.py")]
    assert os.stat(top / "bin" / "big").st_ino == inode  # not sent nor written again
    assert _play(tmp_path)["changed"] is False
    (top / "bin" / "big").write_bytes(b"tampered")
    repaired = _play(tmp_path)
    assert repaired["changed_files"] == [str(top / "bin" / "big")] and (top / "bin" / "big").read_bytes() == big


def test_an_enabled_unit_whose_file_changed_is_enabled_again():
    unit = "/etc/systemd/system/vmesh-redirect.service"
    entries = [{"name": "vmesh-redirect.service", "enabled": True, "state": "started"}]
    running = Systemctl(enabled=["vmesh-redirect.service"], active=["vmesh-redirect.service"])
    # a new [Install] section (sysinit.target or multi-user.target) takes effect only when enabled again
    assert host_files.services(entries, [unit], True, run=running) == ["daemon-reload", "reenable vmesh-redirect.service"]
    assert running.calls == ["daemon-reload", "reenable --quiet vmesh-redirect.service"]
    assert host_files.services(entries, ["/opt/vmesh/bin/vmesh-iptables"], False, run=running) == []
