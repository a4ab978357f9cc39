"""The sustained connection-rate check: does the rate hold up to the last second?"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

SUSTAIN_MIN = 0.5  # last second's connections >= this x first second's


def sustain_fields(load: dict[str, Any]) -> dict[str, Any]:
    """The per-second counts of a ``connrate_series`` load; last / first second."""
    per_s = load["per_second"]
    first, last = per_s[0], per_s[-1]
    return {
        "per_second": per_s,
        "errors_per_second": load["errors_per_second"],
        "first_s": first,
        "last_s": last,
        "sustain": last / first if first else math.nan,
    }


def sustain_verdicts(
    runs: dict[str, list[dict[str, Any]]], systems: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per system, its worst round's verdict: the last second's connections must be at
    least ``SUSTAIN_MIN`` times the first second's (a pool that runs dry fails)."""
    out: dict[str, dict[str, Any]] = {}
    for s in systems:
        for r in runs.get(s, []):
            ph = r["phases"].get("connrate")
            if not ph or "per_second" not in ph:
                continue
            first, last = ph["first_s"], ph["last_s"]
            ok = bool(first) and last >= SUSTAIN_MIN * first
            prev = out.get(s)
            if prev is None or (prev["pass"] and not ok):
                out[s] = {
                    "round": r["round"],
                    "first": first,
                    "last": last,
                    "ratio": last / first if first else math.nan,
                    "pass": ok,
                    "per_second": ph["per_second"],
                    "failed_per_second": ph["errors_per_second"],
                }
    return out
