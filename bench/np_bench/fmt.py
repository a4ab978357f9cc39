"""Tables and numbers as the reports print them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

#: A row of a report: metric key, label, higher_is_better (None: no ratio direction).
MetricDef = tuple[str, str, bool | None]


def fmt_num(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def render_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], markdown: bool = False
) -> str:
    rows = [list(r) for r in rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |"]
        out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def better(hib: bool | None) -> str:
    """The "better" column of a metric row."""
    return "higher" if hib else ("" if hib is None else "lower")


def metric_cell(key: str, v: float | None) -> str:
    """A summary figure as the tables show it."""
    if key == "conn_sustain":
        return "-" if v is None or math.isnan(v) else f"{v:.2f}"
    digits = 3 if key.startswith(("conn_p", "cpu_")) else 2 if key == "ready_s" else 1
    if key in ("conn_first", "conn_last"):
        digits = 0
    return fmt_num(v, digits)


def metric_table(
    metrics: Sequence[MetricDef],
    summary: dict[str, dict[str, float]],
    systems: Sequence[str],
    markdown: bool,
    ratio_columns: dict[str, dict[str, float]] | None = None,
) -> str:
    """
    A row per metric that one of ``systems`` has: its figure per system, the
    ratios (``ratio_columns``: header -> ratio by metric), which way is better.
    """
    ratio_columns = ratio_columns or {}
    rows = []
    for key, label, hib in metrics:
        if not any(key in summary.get(s, {}) for s in systems):
            continue
        row = [label.strip() if markdown else label]
        row += [metric_cell(key, summary.get(s, {}).get(key)) for s in systems]
        for by_key in ratio_columns.values():
            r = by_key.get(key)
            row.append("-" if r is None or hib is None else f"{r:.2f}x")
        row.append(better(hib))
        rows.append(row)
    header = ["metric", *systems, *ratio_columns, "better"]
    return render_table(header, rows, markdown=markdown)
