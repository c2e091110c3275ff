"""Test-only filters for the molecule scenario."""

import re

BUILTIN_POLICY = re.compile(r"^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT$")


def vmesh_test_normalize_iptables(text):
    """iptables-save output without timestamps and counters, and without tables that hold nothing.

    iptables cannot delete a table: once the nat table was created (the redirect), an empty one with its
    built-in chains on ACCEPT stays after uninstall. It holds no rule and behaves as no table at all, so it
    counts as absent here; any leftover rule, chain or policy still makes the comparison fail.
    """
    tables, current = [], None
    for line in str(text).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        line = re.sub(r"\s*\[\d+:\d+\]$", "", line)
        if line.startswith("*"):
            current = [line]
            tables.append(current)
        elif current is not None:
            current.append(line)
    kept = []
    for table in tables:
        body = [line for line in table[1:] if line != "COMMIT"]
        if all(BUILTIN_POLICY.match(line) for line in body):
            continue
        kept.append("\n".join(table))
    return "\n".join(kept)


class FilterModule:
    def filters(self):
        return {"vmesh_test_normalize_iptables": vmesh_test_normalize_iptables}
