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


def vmesh_test_stage_answers(log_text, state):
    """What the client saw in each judged stage of a rollout: the lines of a ``vmesh_sample.py --log`` file
    ("time answer status") that fall inside a stage's measured window, per stage in the state's history:
    ``[{stage, weight, requests, answers: {version: n}, statuses: {status: n}, canary_share, deviation}]``
    (the share in percent, and how far it is from the stage's weight, in points)."""
    lines = []
    for line in str(log_text).splitlines():
        parts = line.split()
        if len(parts) == 3:
            lines.append((float(parts[0]), parts[1], parts[2]))
    out = []
    for entry in state["history"]:
        started, ended = float(entry["started"]), float(entry["ended"])
        inside = [(answer, status) for t, answer, status in lines if started <= t <= ended]
        answers, statuses = {}, {}
        for answer, status in inside:
            answers[answer] = answers.get(answer, 0) + 1
            statuses[status] = statuses.get(status, 0) + 1
        share = 100.0 * answers.get(state["canary"], 0) / len(inside) if inside else None
        out.append({"stage": entry["stage"], "weight": entry["weight"], "requests": len(inside), "answers": answers,
                    "statuses": statuses, "canary_share": share,
                    "deviation": None if share is None else abs(share - entry["weight"])})
    return out


def vmesh_test_where(state):
    """Where a rollout stands, as one string to wait for: "CANARY STATUS STAGE-INDEX", plus " in force" once the
    stage's routing is pushed to every host."""
    return f"{state.get('canary')} {state.get('status')} {state.get('stage')}{' in force' if state.get('since') else ''}"


class FilterModule:
    def filters(self):
        return {"vmesh_test_normalize_iptables": vmesh_test_normalize_iptables,
                "vmesh_test_stage_answers": vmesh_test_stage_answers, "vmesh_test_where": vmesh_test_where}
