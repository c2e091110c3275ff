# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)
"""Istio-style NAT redirect to the vmesh sidecar: desired rules, current rules, one iptables-restore transaction.

This file runs on the VM with plain ``python3`` and imports the standard library only. Two users:

* the ``vmesh_redirect`` Ansible module (``from ansible.module_utils.vmesh_iptables import ...``);
* the boot-time systemd unit, through the small command line at the bottom::

      python3 vmesh_iptables.py apply --config /etc/vmesh/redirect.json
      python3 vmesh_iptables.py remove
      python3 vmesh_iptables.py show [--config /etc/vmesh/redirect.json]

Layout in the ``nat`` table (istio-iptables' layout with our chain names)::

    PREROUTING -p tcp -j VMESH_INBOUND        first rule of PREROUTING, exactly once
      VMESH_INBOUND      RETURN for excluded ports, the rest (or the included ports) -> VMESH_IN_REDIRECT
      VMESH_IN_REDIRECT  REDIRECT --to-ports 15006
    OUTPUT -p tcp -j VMESH_OUTPUT             first rule of OUTPUT, exactly once
      VMESH_OUTPUT       RETURN for Envoy's passthrough source, the proxy's uid/gid, loopback and exclusions;
                         the proxy calling its own workload's address on lo -> VMESH_IN_REDIRECT;
                         the rest (or the included CIDRs) -> VMESH_REDIRECT
      VMESH_REDIRECT     REDIRECT --to-ports 15001

Desired rules are written in the canonical form ``iptables-save`` prints them in, so that current and desired
state compare as text. Checked against iptables 1.8.9 with the nf_tables backend (the legacy backend was not
tested; if it printed a rule differently, :func:`reconcile` reports that as an error after applying):

* ``-p tcp --dport 22`` is printed ``-p tcp -m tcp --dport 22`` (the implicit tcp match is named);
* addresses get their prefix and lose host bits: ``10.1.2.3`` -> ``10.1.2.3/32``, ``10.1.2.3/16`` -> ``10.1.0.0/16``;
* ``-d 0.0.0.0/0`` is not printed at all;
* options come out in the order ``[!] -s, [!] -d, -i, -o, -p, -m ..., -j``, whatever order they went in.

Failures raise :class:`RedirectError`; nothing here calls ``fail_json``.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

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
    "include_outbound_cidrs",
    "ssh_port",
)

# Built-in nat chains first, in the kernel's order, when showing jumps.
_BUILTIN_ORDER = {"PREROUTING": 0, "INPUT": 1, "OUTPUT": 2, "POSTROUTING": 3}
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_COMMAND_TIMEOUT = 60


class RedirectError(Exception):
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
    rules += ["-p tcp -m tcp --sport %d -j RETURN" % port for port in config.exclude_inbound_ports]
    rules += ["-p tcp -m tcp --dport %d -j RETURN" % port for port in config.exclude_outbound_ports]
    rules += ["%s-j RETURN" % _dest(cidr) for cidr in config.exclude_outbound_cidrs]
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


@dataclass
class NatTable:
    """The nat table as iptables-save printed it: chains in order, and each chain's rule specs in order."""

    chains: list = field(default_factory=list)
    rules: dict = field(default_factory=dict)


def parse_save(text):
    """Parse ``iptables-save -t nat`` output. Comments, counters and other tables are ignored."""
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
            in_nat = line == "*nat"
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


def current_footprint(table):
    """Our part of a parsed nat table."""
    chains = {name: list(table.rules.get(name, [])) for name in CHAINS if name in table.rules}
    jumps = []
    for chain in table.rules:
        if chain in CHAINS:
            continue
        for position, spec in enumerate(table.rules[chain], 1):
            if _target(spec) in CHAINS:
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

    @property
    def diff(self):
        return {
            "before_header": "iptables -t nat (vmesh rules)",
            "after_header": "iptables -t nat (vmesh rules)",
            "before": self.before.text(),
            "after": self.after.text(),
        }


