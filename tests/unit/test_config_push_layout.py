"""The vmesh_envoy_config module's directory, no Envoy running: versions and links, check mode, diff, idempotence,
adopting the layout before versions, and what root refuses to touch. The make-before-break steps, table-driven."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ansible_collections.vmesh.mesh.plugins.module_utils import envoy_files
from harness.config_push import Ports, args, config, in_force, pushes, tree, write_plain

NOBODY = 65534


def versions(dest: Path) -> set[str]:
    return {p.name for p in dest.iterdir() if envoy_files.VERSION_RE.match(p.name)}


def test_versions_links_previous_and_leftovers(tmp_path):
    """Each push is a version directory; ``..data`` names it, ``..previous`` the one before; older versions and the
    leftovers of an interrupted push go; unchanged files are hard links to the version before."""
    dest, ports = tmp_path / "envoy", Ports()
    dest.mkdir(mode=0o755)
    old = dest / "..20200101T000000.abcdef"
    old.mkdir(mode=0o755)
    (old / "lds.json").write_text("{}")
    os.symlink("..20200101T000000.abcdef", dest / "..data_tmp")
    (dest / "notes.txt").write_text("not ours: left alone\n")
    configs = [config(dest, ports, "A"), config(dest, ports, "B"), config(dest, ports, "B", route="other")]
    results = pushes(tmp_path, *(args(dest, files) for files in configs))
    for result in results:
        assert not result.get("failed"), result.get("msg")
        assert result["changed"] is True and result["envoy_confirmed"] is False  # no Envoy runs from dest
    first, second, third = results
    assert first["previous_version"] == "" and first["migrated"] is False
    assert second["previous_version"] == first["version"]
    assert third["previous_version"] == second["version"]
    assert os.readlink(dest / "..data") == third["version"]
    assert os.readlink(dest / "..previous") == second["version"]
    assert versions(dest) == {second["version"], third["version"]}
    assert not (dest / "..data_tmp").exists() and (dest / "notes.txt").exists()
    files = configs[-1]
    assert in_force(dest) == files
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["..data", "..previous", second["version"], third["version"], "notes.txt", *files])
    for name in files:
        assert os.readlink(dest / name) == f"..data/{name}"
        st = os.lstat(dest / third["version"] / name)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.lstat(dest / third["version"]).st_mode) == 0o755
    # a file the last push did not change is the very file of the version before
    assert os.stat(dest / second["version"] / "cds.json").st_ino == os.stat(dest / third["version"] / "cds.json").st_ino
    # what the removed route table was
    assert "rds_front.json" in third["removed_files"] and not (dest / "rds_front.json").exists()
    assert (dest / second["version"] / "rds_front.json").exists()


def test_check_mode_diff_and_a_second_push(tmp_path):
    """Check mode writes nothing and reports what would change, the diff lists the changed files, a push of what is
    in force changes nothing."""
    dest, ports = tmp_path / "envoy", Ports()
    files = config(dest, ports, "A")
    (first,) = pushes(tmp_path, args(dest, files))
    assert first["changed"] is True
    before = tree(dest)
    other = config(dest, ports, "B")
    checked, diffed, again, again_checked = pushes(
        tmp_path, args(dest, other, _check=True),
        args(dest, other, _check=True, _diff=True),
        args(dest, files), args(dest, files, _check=True))
    assert tree(dest) == before
    assert checked["changed"] is True and checked["changed_files"] == ["cds.json", "rds_front.json"]
    assert checked["steps"] == ["clusters", "listeners and routes", "final"] and checked["version"] == ""
    assert [d["after_header"] for d in diffed["diff"]] == [str(dest / "cds.json"), str(dest / "rds_front.json")]
    assert diffed["diff"][0]["before"] == files["cds.json"] and diffed["diff"][0]["after"] == other["cds.json"]
    assert again["changed"] is False and again["version"] == first["version"]
    assert again_checked["changed"] is False


def test_adopting_plain_files_changes_nothing_in_force(tmp_path):
    """The layout before versions (plain files in dest): the files in force become the first version, the very
    same files (hard links), each name a link into ..data; the push after it changes nothing."""
    dest, ports = tmp_path / "envoy", Ports()
    files = config(dest, ports, "A")
    write_plain(dest, files)
    inodes = {name: os.stat(dest / name).st_ino for name in files}
    adopted, again = pushes(tmp_path, args(dest, files), args(dest, files))
    assert adopted["changed"] is True and adopted["migrated"] is True
    assert adopted["changed_files"] == [] and adopted["removed_files"] == [] and adopted["steps"] == []
    assert again["changed"] is False
    assert in_force(dest) == files
    for name in files:
        assert os.readlink(dest / name) == f"..data/{name}"
        assert os.stat(dest / name).st_ino == inodes[name]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_refuses_what_another_user_could_plant(tmp_path):
    """dest, a directory above it, an entry in it: anything another user could have planted is refused, not
    followed, and nothing changes."""
    ports = Ports()
    cases = {}

    def case(name: str) -> Path:
        dest = tmp_path / name / "envoy"
        dest.mkdir(mode=0o755, parents=True)
        os.chmod(dest, 0o755)
        cases[name] = dest
        return dest

    os.chmod(case("writable-by-all"), 0o777)
    os.chown(case("owned-by-nobody"), NOBODY, NOBODY)
    os.symlink("/etc/passwd", case("link-outside") / "lds.json")
    os.symlink("cds.json", case("link-inside") / "lds.json")
    (case("file-of-nobody") / "cds.json").write_text("{}")
    os.chown(cases["file-of-nobody"] / "cds.json", NOBODY, NOBODY)
    os.symlink("/etc", case("data-elsewhere") / "..data")
    os.chmod(case("parent-writable-by-all").parent, 0o777)
    before = {name: tree(dest) for name, dest in cases.items()}
    passwd = Path("/etc/passwd").read_text()
    results = dict(zip(cases, pushes(tmp_path, *(args(dest, config(dest, ports, "A")) for dest in cases.values()))))
    expected = {
        "writable-by-all": "belongs to uid 0 with mode 0777: another user could plant links in it; refused",
        "owned-by-nobody": f"belongs to uid {NOBODY} with mode 0755: another user could plant links in it; refused",
        "link-outside": "lds.json is a symbolic link to '/etc/passwd' (outside ",
        "link-inside": "lds.json is a symbolic link to 'cds.json', not the link ..data/lds.json this module makes",
        "file-of-nobody": f"cds.json belongs to uid {NOBODY}, not to root; refused",
        "data-elsewhere": "..data is a symbolic link to '/etc', not a link of root's to a version directory",
        "parent-writable-by-all": "parent-writable-by-all is a directory of uid 0 with mode 0777: another user "
                                  "could swap what it holds; refused",
    }
    for name, message in expected.items():
        assert results[name].get("failed") is True, (name, results[name])
        assert message in results[name]["msg"], (name, results[name]["msg"])
        assert tree(cases[name]) == before[name], name
    assert Path("/etc/passwd").read_text() == passwd


# --- make before break, table-driven --------------------------------------------------------------------------------


def _cds(*names: str) -> str:
    return json.dumps({"resources": [{"name": n} for n in names]})


def _merged(*names: str) -> str:
    return json.dumps({"resources": [{"name": n} for n in names]}, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("before, wanted, expected", [
    pytest.param(  # a routing change: one swap
        {"cds.json": _cds("a"), "rds_r.json": "r1", "lds.json": "l"},
        {"cds.json": _cds("a"), "rds_r.json": "r2", "lds.json": "l"},
        [("listeners and routes", {"cds.json": _cds("a"), "rds_r.json": "r2", "lds.json": "l"})],
        id="routes-only"),
    pytest.param(  # a new cluster and a route to it, the old cluster removed last
        {"cds.json": _cds("a"), "rds_r.json": "to a", "lds.json": "l"},
        {"cds.json": _cds("b"), "rds_r.json": "to b", "lds.json": "l"},
        [("clusters", {"cds.json": _merged("b", "a"), "rds_r.json": "to a", "lds.json": "l"}),
         ("listeners and routes", {"cds.json": _merged("b", "a"), "rds_r.json": "to b", "lds.json": "l"}),
         ("final", {"cds.json": _cds("b"), "rds_r.json": "to b", "lds.json": "l"})],
        id="cluster-swapped"),
    pytest.param(  # a cluster added: no last step, nothing to remove
        {"cds.json": _cds("a"), "lds.json": "l1"},
        {"cds.json": _cds("a", "b"), "lds.json": "l2", "sds_s.json": "s"},
        [("clusters", {"cds.json": _cds("a", "b"), "lds.json": "l1", "sds_s.json": "s"}),
         ("listeners and routes", {"cds.json": _cds("a", "b"), "lds.json": "l2", "sds_s.json": "s"})],
        id="cluster-added"),
    pytest.param(  # a listener and its route table gone: the route file and secret stay until the last step
        {"cds.json": _cds("a"), "lds.json": "l1", "rds_old.json": "o", "sds_s.json": "s"},
        {"cds.json": _cds("a"), "lds.json": "l2"},
        [("listeners and routes", {"cds.json": _cds("a"), "lds.json": "l2", "rds_old.json": "o", "sds_s.json": "s"}),
         ("final", {"cds.json": _cds("a"), "lds.json": "l2"})],
        id="listener-gone"),
    pytest.param(  # a first push into an empty directory: clusters first all the same
        {}, {"envoy.json": "b", "cds.json": _cds("a"), "lds.json": "l"},
        [("clusters", {"envoy.json": "b", "cds.json": _cds("a")}),
         ("listeners and routes", {"envoy.json": "b", "cds.json": _cds("a"), "lds.json": "l"})],
        id="first-push"),
])
def test_make_before_break_steps(before, wanted, expected):
    steps = envoy_files.steps(before, wanted, "envoy.json")
    assert [(s.label, s.files) for s in steps] == expected


def test_plan_a_mode_change_is_one_swap_and_nothing_is_none():
    files = {"cds.json": _cds("a"), "lds.json": "l"}
    current = envoy_files.Current("/x", exists=True, files=dict(files), modes={"cds.json": 0o644,
                                        "lds.json": 0o600}, version="..20260101T000000.abcdef", links=list(files))
    todo = envoy_files.plan(current, files, "envoy.json", 0o644)
    assert todo.changed == ["lds.json"] and [(s.label, s.files) for s in todo.steps] == [("final", files)]
    current.modes["lds.json"] = 0o644
    nothing = envoy_files.plan(current, files, "envoy.json", 0o644)
    assert not nothing.changed_any and nothing.steps == []
