"""Test-only filters for the molecule scenario."""

import re


def vmesh_test_normalize_iptables(text):
    """iptables-save output without its timestamp comments and packet counters."""
    lines = [re.sub(r"\s*\[\d+:\d+\]$", "", line) for line in str(text).splitlines() if not line.startswith("#")]
    return "\n".join(lines)


class FilterModule:
    def filters(self):
        return {"vmesh_test_normalize_iptables": vmesh_test_normalize_iptables}