def plan(table, config):
    """Compare the table with ``config`` (None: absent) and build ONE ``iptables-restore --noflush`` script.

    Only our chains and the rules that jump into them are touched; every other rule stays as it is.
    """
    before = current_footprint(table)
    after = desired_footprint(config)
    if before == after:
        return Plan(changed=False, before=before, after=after)

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
    for name in CHAINS:
        if name in after.chains:
            if before.chains.get(name) != after.chains[name]:
                declare.append(":%s - [0:0]" % name)
                append += ["-A %s %s" % (name, rule) for rule in after.chains[name]]
        elif name in before.chains:
            # Flush all our chains first, then delete them: they reference each other.
            declare.append(":%s - [0:0]" % name)
            remove.append("-X %s" % name)
    script = "\n".join(["*nat"] + declare + delete + insert + append + remove + ["COMMIT"]) + "\n"
    return Plan(changed=True, before=before, after=after, script=script)


# --- running iptables ---------------------------------------------------------------------------------------------


def run_subprocess(argv, data=None):
    """Default runner: (rc, stdout, stderr) of ``argv`` with LC_ALL=C, stdin ``data``."""
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, env=env, check=False,
                              timeout=_COMMAND_TIMEOUT)
    except OSError as exc:
        raise RedirectError("cannot run %s: %s" % (argv[0], exc.strerror or exc)) from None
    except subprocess.TimeoutExpired:
        raise RedirectError("%s did not finish within %d s" % (" ".join(argv), _COMMAND_TIMEOUT)) from None
    return proc.returncode, proc.stdout, proc.stderr


def find_binary(name):
    path = os.environ.get("PATH", os.defpath).split(os.pathsep) + list(_SBIN_DIRS)
    found = shutil.which(name, path=os.pathsep.join(path))
    if not found:
        raise RedirectError("%s not found (install the iptables package)" % name)
    return found


class Iptables:
    """Reads and writes the nat table. ``run(argv, data)`` returns (rc, stdout, stderr); the Ansible module
    passes one built on ``module.run_command`` (with LC_ALL=C), the command line uses :func:`run_subprocess`."""

    def __init__(self, run=None, save=None, restore=None):
        self._run = run or run_subprocess
        self._save = save or find_binary("iptables-save")
        self._restore = restore or find_binary("iptables-restore")

    def _check(self, argv, data=None):
        rc, out, err = self._run(argv, data)
        if rc != 0:
            message = (err or out or "").strip() or "no output"
            detail = "\n--- input was:\n" + data if data else ""
            raise RedirectError("%s failed (rc=%d): %s%s" % (" ".join(argv), rc, message, detail))
        return out

    def read(self):
        return parse_save(self._check([self._save, "-t", "nat"]))

    def restore(self, script):
        # One transaction for the whole change; --noflush keeps every other rule of the table.
        self._check([self._restore, "--noflush", "--wait=10"], script)


def reconcile(config, iptables=None, check_mode=False):
    """Make the nat table match ``config`` (None: remove every trace). Returns the :class:`Plan`.

    In check mode nothing is run but ``iptables-save``. After applying, the table is read again: if it still
    differs (an iptables that prints rules in another canonical form), that is an error, not a silent loop of
    ``changed``.
    """
    iptables = iptables or Iptables()
    result = plan(iptables.read(), config)
    if result.changed and not check_mode:
        iptables.restore(result.script)
        now = current_footprint(iptables.read())
        if now != result.after:
            diff = "".join(difflib.unified_diff(result.after.text().splitlines(True), now.text().splitlines(True),
                                                "desired", "iptables-save after applying"))
            raise RedirectError("the nat table still differs from the desired rules after iptables-restore "
                                "(another tool changed it, or this iptables prints rules in another form):\n" + diff)
    return result


# --- command line for the boot-time unit --------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="vmesh_iptables.py",
        description="Apply, remove or show vmesh's Istio-style NAT redirect to the sidecar (nat table).")
    sub = parser.add_subparsers(dest="command", required=True)
    apply_cmd = sub.add_parser("apply", help="make the rules match the JSON config the vmesh_redirect module wrote")
    apply_cmd.add_argument("--config", required=True, help="JSON file, e.g. /etc/vmesh/redirect.json")
    sub.add_parser("remove", help="remove every vmesh chain and every jump into them")
    show_cmd = sub.add_parser("show", help="print the current vmesh rules; with --config, the diff to the desired")
    show_cmd.add_argument("--config", help="JSON file to compare with")
    args = parser.parse_args(argv)

    try:
        if args.command == "show":
            iptables = Iptables()
            table = iptables.read()
            current = current_footprint(table)
            sys.stdout.write(current.text() or "# no vmesh rules\n")
            if args.config:
                result = plan(table, load_config(args.config))
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
    except RedirectError as exc:
        sys.stderr.write("vmesh_iptables: %s\n" % exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
