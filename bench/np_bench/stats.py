"""Percentiles, figures over rounds, ratios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize_latencies(values: list[float]) -> dict[str, float]:
    """n, mean, p50, p90, p99 and max of ``values`` (sorted in place)."""
    values.sort()
    n = len(values)
    return {
        "n": n,
        "mean": (sum(values) / n) if n else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": values[-1] if n else math.nan,
    }


def aggregate(
    runs: list[dict[str, Any]],
    flatten: Callable[[dict[str, Any]], dict[str, float]],
    rules: dict[str, Callable[[list[float]], float]] | None = None,
) -> dict[str, float]:
    """
    The figures of ``runs`` (``flatten`` picks them) over the rounds: the
    median; ``rss_*`` the maximum (it is a peak); a key in ``rules``, its rule.
    """
    flat = [flatten(r) for r in runs]
    keys = {k for f in flat for k in f}
    rules = rules or {}
    out = {}
    for k in keys:
        vals = [f[k] for f in flat if k in f]
        if k in rules:
            out[k] = rules[k](vals)
        elif k.startswith("rss_"):
            out[k] = max(vals)
        else:
            out[k] = statistics.median(vals)
    return out


def ratios(
    summary: dict[str, dict[str, float]], ref: str, bases: Iterable[str]
) -> dict[str, dict[str, float]]:
    """``ref``'s figures divided by each baseline's (those of ``bases`` in ``summary``)."""
    return {
        base: {k: summary[ref][k] / v for k, v in summary[base].items() if k in summary[ref] and v}
        for base in bases
        if base != ref and base in summary
    }
