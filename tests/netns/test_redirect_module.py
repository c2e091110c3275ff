"""vmesh_redirect against real iptables, in network namespaces of our own.

Every test runs the real module through ``ansible-playbook`` inside ``ip netns exec``, reads the table back with
``iptables-save -t nat`` and, for behaviour, sends real TCP connections through the rules. The host's own
iptables are never touched: every namespace is ours (``vmesh-t-*``), deleted by name before it is created and
again at teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import APPS, ROOT, TARGET_PYTHON  # the module runs on the VM with plain python3; so here

# The boot-time helper as the vmesh-redirect unit runs it (python3 -I, the collection on its path).
CLI = ROOT / "tests" / "harness" / "vmesh_iptables.py"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
# What runs in the namespaces besides the module (system python3, standard library only).
ORIGINAL_DST_SERVER = APPS / "original_dst_server.py"
CONNECT_CLIENT = APPS / "connect_client.py"
SPEAK_LATER_SERVER = APPS / "speak_later_server.py"
READ_CLIENT = APPS / "read_client.py"


def _ansible_bin_dir() -> Path:
    venv = ROOT / ".venv" / "bin"
    if (venv / "ansible-playbook").exists():
        return venv
    return Path(sys.executable).parent


def _can_run() -> bool:
    return (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None
            and shutil.which("iptables-save", path=SBIN_PATH) is not None
            and shutil.which("setpriv") is not None)


pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not _can_run(), reason="needs root, ip, iptables and setpriv"),
]

DEFAULT_EXCLUDES = [22, 15000, 15001, 15006, 15021, 15090]

FRESH_NAT = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
"""

# What iptables-save prints after the module ran with its defaults in an empty namespace: the canonical form
# the module compares against (note `-m tcp`, `/32`, and the option order).
DEFAULT_NAT = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:VMESH_INBOUND - [0:0]
:VMESH_IN_REDIRECT - [0:0]
:VMESH_OUTPUT - [0:0]
:VMESH_REDIRECT - [0:0]
-A PREROUTING -p tcp -j VMESH_INBOUND
-A OUTPUT -p tcp -j VMESH_OUTPUT
-A VMESH_INBOUND -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A VMESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A VMESH_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A VMESH_INBOUND -p tcp -m tcp --dport 15001 -j RETURN
-A VMESH_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
-A VMESH_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A VMESH_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A VMESH_INBOUND -p tcp -j VMESH_IN_REDIRECT
-A VMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A VMESH_OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A VMESH_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A VMESH_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j VMESH_IN_REDIRECT
-A VMESH_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A VMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A VMESH_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A VMESH_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A VMESH_OUTPUT -d 127.0.0.1/32 -j RETURN
-A VMESH_OUTPUT -p tcp -m tcp --sport 22 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT -p tcp -m tcp --sport 15000 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT -p tcp -m tcp --sport 15001 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT -p tcp -m tcp --sport 15006 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT -p tcp -m tcp --sport 15021 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT -p tcp -m tcp --sport 15090 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT -j VMESH_REDIRECT
-A VMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""


FRESH_FILTER6 = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""

