# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""Istio-style NAT redirect to the vmesh sidecar: desired rules, current rules, one iptables-restore transaction.

This file runs on the VM with plain ``python3`` and imports the standard library and the collection's host.py
(commands) only. Two users:

* the ``vmesh.mesh.redirect`` Ansible module (``from ansible_collections.vmesh.mesh.plugins.module_utils.iptables import ...``);
* the boot-time systemd unit, through the small command line at the bottom, which the redirect role installs with
  what it imports under /opt/vmesh/lib/iptables (as the collection lays them out) and runs through the launcher
  /opt/vmesh/bin/vmesh-iptables (``python3 -I``)::

      vmesh-iptables apply --config /etc/vmesh/redirect.json
      vmesh-iptables remove
      vmesh-iptables show [--config /etc/vmesh/redirect.json]

Layout in the ``nat`` table (istio-iptables' layout with our chain names)::

    PREROUTING -p tcp -j VMESH_INBOUND        first rule of PREROUTING, exactly once
      VMESH_INBOUND      RETURN for excluded ports, the rest (or the included ports) -> VMESH_IN_REDIRECT
      VMESH_IN_REDIRECT  REDIRECT --to-ports 15006
    OUTPUT -p tcp -j VMESH_OUTPUT             first rule of OUTPUT, exactly once
      VMESH_OUTPUT       RETURN for Envoy's passthrough source, the proxy's uid/gid, loopback and exclusions;
                         the proxy calling its own workload's address on lo -> VMESH_IN_REDIRECT;
                         the rest (or the included CIDRs) -> VMESH_REDIRECT
      VMESH_REDIRECT     REDIRECT --to-ports 15001

The mesh is IPv4-only, so IPv6 is closed instead of captured (as istio-iptables does without IPv6), in the
``filter`` table of ip6tables::

    INPUT -p tcp -j VMESH_INBOUND_GUARD       loopback, established, excluded ports RETURN; other TCP REJECT
    OUTPUT -p tcp -j VMESH_OUTPUT_GUARD       loopback, established, the proxy's uid/gid, replies from the
                                              excluded inbound ports, excluded ports RETURN; other TCP REJECT

so no app is reached over IPv6 around its sidecar, and no app calls out over IPv6 around it. UDP is not captured
in either family (as in Istio). A kernel without IPv6 (no /proc/net/if_inet6) gets no IPv6 rules.

Excluded inbound ports (SSH) stay uncaptured for their replies only: a reply never opens a connection, so the
OUTPUT exception for their source ports leaves out SYN packets -- an app that binds its client socket to port
22 is captured like any other. The CA server's port is left uncaptured for its address only
(``exclude_outbound_endpoints``), so renewal works with the proxy down without opening that port everywhere.

Desired rules are written in the canonical form ``iptables-save`` prints them in, so that current and desired
state compare as text. Checked against iptables 1.8.9 with the nf_tables backend (the legacy backend was not
tested; if it printed a rule differently, :func:`reconcile` reports that as an error after applying):

* ``-p tcp --dport 22`` is printed ``-p tcp -m tcp --dport 22`` (the implicit tcp match is named);
* addresses get their prefix and lose host bits: ``10.1.2.3`` -> ``10.1.2.3/32``, ``10.1.2.3/16`` -> ``10.1.0.0/16``;
* ``-d 0.0.0.0/0`` is not printed at all;
* options come out in the order ``[!] -s, [!] -d, -i, -o, -p, -m ..., -j``, whatever order they went in.

Failures raise :class:`RedirectError` (a command that cannot be run or does not finish: host.py's
:class:`CommandError`; both are :class:`HostError`); nothing here calls ``fail_json``.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field

from ansible_collections.vmesh.mesh.plugins.module_utils import host
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError

# --- names and defaults -----------------------------------------------------------------------------------------

INBOUND = "VMESH_INBOUND"
IN_REDIRECT = "VMESH_IN_REDIRECT"
OUTBOUND = "VMESH_OUTPUT"
REDIRECT = "VMESH_REDIRECT"
#: Our chains, in the order they are declared and shown.
CHAINS = (INBOUND, IN_REDIRECT, OUTBOUND, REDIRECT)

#: The jumps into our chains: (built-in chain, rule in canonical form). Each must be rule 1 of its chain.
JUMPS = (
    ("PREROUTING", "-p tcp -j " + INBOUND),
    ("OUTPUT", "-p tcp -j " + OUTBOUND),
)

#: IPv6 (ip6tables, filter table): TCP that would go around the sidecar is refused.
INBOUND_GUARD = "VMESH_INBOUND_GUARD"
OUTBOUND_GUARD = "VMESH_OUTPUT_GUARD"
CHAINS6 = (INBOUND_GUARD, OUTBOUND_GUARD)
JUMPS6 = (
    ("INPUT", "-p tcp -j " + INBOUND_GUARD),
    ("OUTPUT", "-p tcp -j " + OUTBOUND_GUARD),
)
REJECT = "-p tcp -j REJECT --reject-with tcp-reset"

ALL = "*"
DEFAULT_PROXY_UID = 1337
DEFAULT_INBOUND_CAPTURE_PORT = 15006
DEFAULT_OUTBOUND_CAPTURE_PORT = 15001
#: SSH, Envoy admin, outbound and inbound capture, health, Prometheus.
DEFAULT_EXCLUDE_INBOUND_PORTS = (22, 15000, 15001, 15006, 15021, 15090)
DEFAULT_SSH_PORT = 22
#: Envoy's inbound passthrough connections come from this address (Istio's convention).
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6/32"

#: The keys of the JSON config file the boot unit re-applies; the module's options of the same names.
CONFIG_KEYS = (
    "proxy_uid",
    "proxy_gid",
    "inbound_capture_port",
    "outbound_capture_port",
    "exclude_inbound_ports",
    "include_inbound_ports",
    "exclude_outbound_ports",
    "exclude_outbound_cidrs",
    "exclude_outbound_endpoints",
    "include_outbound_cidrs",
    "ssh_port",
)

# Built-in chains first, in the kernel's order, when showing jumps.
_BUILTIN_ORDER = {"PREROUTING": 0, "INPUT": 1, "FORWARD": 2, "OUTPUT": 3, "POSTROUTING": 4}
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_COMMAND_TIMEOUT = 60


class RedirectError(HostError):
    """The redirect cannot be computed or applied; the message says why, naming the field or command."""


# --- parameters ---------------------------------------------------------------------------------------------------


def _port(value, where):
    if isinstance(value, bool):
        raise RedirectError("%s: %r is not a port number" % (where, value))
    try:
        port = int(str(value).strip())
    except ValueError:
        raise RedirectError("%s: %r is not a port number" % (where, value)) from None
    if not 1 <= port <= 65535:
        raise RedirectError("%s: %d is not a port number (1-65535)" % (where, port))
    return port


def _id(value, where):
    if isinstance(value, bool):
        raise RedirectError("%s: %r is not a numeric id" % (where, value))
    try:
        num = int(str(value).strip())
    except ValueError:
        raise RedirectError("%s: %r is not a numeric id" % (where, value)) from None
    if not 0 <= num <= 0xFFFFFFFE:
        raise RedirectError("%s: %d is out of range" % (where, num))
    return num


def _cidr(value, where):
    try:
        net = ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise RedirectError("%s: %r is not an IPv4 address or CIDR" % (where, value)) from None
    if net.version != 4:
        raise RedirectError("%s: %s is IPv6; only IPv4 is redirected (iptables, not ip6tables)" % (where, value))
    # Host bits cleared, prefix always present: the form iptables-save prints.
    return str(net)


def _endpoint(value, where):
    """``"IP:PORT"`` (IPv4) -> ``("IP/32", PORT)``."""
    text = str(value).strip()
    address, sep, port = text.rpartition(":")
    if not sep:
        raise RedirectError("%s: %r is not ADDRESS:PORT" % (where, value))
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise RedirectError("%s: %r is not an IPv4 ADDRESS:PORT" % (where, value)) from None
    return ("%s/32" % ip, _port(port, where))


def _endpoints(value, where):
    return _unique(_endpoint(item, "%s[%d]" % (where, i)) for i, item in enumerate(_as_list(value, where)))


def _as_list(value, where):
    """A list from a list, or from a comma-separated string (what `key=a,b` on an ad-hoc command line gives)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [item for item in (part.strip() for part in value.split(",")) if item]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise RedirectError("%s: expected a list, got %r" % (where, value))


def _unique(items):
    seen = set()
    return tuple(item for item in items if not (item in seen or seen.add(item)))


def _ports(value, where):
    return _unique(_port(item, "%s[%d]" % (where, i)) for i, item in enumerate(_as_list(value, where)))


def _cidrs(value, where):
    return _unique(_cidr(item, "%s[%d]" % (where, i)) for i, item in enumerate(_as_list(value, where)))


def _all_or(value, parse, where):
    """``"*"`` (everything) or a list parsed item by item."""
    if value is None or value == ALL or (isinstance(value, (list, tuple)) and list(value) == [ALL]):
        return ALL
    return parse(value, where)


@dataclass(frozen=True)
class RedirectConfig:
    """What to redirect, normalised and validated. Build it with :meth:`from_params`."""

    proxy_uid: int = DEFAULT_PROXY_UID
    proxy_gid: int = DEFAULT_PROXY_UID
    inbound_capture_port: int = DEFAULT_INBOUND_CAPTURE_PORT
    outbound_capture_port: int = DEFAULT_OUTBOUND_CAPTURE_PORT
    exclude_inbound_ports: tuple = DEFAULT_EXCLUDE_INBOUND_PORTS
    include_inbound_ports: object = ALL  # "*" or a tuple of ports
    exclude_outbound_ports: tuple = ()
    exclude_outbound_cidrs: tuple = ()
    exclude_outbound_endpoints: tuple = ()  # ((CIDR /32, port), ...)
    include_outbound_cidrs: object = ALL  # "*" or a tuple of CIDRs
    ssh_port: int = DEFAULT_SSH_PORT

    @classmethod
    def from_params(cls, params):
        """Validate a dict of the module's options (or the JSON config); missing or None means the default.

        Refuses a configuration that would redirect inbound SSH: the VM would be cut off from Ansible.
        """
        if not isinstance(params, dict):
            raise RedirectError("expected a mapping of redirect parameters, got %r" % (params,))
        unknown = sorted(set(params) - set(CONFIG_KEYS))
        if unknown:
            raise RedirectError("unknown parameters: %s" % ", ".join(unknown))

        def get(key, default):
            value = params.get(key)
            return default if value is None else value

        uid = _id(get("proxy_uid", DEFAULT_PROXY_UID), "proxy_uid")
        config = cls(
            proxy_uid=uid,
            proxy_gid=_id(get("proxy_gid", uid), "proxy_gid"),
            inbound_capture_port=_port(get("inbound_capture_port", DEFAULT_INBOUND_CAPTURE_PORT),
                                       "inbound_capture_port"),
            outbound_capture_port=_port(get("outbound_capture_port", DEFAULT_OUTBOUND_CAPTURE_PORT),
                                        "outbound_capture_port"),
            exclude_inbound_ports=_ports(get("exclude_inbound_ports", DEFAULT_EXCLUDE_INBOUND_PORTS),
                                         "exclude_inbound_ports"),
            include_inbound_ports=_all_or(params.get("include_inbound_ports"), _ports, "include_inbound_ports"),
            exclude_outbound_ports=_ports(get("exclude_outbound_ports", ()), "exclude_outbound_ports"),
            exclude_outbound_cidrs=_cidrs(get("exclude_outbound_cidrs", ()), "exclude_outbound_cidrs"),
            exclude_outbound_endpoints=_endpoints(get("exclude_outbound_endpoints", ()),
                                                  "exclude_outbound_endpoints"),
            include_outbound_cidrs=_all_or(params.get("include_outbound_cidrs"), _cidrs, "include_outbound_cidrs"),
            ssh_port=_port(get("ssh_port", DEFAULT_SSH_PORT), "ssh_port"),
        )
        config._check_ssh_not_captured()
        return config

    def _check_ssh_not_captured(self):
        # Exclusions RETURN before any capture rule, so an excluded port is safe whatever is included.
        if self.ssh_port in self.exclude_inbound_ports:
            return
        if self.include_inbound_ports == ALL:
            raise RedirectError(
                "exclude_inbound_ports: SSH port %d is not excluded while include_inbound_ports is '*'; inbound SSH "
                "would be redirected to the proxy and Ansible locked out. Add %d to exclude_inbound_ports "
                "(or set ssh_port if SSH listens elsewhere)" % (self.ssh_port, self.ssh_port))
        if self.ssh_port in self.include_inbound_ports:
            raise RedirectError(
                "include_inbound_ports: SSH port %d is included and not excluded; inbound SSH would be redirected "
                "to the proxy and Ansible locked out" % self.ssh_port)

    def to_dict(self):
        """Plain JSON-able values, the same keys as the module's options."""
        out = {}
        for key in CONFIG_KEYS:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        out["exclude_outbound_endpoints"] = ["%s:%d" % (cidr[:-3], port)
                                             for cidr, port in self.exclude_outbound_endpoints]
        return out

    def to_json(self):
        """The config file's bytes-to-be: deterministic (sorted keys), so an unchanged config is not rewritten."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def load_config(path):
    """Read and validate the JSON config file the module wrote."""
    try:
        with open(path, encoding="utf-8") as handle:
            params = json.load(handle)
    except OSError as exc:
        raise RedirectError("%s: %s" % (path, exc.strerror or exc)) from None
    except ValueError as exc:
        raise RedirectError("%s: not valid JSON: %s" % (path, exc)) from None
    try:
        return RedirectConfig.from_params(params)
    except RedirectError as exc:
        raise RedirectError("%s: %s" % (path, exc)) from None


# --- desired and current state ------------------------------------------------------------------------------------


@dataclass
class Footprint:
    """Everything of ours in the nat table.

    ``chains``: our chains that exist, name -> rule specs (the text after ``-A NAME``), in CHAINS order.
    ``jumps``: rules outside our chains that jump (or goto) into one of them, as (chain, 1-based position, spec).

    Present means exactly :func:`desired_footprint`; absent means an empty footprint. Equality is the whole test.
    """

    chains: dict = field(default_factory=dict)
    jumps: list = field(default_factory=list)

    def lines(self):
        """Readable, iptables-like lines: ``-N`` per chain, ``-I CHAIN POS`` per jump, ``-A`` per rule."""
        out = ["-N %s" % name for name in self.chains]
        out += ["-I %s %d %s" % jump for jump in self.jumps]
        for name, rules in self.chains.items():
            out += ["-A %s %s" % (name, rule) for rule in rules]
        return out

    def text(self):
        lines = self.lines()
        return "\n".join(lines) + "\n" if lines else ""


# Connections that were open before the rules existed must not be redirected in mid-stream: the kernel
# NAT-evaluates such a connection on its next packet. When conntrack already tracked it, it is ESTABLISHED;
# when conntrack starts with our rules (a fresh VM), its next packet looks NEW - for the SSH session applying
# the rules that is sshd's reply, so replies from the excluded inbound ports are never captured either.
KEEP_ESTABLISHED = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"


def _inbound_rules(config):
    rules = [KEEP_ESTABLISHED]
    rules += ["-p tcp -m tcp --dport %d -j RETURN" % port for port in config.exclude_inbound_ports]
    if config.include_inbound_ports == ALL:
        rules.append("-p tcp -j " + IN_REDIRECT)
    else:
        rules += ["-p tcp -m tcp --dport %d -j %s" % (port, IN_REDIRECT) for port in config.include_inbound_ports]
    return rules


def _dest(cidr):
    # iptables-save leaves out a match on 0.0.0.0/0.
    return "" if cidr.endswith("/0") else "-d %s " % cidr


def _reply_from(port):
    """RETURN for packets from an excluded inbound port that open no connection (not a SYN): replies."""
    return "-p tcp -m tcp --sport %d ! --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN" % port


def _output_rules(config):
    uid, gid = config.proxy_uid, config.proxy_gid
    rules = [
        KEEP_ESTABLISHED,
        # Envoy's inbound passthrough connections to the workload come from 127.0.0.6.
        "-s %s -o lo -j RETURN" % INBOUND_PASSTHROUGH_SOURCE,
        # The proxy calling its own workload's (non-loopback) address: hairpin into inbound handling.
        "! -d 127.0.0.1/32 -o lo -m owner --uid-owner %d -j %s" % (uid, IN_REDIRECT),
        "-o lo -m owner ! --uid-owner %d -j RETURN" % uid,
        "-m owner --uid-owner %d -j RETURN" % uid,
        "-o lo -m owner ! --gid-owner %d -j RETURN" % gid,
        "-m owner --gid-owner %d -j RETURN" % gid,
        "-d 127.0.0.1/32 -j RETURN",
    ]
    rules += [_reply_from(port) for port in config.exclude_inbound_ports]
    rules += ["-p tcp -m tcp --dport %d -j RETURN" % port for port in config.exclude_outbound_ports]
    rules += ["%s-j RETURN" % _dest(cidr) for cidr in config.exclude_outbound_cidrs]
    rules += ["-d %s -p tcp -m tcp --dport %d -j RETURN" % endpoint for endpoint in config.exclude_outbound_endpoints]
    if config.include_outbound_cidrs == ALL:
        rules.append("-j " + REDIRECT)
    else:
        rules += ["%s-j %s" % (_dest(cidr), REDIRECT) for cidr in config.include_outbound_cidrs]
    return rules


def desired_footprint(config):
    """The footprint for ``config``; None means absent (no chains, no jumps)."""
    if config is None:
        return Footprint()
    chains = {
        INBOUND: _inbound_rules(config),
        IN_REDIRECT: ["-p tcp -j REDIRECT --to-ports %d" % config.inbound_capture_port],
        OUTBOUND: _output_rules(config),
        REDIRECT: ["-p tcp -j REDIRECT --to-ports %d" % config.outbound_capture_port],
    }
    return Footprint(chains=chains, jumps=[(chain, 1, spec) for chain, spec in JUMPS])


def _guard_inbound_rules(config):
    rules = ["-i lo -j RETURN", KEEP_ESTABLISHED]
    rules += ["-p tcp -m tcp --dport %d -j RETURN" % port for port in config.exclude_inbound_ports]
    if config.include_inbound_ports == ALL:
        rules.append(REJECT)
    else:
        rules += ["-p tcp -m tcp --dport %d -j REJECT --reject-with tcp-reset" % port
                  for port in config.include_inbound_ports]
    return rules


def _guard_output_rules(config):
    rules = [
        "-o lo -j RETURN",
        KEEP_ESTABLISHED,
        "-m owner --uid-owner %d -j RETURN" % config.proxy_uid,
        "-m owner --gid-owner %d -j RETURN" % config.proxy_gid,
    ]
    rules += [_reply_from(port) for port in config.exclude_inbound_ports]
    rules += ["-p tcp -m tcp --dport %d -j RETURN" % port for port in config.exclude_outbound_ports]
    # Only some IPv4 destinations captured: IPv6 is not among them, so it is left alone as they are.
    if config.include_outbound_cidrs == ALL:
        rules.append(REJECT)
    return rules


def desired_footprint6(config):
    """The IPv6 guard for ``config`` (ip6tables filter table); None means absent."""
    if config is None:
        return Footprint()
    chains = {INBOUND_GUARD: _guard_inbound_rules(config), OUTBOUND_GUARD: _guard_output_rules(config)}
    return Footprint(chains=chains, jumps=[(chain, 1, spec) for chain, spec in JUMPS6])


@dataclass(frozen=True)
class Family:
    """One table vmesh keeps rules in: the IPv4 capture (nat) or the IPv6 guard (filter)."""

    name: str
    table: str
    chains: tuple
    save: str
    restore: str
    desired: object  # config (or None) -> Footprint


NAT4 = Family("iptables -t nat", "nat", CHAINS, "iptables-save", "iptables-restore", desired_footprint)
FILTER6 = Family("ip6tables -t filter", "filter", CHAINS6, "ip6tables-save", "ip6tables-restore", desired_footprint6)


def ipv6_enabled():
    """False on a kernel booted without IPv6 (ipv6.disable=1): nothing to guard, and ip6tables cannot work."""
    return os.path.exists("/proc/net/if_inet6")


@dataclass
class NatTable:
    """One table as iptables-save printed it: chains in order, and each chain's rule specs in order."""

    chains: list = field(default_factory=list)
    rules: dict = field(default_factory=dict)


def parse_save(text, name="nat"):
    """Parse ``iptables-save -t NAME`` output. Comments, counters and other tables are ignored."""
    table = NatTable()
    in_nat = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") and "incompatible" in line:
            # iptables-nft cannot show a table that holds native nft rules; changing it blind is not safe.
            raise RedirectError("iptables-save: %s" % line.lstrip("# "))
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_nat = line == "*" + name
            continue
        if not in_nat:
            continue
        if line == "COMMIT":
            in_nat = False
        elif line.startswith(":"):
            name = line[1:].split()[0]
            table.chains.append(name)
            table.rules.setdefault(name, [])
        elif line.startswith("-A "):
            parts = line.split(None, 2)
            if len(parts) < 3:
                raise RedirectError("iptables-save line %d: cannot parse %r" % (number, raw))
            table.rules.setdefault(parts[1], []).append(parts[2])
        else:
            raise RedirectError("iptables-save line %d: cannot parse %r" % (number, raw))
    return table


def _target(spec):
    """The chain a rule jumps (-j) or goes (-g) to, or None."""
    try:
        tokens = shlex.split(spec)
    except ValueError:
        tokens = spec.split()
    for flag, value in zip(tokens, tokens[1:]):
        if flag in ("-j", "--jump", "-g", "--goto"):
            return value
    return None


def current_footprint(table, chains=CHAINS):
    """Our part of a parsed table (``chains``: our chain names in it)."""
    ours = chains
    chains = {name: list(table.rules.get(name, [])) for name in ours if name in table.rules}
    jumps = []
    for chain in table.rules:
        if chain in ours:
            continue
        for position, spec in enumerate(table.rules[chain], 1):
            if _target(spec) in ours:
                jumps.append((chain, position, spec))
    jumps.sort(key=lambda jump: (_BUILTIN_ORDER.get(jump[0], len(_BUILTIN_ORDER)), jump[0], jump[1]))
    return Footprint(chains=chains, jumps=jumps)


# --- the transaction ----------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What differs and the iptables-restore input that fixes it (None when nothing differs)."""

    changed: bool
    before: Footprint
    after: Footprint
    script: str = None
    family: Family = NAT4

    @property
    def diff(self):
        header = "%s (vmesh rules)" % self.family.name
        return {"before_header": header, "after_header": header, "before": self.before.text(),
                "after": self.after.text()}


def plan(table, config, family=NAT4):
    """Compare the table with ``config`` (None: absent) and build ONE ``iptables-restore --noflush`` script.

    Only our chains and the rules that jump into them are touched; every other rule stays as it is.
    """
    before = current_footprint(table, family.chains)
    after = family.desired(config)
    if before == after:
        return Plan(changed=False, before=before, after=after, family=family)

    declare, delete, insert, append, remove = [], [], [], [], []
    # Jumps: a chain whose jumps into our chains are not exactly the desired ones loses all of them (by spec;
    # -D removes the first match, so duplicates go one line each) and gets the desired one back as rule 1.
    chains_with_jumps = [chain for chain, _, _ in before.jumps] + [chain for chain, _, _ in after.jumps]
    for chain in _unique(chains_with_jumps):
        have = [jump for jump in before.jumps if jump[0] == chain]
        want = [jump for jump in after.jumps if jump[0] == chain]
        if have != want:
            delete += ["-D %s %s" % (chain, spec) for _, _, spec in have]
            insert += ["-I %s %d %s" % jump for jump in want]
    # Chains: ":NAME - [0:0]" under --noflush creates the chain, or flushes it if it exists.
    for name in family.chains:
        if name in after.chains:
            if before.chains.get(name) != after.chains[name]:
                declare.append(":%s - [0:0]" % name)
                append += ["-A %s %s" % (name, rule) for rule in after.chains[name]]
        elif name in before.chains:
            # Flush all our chains first, then delete them: they reference each other.
            declare.append(":%s - [0:0]" % name)
            remove.append("-X %s" % name)
    script = "\n".join(["*" + family.table] + declare + delete + insert + append + remove + ["COMMIT"]) + "\n"
    return Plan(changed=True, before=before, after=after, script=script, family=family)


# --- running iptables ---------------------------------------------------------------------------------------------


def run_subprocess(argv, data=None):
    """Default runner: (rc, stdout, stderr) of ``argv`` with LC_ALL=C, stdin ``data``: host.py's. Raises
    :class:`host.CommandError`."""
    return host.run(argv, data, timeout=_COMMAND_TIMEOUT)


def find_binary(name):
    path = os.environ.get("PATH", os.defpath).split(os.pathsep) + list(_SBIN_DIRS)
    found = shutil.which(name, path=os.pathsep.join(path))
    if not found:
        raise RedirectError("%s not found (install the iptables package)" % name)
    return found


class Iptables:
    """Reads and writes one family's table. ``run(argv, data)`` returns (rc, stdout, stderr); the Ansible module
    passes one built on ``module.run_command`` (with LC_ALL=C), the command line uses :func:`run_subprocess`."""

    def __init__(self, run=None, save=None, restore=None, family=NAT4):
        self.family = family
        self._run = run or run_subprocess
        self._save = save or find_binary(family.save)
        self._restore = restore or find_binary(family.restore)

    def _check(self, argv, data=None):
        rc, out, err = self._run(argv, data)
        if rc != 0:
            message = (err or out or "").strip() or "no output"
            detail = "\n--- input was:\n" + data if data else ""
            raise RedirectError("%s failed (rc=%d): %s%s" % (" ".join(argv), rc, message, detail))
        return out

    def read(self):
        return parse_save(self._check([self._save, "-t", self.family.table]), self.family.table)

    def restore(self, script):
        # One transaction for the whole change; --noflush keeps every other rule of the table.
        self._check([self._restore, "--noflush", "--wait=10"], script)


@dataclass
class Reconciled:
    """The plans of both families (the IPv6 one is None where the kernel has no IPv6)."""

    nat: Plan
    guard6: Plan = None

    @property
    def plans(self):
        return [p for p in (self.nat, self.guard6) if p is not None]

    @property
    def changed(self):
        return any(p.changed for p in self.plans)

    @property
    def diff(self):
        if self.guard6 is None:
            return self.nat.diff
        header = "vmesh rules (%s)" % ", ".join(p.family.name for p in self.plans)

        def sections(side):
            # The IPv4 capture as before; the IPv6 guard after it, under a header, when there is any.
            text = getattr(self.nat, side).text()
            six = getattr(self.guard6, side).text()
            return text + ("# %s\n%s" % (self.guard6.family.name, six) if six else "")

        return {"before_header": header, "after_header": header, "before": sections("before"),
                "after": sections("after")}


def _reconcile_one(config, iptables, check_mode):
    family = iptables.family
    result = plan(iptables.read(), config, family)
    if result.changed and not check_mode:
        iptables.restore(result.script)
        now = current_footprint(iptables.read(), family.chains)
        if now != result.after:
            diff = "".join(difflib.unified_diff(result.after.text().splitlines(True), now.text().splitlines(True),
                                                "desired", "%s after applying" % family.save))
            raise RedirectError("%s still differs from the desired rules after %s (another tool changed it, or "
                                "this iptables prints rules in another form):\n%s" % (family.name, family.restore, diff))
    return result


def reconcile(config, iptables=None, check_mode=False, iptables6=None):
    """Make the IPv4 nat table and the IPv6 filter table match ``config`` (None: remove every trace).

    Each family is one transaction; the IPv4 capture goes first. In check mode nothing is run but the
    ``-save`` commands. After applying, a table is read again: if it still differs (an iptables that prints
    rules in another canonical form), that is an error, not a silent loop of ``changed``. Without IPv6 in the
    kernel (and no ``iptables6`` given) there is no IPv6 side.
    """
    nat = _reconcile_one(config, iptables or Iptables(), check_mode)
    if iptables6 is None and not ipv6_enabled():
        return Reconciled(nat)
    return Reconciled(nat, _reconcile_one(config, iptables6 or Iptables(family=FILTER6), check_mode))


# --- command line for the boot-time unit --------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="vmesh_iptables.py",
        description="Apply, remove or show vmesh's Istio-style NAT redirect to the sidecar (IPv4 nat table) and "
                    "its IPv6 guard (ip6tables filter table).")
    sub = parser.add_subparsers(dest="command", required=True)
    apply_cmd = sub.add_parser("apply", help="make the rules match the JSON config the vmesh.mesh.redirect module wrote")
    apply_cmd.add_argument("--config", required=True, help="JSON file, e.g. /etc/vmesh/redirect.json")
    sub.add_parser("remove", help="remove every vmesh chain and every jump into them")
    show_cmd = sub.add_parser("show", help="print the current vmesh rules; with --config, the diff to the desired")
    show_cmd.add_argument("--config", help="JSON file to compare with")
    args = parser.parse_args(argv)

    try:
        if args.command == "show":
            families = [NAT4] + ([FILTER6] if ipv6_enabled() else [])
            for family in families:
                table = Iptables(family=family).read()
                sys.stdout.write("# %s\n" % family.name)
                sys.stdout.write(current_footprint(table, family.chains).text() or "# no vmesh rules\n")
                if args.config:
                    result = plan(table, load_config(args.config), family)
                    if result.changed:
                        sys.stdout.write("".join(difflib.unified_diff(
                            result.before.text().splitlines(True), result.after.text().splitlines(True),
                            "current", args.config)))
                    else:
                        sys.stdout.write("# in sync with %s\n" % args.config)
            return 0
        config = load_config(args.config) if args.command == "apply" else None
        result = reconcile(config)
        print("changed" if result.changed else "ok")
        return 0
    except HostError as exc:
        sys.stderr.write("vmesh_iptables: %s\n" % exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
