"""A PNG chart of a data-plane run (matplotlib, imported only when a chart is asked for)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from np_bench.base import log

#: (metric keys drawn side by side, title, unit); one panel each.
PANELS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("tput1_mb_s", "down1_mb_s", "tputN_mb_s"), "throughput: 1 up, 1 down, 8 streams", "MB/s"),
    (("cpu_s_per_gb",), "forwarder CPU per GB moved", "CPU-s/GB"),
    (("conn_rate",), "conn/s, 8 workers", "conn/s"),
    (("conn_p99_ms",), "connect+echo+close p99", "ms"),
    (("rtt_p50_us",), "64 B round trip p50", "us"),
    (("udp_loss_pct",), "UDP loss at 20k datagrams/s", "%"),
    (("rss_peak_mib",), "peak RSS of the forwarder(s)", "MiB"),
    (("rss_idle1k_max_mib",), "RSS, {idle} idle conns, largest process", "MiB"),
)

SERIES = {"tput1_mb_s": "1 stream up", "down1_mb_s": "1 stream down", "tputN_mb_s": "8 streams up"}


def have_matplotlib(install: bool) -> bool:
    """Whether matplotlib imports; with ``install``, ``pip install matplotlib`` first if not."""
    try:
        importlib.import_module("matplotlib")
        return True
    except ImportError:
        pass
    if not install:
        log("[setup] matplotlib missing (not installing, --no-install): no chart")
        return False
    log("[setup] installing matplotlib with pip (the 'bench' extra) ...")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
            check=True,
            timeout=600,
            stdout=subprocess.DEVNULL,
        )
        importlib.invalidate_caches()
        importlib.import_module("matplotlib")
        return True
    except (OSError, subprocess.SubprocessError, ImportError) as exc:
        log(f"[setup] pip install matplotlib failed: {exc}")
        return False


def draw(
    path: str,
    summary: dict[str, dict[str, float]],
    systems: Sequence[str],
    title: str,
    labels: dict[str, str] | None = None,
    idle_conns: int = 1000,
) -> None:
    """One panel per entry of ``PANELS``, one bar (group) per system; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5), constrained_layout=True)
    colors: Any = getattr(plt.get_cmap("tab10"), "colors", None) or ["C0", "C1", "C2", "C3"]
    names = [labels.get(s, s) for s in systems]
    for ax, (keys, panel_title, unit) in zip(axes.flat, PANELS, strict=False):
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            vals = [summary.get(s, {}).get(key, float("nan")) for s in systems]
            xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(systems))]
            bars: Any = ax.bar(
                xs,
                vals,
                width=width,
                color=[colors[i % len(colors)] for i in range(len(systems))],
                alpha=1.0 - 0.28 * j,
                edgecolor="black",
                linewidth=0.4,
            )
            for b, v in zip(bars, vals, strict=True):
                measured = v == v  # not NaN
                if not measured and j:
                    continue
                ax.annotate(
                    (f"{v:.0f}" if abs(v) >= 100 else f"{v:.2g}") if measured else "n/a",
                    (b.get_x() + b.get_width() / 2, b.get_height() if measured else 0),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90 if len(keys) > 1 and measured else 0,
                )
        if len(keys) > 1:
            from matplotlib.patches import Patch

            ax.legend(
                handles=[
                    Patch(facecolor="grey", alpha=1.0 - 0.28 * j, label=SERIES.get(k, k))
                    for j, k in enumerate(keys)
                ],
                fontsize=7,
            )
        ax.set_title(panel_title.format(idle=f"{idle_conns:,}"), fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path}")