# The IPv6 guard with the defaults: the mesh is IPv4-only, so IPv6 TCP around the sidecar is refused.
DEFAULT_GUARD6 = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:VMESH_INBOUND_GUARD - [0:0]
:VMESH_OUTPUT_GUARD - [0:0]
-A INPUT -p tcp -j VMESH_INBOUND_GUARD
-A OUTPUT -p tcp -j VMESH_OUTPUT_GUARD
-A VMESH_INBOUND_GUARD -i lo -j RETURN
-A VMESH_INBOUND_GUARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A VMESH_INBOUND_GUARD -p tcp -m tcp --dport 22 -j RETURN
-A VMESH_INBOUND_GUARD -p tcp -m tcp --dport 15000 -j RETURN
-A VMESH_INBOUND_GUARD -p tcp -m tcp --dport 15001 -j RETURN
-A VMESH_INBOUND_GUARD -p tcp -m tcp --dport 15006 -j RETURN
-A VMESH_INBOUND_GUARD -p tcp -m tcp --dport 15021 -j RETURN
-A VMESH_INBOUND_GUARD -p tcp -m tcp --dport 15090 -j RETURN
-A VMESH_INBOUND_GUARD -p tcp -j REJECT --reject-with tcp-reset
-A VMESH_OUTPUT_GUARD -o lo -j RETURN
-A VMESH_OUTPUT_GUARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A VMESH_OUTPUT_GUARD -m owner --uid-owner 1337 -j RETURN
-A VMESH_OUTPUT_GUARD -m owner --gid-owner 1337 -j RETURN
-A VMESH_OUTPUT_GUARD -p tcp -m tcp --sport 22 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT_GUARD -p tcp -m tcp --sport 15000 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT_GUARD -p tcp -m tcp --sport 15001 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT_GUARD -p tcp -m tcp --sport 15006 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT_GUARD -p tcp -m tcp --sport 15021 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT_GUARD -p tcp -m tcp --sport 15090 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN
-A VMESH_OUTPUT_GUARD -p tcp -j REJECT --reject-with tcp-reset
COMMIT
"""


def _insert_after(table: str, anchor: str, *lines: str) -> str:
    """``table`` with ``lines`` inserted after the line ``anchor`` (which must be there)."""
    rows = table.splitlines()
    index = rows.index(anchor) + 1
    return "\n".join(rows[:index] + list(lines) + rows[index:]) + "\n"


# --- namespaces ---------------------------------------------------------------------------------------------------


class Netns:
    """One network namespace of ours, and the processes we started in it."""

    def __init__(self, name: str):
        self.name = name
        self.procs: list[subprocess.Popen] = []

    def run(self, *argv: str, check: bool = True, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ, PATH=SBIN_PATH, LC_ALL="C"), **kwargs)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} in {self.name} failed rc={proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def iptables(self, *args: str) -> None:
        self.run("iptables", "-t", "nat", *args)

    def nat(self) -> str:
        """``iptables-save -t nat`` without the ``#`` lines, counters zeroed."""
        out = self.run("iptables-save", "-t", "nat").stdout
        lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in out.splitlines() if not line.startswith("#")]
        return "\n".join(lines) + "\n"

    def filter6(self) -> str:
        """``ip6tables-save -t filter`` without the ``#`` lines, counters zeroed."""
        out = self.run("ip6tables-save", "-t", "filter").stdout or FRESH_FILTER6
        lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in out.splitlines() if not line.startswith("#")]
        return "\n".join(lines) + "\n"

    def vmesh_lines(self) -> list[str]:
        return [line for line in self.nat().splitlines() if "VMESH" in line]

    def start_servers(self, *listeners: str) -> None:
        """Start original_dst_server.py with ``PORT=TAG`` listeners; returns when all are listening."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, TARGET_PYTHON, str(ORIGINAL_DST_SERVER),
                                 *listeners],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=10)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == "ready", f"servers {listeners} in {self.name} did not start: {line!r}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        self.procs.clear()


def _del_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def make_netns(request):
    """Factory: ``make_netns("a")`` -> a fresh namespace ``vmesh-t-<test>-a`` with ``lo`` up."""
    created: list[Netns] = []
    # Deterministic per test, so a leftover of an interrupted run is found (and deleted) by its name.
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().replace("test_", "", 1)).strip("-")[:32]
    slug += "-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]

    def make(suffix: str = "") -> Netns:
        name = f"vmesh-t-{slug}" + (f"-{suffix}" if suffix else "")
        _del_netns(name)  # a leftover of an interrupted run
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns = Netns(name)
        created.append(ns)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        return ns

    yield make
    for ns in created:
        ns.stop()
        _del_netns(ns.name)


@pytest.fixture
def ns(make_netns) -> Netns:
    return make_netns()


# --- running the module -------------------------------------------------------------------------------------------


class Redirect:
    """Runs vmesh_redirect through ansible-playbook inside a namespace; returns the module's result dict."""

    def __init__(self, netns: Netns, workdir: Path):
        self.netns = netns
        self.workdir = workdir
        self.config_path = workdir / "etc" / "vmesh" / "redirect.json"
        self.runs = 0

    def __call__(self, check: bool = False, diff: bool = False, **args) -> dict:
        args.setdefault("config_path", str(self.config_path))
        self.runs += 1
        playbook = self.workdir / f"play-{self.runs}.yml"
        play = [{
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": TARGET_PYTHON},
            "tasks": [
                {"name": "Run vmesh_redirect", "vmesh.mesh.redirect": args, "register": "redirect_result",
                 "ignore_errors": True},
                {"name": "Report", "ansible.builtin.debug": {"msg": "{{ redirect_result | to_json }}"}},
            ],
        }]
        playbook.write_text(json.dumps(play, indent=1))
        argv = [str(_ansible_bin_dir() / "ansible-playbook"), "-i", "localhost,", str(playbook)]
        argv += ["--check"] * check + ["--diff"] * diff
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_CALLBACK_RESULT_FORMAT="json",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PATH=SBIN_PATH)
        proc = subprocess.run(["ip", "netns", "exec", self.netns.name, *argv], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=120)
        assert proc.returncode == 0, f"ansible-playbook failed:\n{proc.stdout}\n{proc.stderr}"
        marker = "ok: [localhost] => "
        start = proc.stdout.rindex(marker) + len(marker)
        report, _ = json.JSONDecoder().raw_decode(proc.stdout[start:])
        return json.loads(report["msg"])


