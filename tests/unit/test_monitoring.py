"""What the monitoring role writes for Prometheus (vmesh.monitoring): the targets from the inventory, a config
and recording rules that Prometheus's own checker accepts. (Prometheus scraping real proxies:
tests/netns/test_prometheus.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from harness.mesh import bookinfo_hosts
from vmesh import monitoring, registry

PROMTOOL = shutil.which("promtool")


def test_every_mesh_host_is_a_target_at_its_inventory_address():
    hosts = bookinfo_hosts()
    hosts["client"] = {"vmesh_service_account": "sleep", "ansible_host": "client.example.test"}
    mesh_registry = registry.build(hosts)
    groups = monitoring.targets(mesh_registry, {"client": "client.example.test"})
    by_host = {g["labels"]["instance"]: g for g in groups}
    assert set(by_host) == set(mesh_registry.workloads)
    assert by_host["client"]["targets"] == ["client.example.test:15090"]
    reviews = by_host["reviews-v2"]
    assert reviews["targets"] == [f"{mesh_registry.workloads['reviews-v2'].address}:15090"]
    assert reviews["labels"] == {"instance": "reviews-v2", "mesh_host": "reviews-v2", "mesh_namespace": "default",
                                 "mesh_service": "reviews"}


@pytest.mark.skipif(PROMTOOL is None, reason="needs Debian's prometheus (make setup)")
def test_prometheus_checks_the_config_and_the_rules(tmp_path):
    targets, rules, config = tmp_path / "targets.json", tmp_path / "rules.yml", tmp_path / "prometheus.yml"
    targets.write_text(monitoring.dumps(monitoring.targets(registry.build(bookinfo_hosts()))))
    rules.write_text(yaml.safe_dump(monitoring.RULES))
    config.write_text(monitoring.dumps(monitoring.config(str(targets), str(rules))))
    checked = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 14 rules found" in checked.stdout + checked.stderr
    assert json.loads(targets.read_text())[0]["targets"][0].endswith(":15090")
