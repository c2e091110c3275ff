"""The vmesh_envoy_config module: validate on the host, swap atomically, keep the last good config. (A running
Envoy reloading what it pushed, in a network namespace: tests/netns/test_envoy_config_reload.py.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from harness.config_push import VS_V1, VS_V3, compiled, push, tree


SIDECAR_REVIEWS_ONLY = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage}
spec:
  workloadSelector: {labels: {app: productpage}}
  egress: [{hosts: [./reviews.default.svc.cluster.local]}]
"""


def snapshot(dest: Path) -> dict:
    """The config files Envoy reads: ``dest/<name>``, links into the version ``..data`` names."""
    if not dest.exists():
        return {}
    return {p.name: p.read_text() for p in sorted(dest.iterdir()) if not p.name.startswith(".")}


def test_four_steps_and_stale_files(tmp_path):
    dest = tmp_path / "envoy"
    config = compiled(dest, VS_V1)
    checked = push(tmp_path, dest, config.files, check=True)
    assert checked["changed"] is True and not dest.exists()
    applied = push(tmp_path, dest, config.files)
    assert applied["changed"] is True and applied["bootstrap_changed"] is True
    assert snapshot(dest) == config.files
    for name in config.files:  # each a link into the version in force
        assert os.readlink(dest / name) == f"..data/{name}"
    assert os.readlink(dest / "..data") == applied["version"]
    assert push(tmp_path, dest, config.files, check=True)["changed"] is False
    assert push(tmp_path, dest, config.files)["changed"] is False
    # a routing change between subsets touches only the route file, and needs no restart
    routed = compiled(dest, VS_V3)
    result = push(tmp_path, dest, routed.files)
    assert result["changed_files"] == ["rds_9080.json"]
    assert result["bootstrap_changed"] is False
    # a secret's file is read once, when Envoy starts: a new one asks for a restart
    shutil.copytree(tmp_path / "certs", tmp_path / "certs2")
    moved = {**routed.files, "sds_default.json": routed.files["sds_default.json"].replace("/certs/", "/certs2/")}
    assert push(tmp_path, dest, moved)["bootstrap_changed"] is True
    # a file no longer wanted is removed: productpage's Sidecar stops naming details
    fewer = compiled(dest, VS_V3, SIDECAR_REVIEWS_ONLY).files
    result = push(tmp_path, dest, fewer)
    assert "eds_outbound_9080__details.default.svc.cluster.local.json" in result["removed_files"]
    assert "eds_outbound_9080__details.default.svc.cluster.local.json" not in fewer
    assert snapshot(dest) == fewer
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".vmesh-staging")]


def test_refused_config_keeps_the_last_good_one(tmp_path):
    dest = tmp_path / "envoy"
    good = compiled(dest)
    push(tmp_path, dest, good.files)
    before = tree(dest)
    routed = compiled(dest, VS_V3)
    clusters = json.loads(routed.files["cds.json"])
    clusters["resources"][0]["lb_policy"] = "NO_SUCH_POLICY"
    result = push(tmp_path, dest, {**routed.files, "cds.json": json.dumps(clusters)})
    assert result["failed"] is True
    assert "envoy --mode validate refused the new config; the running config is unchanged" in result["msg"]
    assert tree(dest) == before  # not a file written, not a version left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".vmesh-staging")]


def test_a_config_missing_a_file_it_names_is_refused(tmp_path):
    """The module builds the static config it validates from the files given: a route table the listeners use
    but no file holds stops the push before anything is written."""
    dest = tmp_path / "envoy"
    good = compiled(dest)
    push(tmp_path, dest, good.files)
    before = tree(dest)
    partial = {k: v for k, v in good.files.items() if k != "rds_9080.json"}
    result = push(tmp_path, dest, partial)
    assert result["failed"] is True
    assert "the new config is not whole; the running config is unchanged" in result["msg"]
    assert "uses route table 9080, which no file holds" in result["msg"]
    assert tree(dest) == before


def test_a_config_compiled_for_another_directory_is_refused(tmp_path):
    """A build compiled with another vmesh_config_dir would have Envoy read its files from elsewhere: refused."""
    config = compiled(tmp_path / "envoy")
    elsewhere = tmp_path / "other"
    result = push(tmp_path, elsewhere, config.files)
    assert result["failed"] is True
    assert f"the bootstrap's lds_config is read from {tmp_path / 'envoy'}/lds.json, not from {elsewhere}" \
        in result["msg"], result["msg"]
    assert not elsewhere.exists()