@pytest.fixture
def redirect(ns, tmp_path) -> Redirect:
    return Redirect(ns, tmp_path)


def _ok(result: dict) -> dict:
    assert not result.get("failed"), result.get("msg")
    return result


# --- idempotence and state ------------------------------------------------------------------------------------------


def test_four_step_pattern(ns, redirect):
    assert ns.nat() == FRESH_NAT

    checked = _ok(redirect(check=True, diff=True))
    assert checked["changed"] is True
    assert ns.vmesh_lines() == [], "check mode applied rules"
    assert not redirect.config_path.exists(), "check mode wrote the config file"
    assert checked["diff"]["before"] == ""
    assert "-A VMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in checked["diff"]["after"]

    assert ns.filter6() == FRESH_FILTER6, "check mode applied IPv6 rules"
    assert "# ip6tables -t filter\n" in checked["diff"]["after"]

    applied = _ok(redirect())
    assert applied["changed"] is True
    assert ns.nat() == DEFAULT_NAT
    assert ns.filter6() == DEFAULT_GUARD6
    assert applied["rules"] == checked["rules"]
    assert applied["rules6"] == checked["rules6"]
    assert applied["diff"]["after"] == ("\n".join(applied["rules"]) + "\n# ip6tables -t filter\n"
                                        + "\n".join(applied["rules6"]) + "\n")

    assert _ok(redirect(check=True))["changed"] is False
    again = _ok(redirect(diff=True))
    assert again["changed"] is False
    assert again["diff"]["before"] == again["diff"]["after"]
    assert ns.nat() == DEFAULT_NAT
    assert ns.filter6() == DEFAULT_GUARD6

    # The boot unit's input: the same parameters, normalised, mode 0644.
    assert redirect.config_path.stat().st_mode & 0o777 == 0o644
    saved = json.loads(redirect.config_path.read_text())
    assert saved["exclude_inbound_ports"] == DEFAULT_EXCLUDES
    assert saved["include_inbound_ports"] == "*"
    assert saved["proxy_uid"] == saved["proxy_gid"] == 1337


def test_absent_restores_the_table_byte_for_byte(ns, redirect):
    ns.iptables("-A", "POSTROUTING", "-o", "lo", "-j", "MASQUERADE")  # something that is not ours
    ns.run("ip6tables", "-A", "INPUT", "-p", "udp", "--dport", "546", "-j", "ACCEPT")  # nor this
    before, before6 = ns.nat(), ns.filter6()

    assert _ok(redirect(state="absent"))["changed"] is False
    _ok(redirect())
    assert redirect.config_path.exists()

    checked = _ok(redirect(state="absent", check=True, diff=True))
    assert checked["changed"] is True
    assert checked["diff"]["after"] == "" and "VMESH_OUTPUT" in checked["diff"]["before"]
    assert "-A VMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in ns.nat(), "check mode removed rules"
    assert redirect.config_path.exists(), "check mode removed the config file"

    removed = _ok(redirect(state="absent"))
    assert removed["changed"] is True
    assert removed["rules"] == [] and removed["rules6"] == []
    assert ns.nat() == before
    assert ns.filter6() == before6
    assert not redirect.config_path.exists()

    assert _ok(redirect(state="absent"))["changed"] is False
    assert _ok(redirect(state="absent", check=True))["changed"] is False


