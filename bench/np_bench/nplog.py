"""What a nodepass process's log says: CHECK_POINT pool figures and anything else."""

from __future__ import annotations

import re
from typing import Any

CHECKPOINT_RE = re.compile(r"CHECK_POINT\|MODE=(\d+)\|PING=(\d+)ms\|POOL=(\d+)\|TCPS=(\d+)")


def scan_nodepass_log(text: str) -> dict[str, Any]:
    """CHECK_POINT pool sizes and non-event lines (warnings, errors, tracebacks)."""
    pools, tcps = [], []
    other: list[str] = []
    for line in text.splitlines():
        m = CHECKPOINT_RE.search(line)
        if m:
            pools.append(int(m.group(3)))
            tcps.append(int(m.group(4)))
        elif line.strip() and "Init log level" not in line:
            other.append(line.strip())
    return {
        "checkpoints": len(pools),
        "pool_min": min(pools) if pools else None,
        "pool_max": max(pools) if pools else None,
        "tcps_max": max(tcps) if tcps else None,
        "other_lines": len(other),
        "other_sample": other[:8],
    }


def log_notes(system: str, run: dict[str, Any]) -> list[str]:
    """One note per scanned log of ``run`` (``run["logs"]``: role -> scan_nodepass_log)."""
    out = []
    for role, lg in (run.get("logs") or {}).items():
        side = "server" if role == "entry" else "client"
        line = (
            f"{system} (round {run['round']}) {side} log: {lg['checkpoints']} CHECK_POINT lines, "
            f"POOL min {lg['pool_min']} max {lg['pool_max']}, TCPS max {lg['tcps_max']}"
        )
        if lg["other_lines"]:
            line += f"; {lg['other_lines']} other lines, e.g. {lg['other_sample'][:3]}"
        out.append(line)
    return out
