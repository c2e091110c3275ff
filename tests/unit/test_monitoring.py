"""What the monitoring role writes for Prometheus and Jaeger (vmesh.monitoring): the targets from the inventory, a
config and recording rules that Prometheus's own checker accepts, and a config Jaeger's accepts. (Prometheus
scraping real proxies: tests/netns/test_prometheus.py; Jaeger with their spans:
tests/netns/test_bookinfo_observability.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from harness.mesh import bookinfo_hosts
from vmesh import monitoring, registry, tools

PROMTOOL = shutil.which("promtool")
JAEGER = tools.path("jaeger")


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


@pytest.mark.skipif(not JAEGER.exists(), reason="needs Jaeger (vmesh tools build jaeger; make test builds it)")
def test_jaeger_checks_its_config_and_refuses_a_wrong_one(tmp_path):
    config = tmp_path / "jaeger.yaml"
    config.write_text(monitoring.dumps(monitoring.jaeger_config(listen="127.0.0.1", max_traces=500,
                                                                ui_assets=str(tmp_path))))
    checked = subprocess.run([str(JAEGER), "validate", f"--config={config}"], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr
    data = json.loads(config.read_text())
    assert data["receivers"]["zipkin"] == {"endpoint": "127.0.0.1:9411"}
    assert data["extensions"]["jaeger_query"]["http"] == {"endpoint": "127.0.0.1:16686"}
    assert data["extensions"]["jaeger_storage"]["backends"]["memory"]["memory"] == {"max_traces": 500}
    # the check the role's validate runs is a real one: a misspelt key is refused
    config.write_text(config.read_text().replace('"max_traces"', '"max_trace"'))
    refused = subprocess.run([str(JAEGER), "validate", f"--config={config}"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0 and "max_trace" in refused.stdout + refused.stderr