def test_other_tools_rules_survive_and_our_jumps_come_first(ns, redirect):
    ns.iptables("-N", "OTHER_TOOL")
    ns.iptables("-A", "OTHER_TOOL", "-d", "10.9.9.9", "-j", "RETURN")
    ns.iptables("-A", "PREROUTING", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.9.9.9:8080")
    ns.iptables("-A", "PREROUTING", "-j", "OTHER_TOOL")
    ns.iptables("-A", "OUTPUT", "-p", "tcp", "-d", "10.9.9.0/24", "-m", "comment", "--comment", "other tool",
                "-j", "RETURN")
    ns.iptables("-A", "POSTROUTING", "-s", "10.9.9.0/24", "-j", "MASQUERADE")
    before = ns.nat()

    assert _ok(redirect())["changed"] is True
    table = ns.nat()
    chain_rules = lambda chain: [line for line in table.splitlines() if line.startswith(f"-A {chain} ")]  # noqa: E731
    assert chain_rules("PREROUTING") == [
        "-A PREROUTING -p tcp -j VMESH_INBOUND",
        "-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.9.9.9:8080",
        "-A PREROUTING -j OTHER_TOOL",
    ]
    assert chain_rules("OUTPUT") == [
        "-A OUTPUT -p tcp -j VMESH_OUTPUT",
        '-A OUTPUT -d 10.9.9.0/24 -p tcp -m comment --comment "other tool" -j RETURN',
    ]
    assert chain_rules("OTHER_TOOL") == ["-A OTHER_TOOL -d 10.9.9.9/32 -j RETURN"]
    assert chain_rules("POSTROUTING") == ["-A POSTROUTING -s 10.9.9.0/24 -j MASQUERADE"]
    assert _ok(redirect())["changed"] is False

    assert _ok(redirect(state="absent"))["changed"] is True
    assert ns.nat() == before


DRIFTS = {
    # name: (commands that break the state, the table the module must restore)
    "rule-deleted": ([("-D", "VMESH_OUTPUT", "4")], DEFAULT_NAT),
    "chain-flushed": ([("-F", "VMESH_INBOUND")], DEFAULT_NAT),
    "rule-added-to-our-chain": ([("-A", "VMESH_REDIRECT", "-j", "RETURN")], DEFAULT_NAT),
    "rules-swapped": ([("-D", "VMESH_OUTPUT", "2"), ("-A", "VMESH_OUTPUT", "-s", "127.0.0.6/32", "-o", "lo",
                                                     "-j", "RETURN")], DEFAULT_NAT),
    "duplicate-jump-appended": ([("-A", "PREROUTING", "-p", "tcp", "-j", "VMESH_INBOUND")], DEFAULT_NAT),
    "duplicate-jump-inserted": ([("-I", "OUTPUT", "1", "-p", "tcp", "-j", "VMESH_OUTPUT")], DEFAULT_NAT),
    "jump-deleted": ([("-D", "OUTPUT", "-p", "tcp", "-j", "VMESH_OUTPUT")], DEFAULT_NAT),
    "jump-changed": ([("-R", "PREROUTING", "1", "-j", "VMESH_INBOUND")], DEFAULT_NAT),
    "other-rule-inserted-above-our-jump": (
        [("-I", "OUTPUT", "1", "-p", "tcp", "--dport", "9999", "-j", "RETURN")],
        _insert_after(DEFAULT_NAT, "-A OUTPUT -p tcp -j VMESH_OUTPUT",
                      "-A OUTPUT -p tcp -m tcp --dport 9999 -j RETURN")),
    # iptables-save lists user chains (and their rules) in alphabetical order.
    "jump-from-another-chain": (
        [("-N", "OTHER_TOOL"), ("-A", "OTHER_TOOL", "-j", "VMESH_REDIRECT"), ("-A", "OTHER_TOOL", "-j", "RETURN")],
        _insert_after(DEFAULT_NAT, ":POSTROUTING ACCEPT [0:0]", ":OTHER_TOOL - [0:0]").replace(
            "-A VMESH_INBOUND -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-A OTHER_TOOL -j RETURN\n-A VMESH_INBOUND -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")),
}


@pytest.mark.parametrize("drift", sorted(DRIFTS))
def test_drift_is_repaired(ns, redirect, drift):
    commands, expected = DRIFTS[drift]
    _ok(redirect())
    for command in commands:
        ns.iptables(*command)
    assert ns.nat() != expected

    checked = _ok(redirect(check=True, diff=True))
    assert checked["changed"] is True
    assert checked["diff"]["before"] != checked["diff"]["after"]

    repaired = _ok(redirect())
    assert repaired["changed"] is True
    assert ns.nat() == expected
    assert _ok(redirect())["changed"] is False


def test_changed_parameter_is_applied_and_shown_in_the_diff(ns, redirect):
    _ok(redirect())
    new_line = "-A VMESH_INBOUND -p tcp -m tcp --dport 8443 -j RETURN"

    checked = _ok(redirect(check=True, diff=True, exclude_inbound_ports=DEFAULT_EXCLUDES + [8443]))
    assert checked["changed"] is True
    assert new_line in checked["diff"]["after"].splitlines()
    assert new_line not in checked["diff"]["before"].splitlines()
    assert ns.nat() == DEFAULT_NAT

    applied = _ok(redirect(diff=True, exclude_inbound_ports=DEFAULT_EXCLUDES + [8443]))
    assert applied["changed"] is True
    expected = _insert_after(DEFAULT_NAT, "-A VMESH_INBOUND -p tcp -m tcp --dport 15090 -j RETURN", new_line)
    # replies from an excluded port are never captured either
    expected = _insert_after(expected,
                             "-A VMESH_OUTPUT -p tcp -m tcp --sport 15090 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN",
                             "-A VMESH_OUTPUT -p tcp -m tcp --sport 8443 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN")
    assert ns.nat() == expected
    assert json.loads(redirect.config_path.read_text())["exclude_inbound_ports"] == DEFAULT_EXCLUDES + [8443]
    assert _ok(redirect(exclude_inbound_ports=DEFAULT_EXCLUDES + [8443]))["changed"] is False


def test_non_default_parameters(ns, redirect):
    params = dict(proxy_uid=1500, proxy_gid=1501, inbound_capture_port=16006, outbound_capture_port=16001,
                  exclude_inbound_ports=[22], include_inbound_ports=[9080, 22, 9080],
                  exclude_outbound_ports=[5432], exclude_outbound_cidrs=["10.1.2.3/16", "192.0.2.7"],
                  include_outbound_cidrs=["240.240.0.0/16"])
    result = _ok(redirect(**params))
    assert result["changed"] is True
    assert ns.vmesh_lines() == [
        ":VMESH_INBOUND - [0:0]",
        ":VMESH_IN_REDIRECT - [0:0]",
        ":VMESH_OUTPUT - [0:0]",
        ":VMESH_REDIRECT - [0:0]",
        "-A PREROUTING -p tcp -j VMESH_INBOUND",
        "-A OUTPUT -p tcp -j VMESH_OUTPUT",
        "-A VMESH_INBOUND -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A VMESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A VMESH_INBOUND -p tcp -m tcp --dport 9080 -j VMESH_IN_REDIRECT",
        "-A VMESH_INBOUND -p tcp -m tcp --dport 22 -j VMESH_IN_REDIRECT",
        "-A VMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
        "-A VMESH_OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A VMESH_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A VMESH_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1500 -j VMESH_IN_REDIRECT",
        "-A VMESH_OUTPUT -o lo -m owner ! --uid-owner 1500 -j RETURN",
        "-A VMESH_OUTPUT -m owner --uid-owner 1500 -j RETURN",
        "-A VMESH_OUTPUT -o lo -m owner ! --gid-owner 1501 -j RETURN",
        "-A VMESH_OUTPUT -m owner --gid-owner 1501 -j RETURN",
        "-A VMESH_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A VMESH_OUTPUT -p tcp -m tcp --sport 22 ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN",
        "-A VMESH_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
        "-A VMESH_OUTPUT -d 10.1.0.0/16 -j RETURN",
        "-A VMESH_OUTPUT -d 192.0.2.7/32 -j RETURN",
        "-A VMESH_OUTPUT -d 240.240.0.0/16 -j VMESH_REDIRECT",
        "-A VMESH_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
    ]
    assert _ok(redirect(**params))["changed"] is False


@pytest.mark.parametrize("params, port", [
    ({"exclude_inbound_ports": [15000, 15001, 15006]}, 22),
    ({"exclude_inbound_ports": []}, 22),
    ({"ssh_port": 2222}, 2222),
    ({"exclude_inbound_ports": [15006], "include_inbound_ports": [8080, 22]}, 22),
], ids=["22-not-excluded", "nothing-excluded", "ssh-port-2222-not-excluded", "22-included"])
def test_refuses_to_capture_ssh(ns, redirect, params, port):
    result = redirect(**params)
    assert result.get("failed") is True
    assert f"SSH port {port}" in result["msg"]
    assert ns.nat() == FRESH_NAT
    assert not redirect.config_path.exists()


def test_ssh_not_in_included_ports_is_allowed(ns, redirect):
    assert _ok(redirect(exclude_inbound_ports=[], include_inbound_ports=[8080]))["changed"] is True
    assert "-A VMESH_INBOUND -p tcp -m tcp --dport 8080 -j VMESH_IN_REDIRECT" in ns.vmesh_lines()


def test_invalid_parameters_fail_cleanly(ns, redirect):
    result = redirect(exclude_outbound_cidrs=["10.0.0.0/8", "not-a-cidr"])
    assert result.get("failed") is True
    assert result["msg"].startswith("exclude_outbound_cidrs[1]:")
    result = redirect(include_inbound_ports=[80, 70000])
    assert result.get("failed") is True
    assert result["msg"].startswith("include_inbound_ports[1]: 70000")
    assert ns.nat() == FRESH_NAT


# --- the boot-time command line -------------------------------------------------------------------------------------


def test_boot_cli_applies_the_same_rules_as_the_module(make_netns, tmp_path):
    module_ns, boot_ns = make_netns("module"), make_netns("boot")
    redirect = Redirect(module_ns, tmp_path)
    _ok(redirect(exclude_outbound_ports=[5432], include_outbound_cidrs=["240.240.0.0/16"],
                 exclude_inbound_ports=DEFAULT_EXCLUDES + [9901]))
    config = str(redirect.config_path)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return boot_ns.run(TARGET_PYTHON, "-I", str(CLI), *args, check=False)

    applied = cli("apply", "--config", config)
    assert (applied.returncode, applied.stdout) == (0, "changed\n"), applied.stderr
    assert boot_ns.nat() == module_ns.nat()
    assert cli("apply", "--config", config).stdout == "ok\n"
    shown = cli("show", "--config", config)
    assert "-A VMESH_OUTPUT -d 240.240.0.0/16 -j VMESH_REDIRECT" in shown.stdout
    assert f"# in sync with {config}" in shown.stdout

    # The module sees the CLI's rules as its own: nothing to do.
    assert _ok(Redirect(boot_ns, tmp_path)(exclude_outbound_ports=[5432], include_outbound_cidrs=["240.240.0.0/16"],
                                          exclude_inbound_ports=DEFAULT_EXCLUDES + [9901]))["changed"] is False

    removed = cli("remove")
    assert (removed.returncode, removed.stdout) == (0, "changed\n"), removed.stderr
    assert boot_ns.nat() == FRESH_NAT
    assert cli("remove").stdout == "ok\n"


def test_boot_cli_refuses_a_bad_config(ns, tmp_path):
    bad = tmp_path / "redirect.json"
    bad.write_text(json.dumps({"exclude_inbound_ports": [15006]}))
    proc = ns.run(TARGET_PYTHON, "-I", str(CLI), "apply", "--config", str(bad), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"vmesh_iptables: {bad}: exclude_inbound_ports: SSH port 22")
    assert ns.nat() == FRESH_NAT


# --- behaviour with real connections ------------------------------------------------------------------------------

APP, EXCLUDED_APP = 18080, 18081
LOCAL, PEER = "198.18.0.1", "198.18.0.2"  # benchmark range (RFC 2544), private to these namespaces
PEER_OTHER = "198.18.0.3"  # a second address of the peer
LOCAL6, PEER6 = "2001:db8:18::1", "2001:db8:18::2"  # documentation range (RFC 3849), private to these namespaces


def _connect(netns: Netns, host: str, port: int, uid: int | None = None, gid: int | None = None,
             source_port: int | None = None) -> str:
    argv = [TARGET_PYTHON, str(CONNECT_CLIENT), host, str(port), *([str(source_port)] if source_port else [])]
    if uid is not None:
        gid = uid if gid is None else gid
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
    return netns.run(*argv, timeout=15).stdout.strip()


@pytest.fixture
def vm_and_peer(make_netns):
    """Two namespaces joined by a veth pair: "vm" (198.18.0.1, gets the redirect) and "peer" (198.18.0.2)."""
    vm, peer = make_netns("vm"), make_netns("peer")
    for argv in (
        ["ip", "-n", vm.name, "link", "add", "vmesh-vm", "type", "veth", "peer", "name", "vmesh-peer",
         "netns", peer.name],
        ["ip", "-n", vm.name, "addr", "add", f"{LOCAL}/24", "dev", "vmesh-vm"],
        ["ip", "-n", peer.name, "addr", "add", f"{PEER}/24", "dev", "vmesh-peer"],
        ["ip", "-n", peer.name, "addr", "add", f"{PEER_OTHER}/24", "dev", "vmesh-peer"],
        ["ip", "-n", vm.name, "addr", "add", f"{LOCAL6}/64", "dev", "vmesh-vm", "nodad"],
        ["ip", "-n", peer.name, "addr", "add", f"{PEER6}/64", "dev", "vmesh-peer", "nodad"],
        ["ip", "-n", vm.name, "link", "set", "vmesh-vm", "up"],
        ["ip", "-n", peer.name, "link", "set", "vmesh-peer", "up"],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    # On the VM: the sidecar's two listeners, the workload (on both families), and sshd. On the peer: another
    # VM's workload.
    vm.start_servers("15001=PROXY", "15006=INBOUND", f"{APP}=APP-LOCAL", "22=SSH", f"6:{APP}=APP-LOCAL6",
                     "6:22=SSH6")
    peer.start_servers(f"{APP}=APP-PEER", f"{EXCLUDED_APP}=APP-PEER", f"6:{APP}=APP-PEER6")
    return vm, peer


def _wait_until_reachable(peer: Netns, host: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while not _connect(peer, host, port).startswith("SSH") and time.monotonic() < deadline:
        time.sleep(0.2)


def test_traffic_is_redirected_like_istio(vm_and_peer, tmp_path):
    vm, peer = vm_and_peer
    _wait_until_reachable(peer, LOCAL, 22)
    # Without the redirect, everything reaches the workloads directly.
    assert _connect(vm, PEER, APP, uid=1000) == f"APP-PEER {PEER}:{APP}"
    assert _connect(peer, LOCAL, APP) == f"APP-LOCAL {LOCAL}:{APP}"

    redirect = Redirect(vm, tmp_path)
    assert _ok(redirect(exclude_outbound_ports=[EXCLUDED_APP]))["changed"] is True

    expectations = [
        # (what, namespace, host, port, uid, gid, answer)
        ("app -> other VM: to the outbound listener, original destination kept",
         vm, PEER, APP, 1000, None, f"PROXY {PEER}:{APP}"),
        ("root -> other VM: captured too", vm, PEER, APP, 0, None, f"PROXY {PEER}:{APP}"),
        ("proxy uid -> other VM: not captured", vm, PEER, APP, 1337, None, f"APP-PEER {PEER}:{APP}"),
        ("proxy gid -> other VM: not captured", vm, PEER, APP, 1000, 1337, f"APP-PEER {PEER}:{APP}"),
        ("app -> excluded outbound port: not captured",
         vm, PEER, EXCLUDED_APP, 1000, None, f"APP-PEER {PEER}:{EXCLUDED_APP}"),
        ("app -> 127.0.0.1: not captured", vm, "127.0.0.1", APP, 1000, None, f"APP-LOCAL 127.0.0.1:{APP}"),
        ("app -> own address (over lo): not captured, as in Istio",
         vm, LOCAL, APP, 1000, None, f"APP-LOCAL {LOCAL}:{APP}"),
        ("proxy -> own workload address: hairpin to the inbound listener",
         vm, LOCAL, APP, 1337, None, f"INBOUND {LOCAL}:{APP}"),
        ("other VM -> app: to the inbound listener, original destination kept",
         peer, LOCAL, APP, None, None, f"INBOUND {LOCAL}:{APP}"),
        ("other VM -> ssh: not captured", peer, LOCAL, 22, None, None, f"SSH {LOCAL}:22"),
        ("other VM -> Envoy health port: not captured (nothing listens)",
         peer, LOCAL, 15021, None, None, "ERROR ConnectionRefusedError"),
    ]
    answers = {what: _connect(netns, host, port, uid, gid) for what, netns, host, port, uid, gid, _ in expectations}
    assert answers == {what: answer for what, *_, answer in expectations}

    assert _ok(redirect(state="absent"))["changed"] is True
    assert _connect(vm, PEER, APP, uid=1000) == f"APP-PEER {PEER}:{APP}"
    assert _connect(peer, LOCAL, APP) == f"APP-LOCAL {LOCAL}:{APP}"


def test_no_way_around_the_capture(vm_and_peer, tmp_path):
    """What an app on the VM could use to go around its sidecar: IPv6 both ways, a client socket bound to an
    excluded inbound port, the CA server's port to any other address. All closed; what is meant to pass does."""
    vm, peer = vm_and_peer
    _wait_until_reachable(peer, LOCAL, 22)
    before = [
        _connect(peer, LOCAL6, APP), _connect(vm, PEER6, APP, uid=1000),
        _connect(vm, PEER, APP, uid=1000, source_port=15021), _connect(vm, PEER_OTHER, EXCLUDED_APP, uid=1000),
    ]
    # Without the rules every one of them reaches the app around the (absent) sidecar.
    assert before == [f"APP-LOCAL6 {LOCAL6}:{APP}", f"APP-PEER6 {PEER6}:{APP}", f"APP-PEER {PEER}:{APP}",
                      f"APP-PEER {PEER_OTHER}:{EXCLUDED_APP}"]

    redirect = Redirect(vm, tmp_path)
    assert _ok(redirect(exclude_outbound_endpoints=[f"{PEER}:{EXCLUDED_APP}"]))["changed"] is True

    expectations = [
        ("other VM -> app over IPv6: refused, not served around the sidecar",
         peer, LOCAL6, APP, None, None, None, "ERROR ConnectionRefusedError"),
        ("app -> other VM over IPv6: refused", vm, PEER6, APP, 1000, None, None, "ERROR ConnectionRefusedError"),
        ("root -> other VM over IPv6: refused", vm, PEER6, APP, 0, None, None, "ERROR ConnectionRefusedError"),
        ("proxy uid -> other VM over IPv6: passes", vm, PEER6, APP, 1337, None, None, f"APP-PEER6 {PEER6}:{APP}"),
        ("app -> ::1: passes (loopback)", vm, "::1", APP, 1000, None, None, f"APP-LOCAL6 ::1:{APP}"),
        ("other VM -> ssh over IPv6: passes (excluded port)", peer, LOCAL6, 22, None, None, None, f"SSH6 {LOCAL6}:22"),
        ("app with its client socket bound to excluded port 15021: captured",
         vm, PEER, APP, 1000, None, 15021, f"PROXY {PEER}:{APP}"),
        ("root with its client socket bound to excluded port 15090: captured",
         vm, PEER, APP, 0, None, 15090, f"PROXY {PEER}:{APP}"),
        ("app -> the excluded endpoint: not captured",
         vm, PEER, EXCLUDED_APP, 1000, None, None, f"APP-PEER {PEER}:{EXCLUDED_APP}"),
        ("app -> the same port at another address: captured",
         vm, PEER_OTHER, EXCLUDED_APP, 1000, None, None, f"PROXY {PEER_OTHER}:{EXCLUDED_APP}"),
    ]
    answers = {what: _connect(netns, host, port, uid, gid, source)
               for what, netns, host, port, uid, gid, source, _ in expectations}
    assert answers == {what: answer for what, *_, answer in expectations}

    assert _ok(redirect(state="absent"))["changed"] is True
    assert _connect(peer, LOCAL6, APP) == f"APP-LOCAL6 {LOCAL6}:{APP}"


def test_the_ssh_session_that_applies_the_rules_is_not_cut(vm_and_peer, tmp_path):
    """A connection to an excluded port that was open before the rules (the SSH session running the module) keeps
    working, even when the VM speaks first after the rules are in (the module's result going back)."""
    vm, peer = vm_and_peer
    ssh_port = 2222
    flag = tmp_path / "go"
    server = subprocess.Popen(["ip", "netns", "exec", vm.name, TARGET_PYTHON, str(SPEAK_LATER_SERVER),
                               str(ssh_port), str(flag)], stdout=subprocess.PIPE, text=True)
    vm.procs.append(server)
    assert server.stdout.readline().strip() == "ready"
    client = subprocess.Popen(["ip", "netns", "exec", peer.name, TARGET_PYTHON, str(READ_CLIENT), LOCAL,
                               str(ssh_port)], stdout=subprocess.PIPE, text=True)
    peer.procs.append(client)
    assert client.stdout.readline().strip() == "before"

    redirect = Redirect(vm, tmp_path)
    excluded = [22, ssh_port, 15000, 15001, 15006, 15021, 15090]
    assert _ok(redirect(exclude_inbound_ports=excluded, ssh_port=ssh_port))["changed"] is True
    flag.touch()
    assert client.stdout.readline().strip() == "after"
    # new connections are captured as before
    assert _connect(peer, LOCAL, APP) == f"INBOUND {LOCAL}:{APP}"
