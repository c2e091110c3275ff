"""The rate-limit service's limits from the inventory: its own YAML format, checked field by field here and by the
service's own check, one file per domain."""

from __future__ import annotations

import os

import pytest
import yaml

from vmesh import ratelimit, tools
from vmesh.errors import MeshError

SEED = [{"domain": "productpage-ratelimit", "descriptors": [
    {"key": "PATH", "value": "/productpage", "rate_limit": {"unit": "minute", "requests_per_unit": 5}},
    {"key": "PATH", "rate_limit": {"unit": "Minute", "requests_per_unit": 100}, "shadow_mode": True},
    {"key": "USER", "descriptors": [{"key": "PLAN", "value": "free",
                                     "rate_limit": {"unlimited": True, "name": "free"}}]},
]}, {"domain": "other", "descriptors": []}]
CHECK = tools.path("ratelimit-check")
requires_check = pytest.mark.skipif(not os.access(CHECK, os.X_OK), reason=f"needs {CHECK} (vmesh tools build)")


def test_one_file_per_domain_in_the_services_own_format():
    files = ratelimit.files(SEED)
    assert list(files) == ["other.yaml", "productpage-ratelimit.yaml"]
    seed = yaml.safe_load(files["productpage-ratelimit.yaml"])
    assert seed["domain"] == "productpage-ratelimit"
    assert seed["descriptors"][0] == {"key": "PATH", "value": "/productpage",
                                      "rate_limit": {"unit": "minute", "requests_per_unit": 5}}
    assert seed["descriptors"][1]["rate_limit"]["unit"] == "minute" and seed["descriptors"][1]["shadow_mode"] is True
    assert seed["descriptors"][2]["descriptors"][0]["rate_limit"] == {"unlimited": True, "name": "free"}
    assert ratelimit.files(SEED) == files  # the same text each run: a second push changes nothing

    class Tagged(int):  # Ansible hands over its values as subclasses (data tagging)
        pass

    class Text(str):
        pass

    tagged = [{"domain": Text("d"), "descriptors": [{"key": Text("PATH"), "shadow_mode": True,
                                                     "rate_limit": {"unit": Text("minute"), "requests_per_unit": Tagged(5)}}]}]
    assert yaml.safe_load(ratelimit.files(tagged)["d.yaml"])["descriptors"][0]["rate_limit"]["requests_per_unit"] == 5
    assert ratelimit.files(None) == {} and ratelimit.files([]) == {}


@pytest.mark.parametrize("change,field,words", [
    (lambda d: d[0].update(domian="x"), "[0].domian", "unknown field"),
    (lambda d: d[0].update(domain="../etc"), "[0].domain", "expected letters, digits"),
    (lambda d: d[1].update(domain="productpage-ratelimit"), "[1].domain", "given twice"),
    (lambda d: d[0]["descriptors"][0].pop("key"), "[0].descriptors[0].key", "required"),
    (lambda d: d[0]["descriptors"][0]["rate_limit"].update(unit="fortnight"), "[0].descriptors[0].rate_limit.unit",
     "expected one of second, minute"),
    (lambda d: d[0]["descriptors"][0]["rate_limit"].update(requests_per_unit=-1),
     "[0].descriptors[0].rate_limit.requests_per_unit", "a whole number"),
    (lambda d: d[0]["descriptors"][0]["rate_limit"].update(requests_per_unit="5"),
     "[0].descriptors[0].rate_limit.requests_per_unit", "a whole number"),
    (lambda d: d[0]["descriptors"][2]["descriptors"][0]["rate_limit"].update(unit="second"),
     "[0].descriptors[2].descriptors[0].rate_limit.unit", "unlimited rate_limit takes no unit"),
    (lambda d: d[0]["descriptors"][1].update(value="/productpage"), "[0].descriptors[1]",
     "the same key and value as [0].descriptors[0]"),
    (lambda d: d[0]["descriptors"][1].update(shadow_mode="yes"), "[0].descriptors[1].shadow_mode", "true or false"),
    (lambda d: d[0].update(descriptors={"key": "PATH"}), "[0].descriptors", "expected a list"),
])
def test_mistakes_name_their_field(change, field, words):
    domains = yaml.safe_load(yaml.safe_dump(SEED))
    change(domains)
    with pytest.raises(MeshError) as info:
        ratelimit.files(domains, "vmesh_ratelimit_domains")
    assert str(info.value).startswith(f"inventory: vmesh_ratelimit_domains: {field}: "), str(info.value)
    assert words in str(info.value)


@requires_check
def test_the_services_own_check_takes_what_files_writes_and_refuses_what_it_refuses():
    ratelimit.check(ratelimit.files(SEED), CHECK)
    # what it refuses comes back in its words: here one domain in two files, and an unknown unit
    twice = {**ratelimit.files(SEED), "again.yaml": "domain: other\ndescriptors: []\n"}
    with pytest.raises(MeshError, match="the rate-limit service refuses these limits: .*duplicate domain 'other'"):
        ratelimit.check(twice, CHECK)
    fortnight = {"x.yaml": "domain: x\ndescriptors:\n- key: A\n  rate_limit: {unit: fortnight, "
                           "requests_per_unit: 1}\n"}
    with pytest.raises(MeshError, match="the rate-limit service refuses these limits: .*fortnight"):
        ratelimit.check(fortnight, CHECK)


def test_the_environment_keeps_every_port_on_loopback():
    settings = ratelimit.environment("/etc/vmesh-ratelimit", grpc_port=9081)
    assert {settings[k] for k in ("HOST", "GRPC_HOST", "DEBUG_HOST")} == {"127.0.0.1"}
    assert settings["GRPC_PORT"] == "9081" and settings["RUNTIME_ROOT"] == "/etc/vmesh-ratelimit"
    text = ratelimit.environment_file(settings)
    assert 'GRPC_PORT="9081"\n' in text and text == ratelimit.environment_file(dict(reversed(settings.items())))
    with pytest.raises(MeshError, match="REDIS_URL"):
        ratelimit.environment_file({**settings, "REDIS_URL": "127.0.0.1:6379\nLOG_LEVEL=debug"})
