#!/usr/bin/env python3
"""Benchmark: the whole data plane in one interleaved run, against haproxy and direct.

    python bench/dataplane.py --quick       # smoke run, about a minute
    python bench/dataplane.py               # 3 rounds, about 9-10 minutes
    python bench/dataplane.py --json bench/results/dp.json --markdown dp.md \\
        --chart docs/img/dataplane.png

Systems, each started afresh for every round, in an order that alternates
(ABBA) between rounds; the figures are medians over the rounds (peak memory:
the maximum):

* ``direct``: no forwarder; ``socat``: a fork per TCP connection, plus one
  socat for UDP on the same port; ``haproxy``: mode tcp, nbthread 1 (no UDP);
* ``nodepass-single``: ``client://127.0.0.1:L/127.0.0.1:T?mode=1`` (TCP and UDP);
* ``nodepass-tls0``, ``nodepass-tls1``, ``nodepass-tls0-ws``: a pair, the
  server (entry) ``server://…?mode=1&tls=T[&type=2]`` and the client (exit)
  ``client://…?mode=2`` (``type=2``: the WebSocket pool).

Phases, in this order, against one target process (TCP sink, echo and
source; UDP echo) and a load generator in its own process for each phase:
1 stream up, 1 stream down, 8 streams up, connect+echo+close with 8 workers
(>= 10 s, counted per second), 64 B round trips on one connection (pinned to
one CPU with the target and the forwarder), UDP at 20,000 datagrams/s, and
last 1,000 idle connections held through the system (RSS of every process
then). CPU is each hop's whole process tree; "CPU-s per GB" divides the CPU
the forwarder(s) used in the three throughput phases by the bytes they moved.

It prints the figures, the ratios to haproxy and to direct (in the layout of
issue 11's table), and PASS/FAIL for each of that issue's "Done when" targets.
``--json``, ``--markdown`` and ``--chart`` write the results. All on
127.0.0.1 with ephemeral ports; every child is killed at the end, on errors
and on Ctrl-C. Exit status: 1 if a system failed or was skipped, 130 on
Ctrl-C, else 0 (``--strict``: also 1 when a target fails).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from np_bench import chart, fmt, nplog, options, phases, runner, stats, sustain, tools
from np_bench.base import StartError, log
from np_bench.procfs import TreeMemorySampler
from np_bench.procs import raise_nofile_limit, start_run, use_tree
from np_bench.systems import (
    DEFAULT_CLIENT_URL,
    DEFAULT_SERVER_URL,
    SystemSpec,
    Transport,
    installed_transports,
    start_system,
)
from np_bench.target import TargetServer

WS = Transport("2", "ws", 0)
SPECS = {
    "direct": SystemSpec("direct", "direct"),
    "socat": SystemSpec("socat", "socat", udp=True),
    "haproxy": SystemSpec("haproxy", "haproxy"),
    "nodepass-single": SystemSpec("nodepass-single", "nodepass-single"),
    "nodepass-tls0": SystemSpec("nodepass-tls0", "nodepass-pair", tls=0),
    "nodepass-tls1": SystemSpec("nodepass-tls1", "nodepass-pair", tls=1),
    "nodepass-tls0-ws": SystemSpec("nodepass-tls0-ws", "nodepass-pair", tls=0, transport=WS),
}
ALL_SYSTEMS = tuple(SPECS)
OURS = tuple(s for s in ALL_SYSTEMS if s.startswith("nodepass"))
PHASES = ("tput1", "down1", "tputN", "connrate", "rtt", "udp", "idle")
LABELS = {
    "nodepass-single": "ours single-end",
    "nodepass-tls0": "ours pair tls=0",
    "nodepass-tls1": "ours pair tls=1",
    "nodepass-tls0-ws": "ours pair type=2 (ws)",
}


# --------------------------------------------------------------------------
# One system, one round
# --------------------------------------------------------------------------


def run_system(
    name: str,
    srv: TargetServer,
    tmpdir: str,
    args: argparse.Namespace,
    tag: str,
    run: dict[str, Any],
) -> dict[str, Any]:
    """Start ``name``, run the phases, stop it; results go into ``run`` as they come."""
    run.update(system=name, phases={}, errors=[])
    spec = SPECS[name]
    warnings: list[str] = []
    try:
        sysm = start_system(spec, srv.port, tmpdir, args, warnings)
    except StartError as exc:
        run["errors"].append(f"start: {exc}")
        log(f"[{tag}] FAILED to start: {exc}")
        return run
    finally:
        if warnings:
            run["warnings"] = warnings
    run["argv"] = [h.argv for h in sysm.hops]
    run["ready"] = dict(sysm.ready)
    samplers: list[TreeMemorySampler] = []
    try:
        if sysm.hops:
            time.sleep(0.2)
            run["rss_idle_kb"] = sysm.rss_kb()
            for hop in sysm.hops:
                samplers.append(
                    phases.rss_guard(sysm, hop.pid, f"{hop.role} process tree", args, tag)
                )
        plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("tput1", lambda: phases.phase_stream(sysm.port, srv, 1, args)),
            ("down1", lambda: phases.phase_down(sysm.port, srv, 1, args)),
            ("tputN", lambda: phases.phase_stream(sysm.port, srv, args.streams, args)),
            (
                "connrate",
                lambda: phases.phase_connrate(
                    sysm.port, args, "connrate_series", sustain.sustain_fields
                ),
            ),
            ("rtt", lambda: phases.phase_rtt(sysm.port, [srv.proc.pid, *sysm.pids()], args)),
        ]
        if spec.kind != "haproxy":  # haproxy forwards no UDP
            plan.append(("udp", lambda: phases.phase_udp(sysm.port, srv, args)))
        phases.run_phases(sysm, plan, args, tag, run, keep_cpu_s=True)
        # Peak memory is that of the traffic phases: read it before the idle connections.
        run["memory"] = {h.role: smp.stop() for h, smp in zip(sysm.hops, samplers, strict=False)}
        samplers = []
        if sysm.hops:
            phases.run_phases(
                sysm, [("idle", lambda: phases.phase_idle(sysm, args))], args, tag, run
            )
    finally:
        for smp in samplers:
            smp.stop()
        for hop in sysm.hops:
            if not hop.alive() and not sysm.killed_reason:
                run["errors"].append(
                    f"{hop.role} exited early rc={hop.proc.returncode}: {hop.log_tail(5)}"
                )
        # Read the logs before stopping: the shutdown itself logs errors
        # ("control connection closed") that say nothing about the test.
        if spec.kind == "nodepass-pair":
            run["logs"] = {h.role: nplog.scan_nodepass_log(h.log_text()) for h in sysm.hops}
        sysm.stop()
    return run


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def metric_defs(args: argparse.Namespace) -> list[fmt.MetricDef]:
    return [
        ("tput1_mb_s", "1 stream up (MB/s)", True),
        ("down1_mb_s", "1 stream down (MB/s)", True),
        ("tputN_mb_s", f"{args.streams} streams up (MB/s)", True),
        ("cpu_s_per_gb", "CPU-s per GB, forwarder(s)", False),
        ("conn_rate", f"conn/s, {args.workers} workers", True),
        ("conn_p50_ms", "  connect+echo+close p50 (ms)", False),
        ("conn_p99_ms", "  connect+echo+close p99 (ms)", False),
        ("conn_sustain", "  last / first second", None),
        ("rtt_p50_us", "64 B round trip p50 (us)", False),
        ("rtt_p99_us", "64 B round trip p99 (us)", False),
        ("udp_loss_pct", f"UDP loss at {args.udp_rate / 1000:g}k/s, round trip (%)", False),
        ("udp_loss_up_pct", "  to the target (%)", False),
        ("rss_idle_max_mib", "RSS idle, largest process (MiB)", False),
        ("rss_peak_mib", "peak RSS, forwarder(s) (MiB)", False),
        (
            "rss_idle1k_max_mib",
            f"RSS, {args.idle_conns:,} idle conns, largest process (MiB)",
            False,
        ),
        (
            "rss_idle1k_total_mib",
            f"RSS, {args.idle_conns:,} idle conns, all processes (MiB)",
            False,
        ),
        ("idle1k_per_conn_kb", "  added per idle connection (kB)", False),
        ("cpu_tput1", "fwd CPU, 1 stream up (cores)", None),
        ("cpu_tputN", f"fwd CPU, {args.streams} streams (cores)", None),
        ("cpu_conn", "fwd CPU, conn/s test (cores)", None),
        ("ready_s", "start until 20 echoes pass (s)", None),
    ]


def flatten(run: dict[str, Any]) -> dict[str, float]:
    """One run's figures (only those of phases without error)."""
    out = phases.flatten_phases(run)
    if (r := run["phases"].get("connrate")) and "per_second" in r:
        out["conn_sustain"] = r["sustain"]
    idle = run.get("rss_idle_kb") or {}
    procs = [kb for by_pid in idle.values() for kb in by_pid.values()]
    if procs:
        out["rss_idle_max_mib"] = max(procs) / 1024
    mem = run.get("memory") or {}
    if mem and all(m.get("tree_peak_kb") for m in mem.values()):
        out["rss_peak_mib"] = sum(m["tree_peak_kb"] for m in mem.values()) / 1024
    if "forward" in (run.get("ready") or {}):
        out["ready_s"] = run["ready"]["forward"]
    return out


def spread(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each figure's [min, max] over the rounds."""
    flat = [flatten(r) for r in runs]
    keys = {k for f in flat for k in f}
    return {k: [min(f[k] for f in flat if k in f), max(f[k] for f in flat if k in f)] for k in keys}


def noise(results: dict[str, Any]) -> dict[str, float]:
    """Per system, the median over its traffic figures of (max - min) / median over the
    rounds: how much one round differs from another (0 with a single round)."""
    keys = ("tput1_mb_s", "down1_mb_s", "tputN_mb_s", "conn_rate", "rtt_p50_us")
    out = {}
    for s, sp in results["spread"].items():
        rel = [
            (sp[k][1] - sp[k][0]) / results["summary"][s][k]
            for k in keys
            if k in sp and results["summary"][s].get(k)
        ]
        if rel:
            out[s] = statistics.median(rel)
    return out


def compare(summary: dict[str, dict[str, float]], base: str) -> dict[str, dict[str, float]]:
    """Every system's figures divided by ``base``'s (``base`` itself: 1.0)."""
    if base not in summary:
        return {}
    return {
        s: {k: v / summary[base][k] for k, v in fig.items() if summary[base].get(k)}
        for s, fig in summary.items()
    }


# --------------------------------------------------------------------------
# Targets (issue 11, "Done when")
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    label: str
    system: str
    key: str
    limit: float
    at_least: bool  # True: figure >= limit; False: figure <= limit
    ratio: bool  # True: the figure is the ratio to haproxy


TARGETS = (
    Target(
        "single-end 1 stream up >= 1.5x haproxy", "nodepass-single", "tput1_mb_s", 1.5, True, True
    ),
    Target("single-end 1 stream down >= 1.5x", "nodepass-single", "down1_mb_s", 1.5, True, True),
    Target("single-end 8 streams >= 2.0x", "nodepass-single", "tputN_mb_s", 2.0, True, True),
    Target("single-end CPU-s per GB <= 0.6", "nodepass-single", "cpu_s_per_gb", 0.6, False, False),
    Target("pair tls=0 1 stream up >= 1.0x", "nodepass-tls0", "tput1_mb_s", 1.0, True, True),
    Target("pair tls=0 1 stream down >= 1.0x", "nodepass-tls0", "down1_mb_s", 1.0, True, True),
    Target("pair tls=0 8 streams >= 1.3x", "nodepass-tls0", "tputN_mb_s", 1.3, True, True),
    Target("pair tls=1 1 stream up >= 0.6x", "nodepass-tls1", "tput1_mb_s", 0.6, True, True),
    Target("pair tls=1 1 stream down >= 0.6x", "nodepass-tls1", "down1_mb_s", 0.6, True, True),
    Target("pair tls=1 CPU-s per GB <= 2.5", "nodepass-tls1", "cpu_s_per_gb", 2.5, False, False),
    Target("pair tls=0 conn/s, 8 workers >= 0.5x", "nodepass-tls0", "conn_rate", 0.5, True, True),
    Target("pair tls=0 conn p99 <= 10 ms", "nodepass-tls0", "conn_p99_ms", 10.0, False, False),
    Target("pair tls=0 64 B rtt p50 <= 1.7x", "nodepass-tls0", "rtt_p50_us", 1.7, False, True),
    Target("pair tls=1 64 B rtt p50 <= 2.5x", "nodepass-tls1", "rtt_p50_us", 2.5, False, True),
    Target(
        "pair tls=0 UDP loss at 20k/s <= 0.5%", "nodepass-tls0", "udp_loss_pct", 0.5, False, False
    ),
    Target(
        "pair tls=1 UDP loss at 20k/s <= 0.5%", "nodepass-tls1", "udp_loss_pct", 0.5, False, False
    ),
    *(
        Target(
            f"{LABELS[s]}: idle RSS <= 25 MiB per process", s, "rss_idle_max_mib", 25, False, False
        )
        for s in OURS
    ),
    *(
        Target(
            f"{LABELS[s]}: 1,000 idle conns, RSS <= 50 MiB per process",
            s,
            "rss_idle1k_max_mib",
            50,
            False,
            False,
        )
        for s in OURS
    ),
)


def check_targets(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each target's figure and verdict: PASS, FAIL, or n/a (not measured in this run)."""
    summary, vs = results["summary"], results["vs_haproxy"]
    out = []
    for t in TARGETS:
        if t.system not in args.run_systems:
            continue
        if t.key == "rss_idle1k_max_mib" and args.idle_conns < 1000:
            continue  # the target is about 1,000
        src = vs if t.ratio else summary
        v = src.get(t.system, {}).get(t.key)
        if v is None or math.isnan(v):
            verdict = "n/a"
        else:
            verdict = "PASS" if (v >= t.limit if t.at_least else v <= t.limit) else "FAIL"
        out.append({"target": t.label, "system": t.system, "value": v, "verdict": verdict})
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or math.isnan(v) else fmt.fmt_num(v, digits)


def issue_table(
    results: dict[str, Any], base: str, systems: list[str], args: argparse.Namespace, markdown: bool
) -> str:
    """The layout of issue 11's table: ratios to ``base`` where it says "x", else figures.
    Against direct (no forwarder: no CPU, no memory of its own) only the ratios."""
    summary = results["summary"]
    vs = results["vs_haproxy"] if base == "haproxy" else results["vs_direct"]
    cols = [s for s in systems if s != base and s in summary]
    b = summary.get(base, {})

    def ratio(s: str, k: str) -> str:
        return _num(vs.get(s, {}).get(k))

    def fig(s: str, k: str, digits: int = 2, unit: str = "") -> str:
        v = summary.get(s, {}).get(k)
        return "-" if v is None else f"{_num(v, digits)}{unit}"

    rows: list[list[str]] = [
        [
            "1 stream up / down (x)",
            *(f"{ratio(s, 'tput1_mb_s')} / {ratio(s, 'down1_mb_s')}" for s in cols),
        ],
        ["8 streams (x)", *(ratio(s, "tputN_mb_s") for s in cols)],
        ["conn/s, 8 workers (x)", *(ratio(s, "conn_rate") for s in cols)],
        ["64 B round trip p50 (x)", *(ratio(s, "rtt_p50_us") for s in cols)],
        [
            f"CPU-s per GB ({base} {_num(b.get('cpu_s_per_gb'))})",
            *(fig(s, "cpu_s_per_gb") for s in cols),
        ],
        [
            f"p99 connect+echo+close, 8 workers ({base} {_num(b.get('conn_p99_ms'), 1)} ms)",
            *(fig(s, "conn_p99_ms", 1, " ms") for s in cols),
        ],
        ["UDP loss at 20k/s", *(fig(s, "udp_loss_pct", 2, "%") for s in cols)],
        [
            f"peak RSS of the forwarder(s) ({base} {_num(b.get('rss_peak_mib'), 0)} MiB)",
            *(fig(s, "rss_peak_mib", 0, " MiB") for s in cols),
        ],
        ["idle RSS, largest process", *(fig(s, "rss_idle_max_mib", 1, " MiB") for s in cols)],
        [
            f"RSS with {args.idle_conns:,} idle tunnelled conns, largest process",
            *(fig(s, "rss_idle1k_max_mib", 1, " MiB") for s in cols),
        ],
    ]
    if base == "direct":
        rows = rows[:4]
    header = [f"figure (x = ratio to {base})", *(LABELS.get(s, s) for s in cols)]
    if markdown:
        return fmt.render_table(header, rows, markdown=True)
    return fmt.render_table(header, rows)


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    runner.print_header(
        "NodePass data-plane benchmark",
        results["meta"],
        args,
        f"haproxy: nbthread {tools.HAPROXY_THREADS}; socat: a fork per TCP connection, one "
        "process for UDP; MB = 10^6 bytes; CPU = each hop's process tree; "
        f"UDP: {args.udp_rate:g} datagrams/s of {args.udp_size} B for {args.udp_duration:g} s",
    )
    systems = [s for s in args.run_systems if s in results["summary"]]
    print(fmt.metric_table(metric_defs(args), results["summary"], systems, markdown=False))
    for base in ("haproxy", "direct"):
        if base in results["summary"]:
            print()
            print(issue_table(results, base, systems, args, markdown=False))
    if args.rounds > 1 and results["noise"]:
        print()
        print(
            "Round-to-round spread, (max - min) / median, median over the throughput, conn/s "
            "and rtt figures: " + ", ".join(f"{s} {v:.0%}" for s, v in results["noise"].items())
        )
    print()
    print("Targets (issue 11, 'Done when'; x = ratio to haproxy in this run):")
    for t in results["targets"]:
        v = t["value"]
        print(f"  {t['verdict']:4s}  {t['target']}  ({_num(v)})")
    notes = [f"{s}: skipped, {why}" for s, why in results["skipped"].items()]
    for s, v in results["sustain"].items():
        if s in OURS and not v["pass"]:
            notes.append(
                f"{s} (round {v['round']}): the conn rate fell from {v['first']} in the first "
                f"second to {v['last']} in the last (per second {v['per_second']})"
            )
    for s in systems:
        for r in results["runs"].get(s, []):
            notes += runner.run_notes(s, r)
            notes += nplog.log_notes(s, r)
    runner.print_notes(notes)


def markdown_report(results: dict[str, Any], args: argparse.Namespace) -> str:
    meta = results["meta"]
    systems = [s for s in args.run_systems if s in results["summary"]]
    la0, la1 = meta["loadavg_start"], meta["loadavg_end"]
    parts = [
        f"Run: {meta['date']}, commit `{meta['commit']}`, {meta['cpus']} CPUs ({meta['cpu_model']}), "
        f"Python {meta['python']}; {args.rounds} round(s), medians (peak RSS: max); "
        f"load average {la0[0]:.2f} {la0[1]:.2f} {la0[2]:.2f} at the start, "
        f"{la1[0]:.2f} {la1[1]:.2f} {la1[2]:.2f} at the end; {meta['wall_s']:.0f} s.",
        "",
        issue_table(results, "haproxy", systems, args, markdown=True),
        "",
        issue_table(results, "direct", systems, args, markdown=True),
        "",
        fmt.metric_table(metric_defs(args), results["summary"], systems, markdown=True),
        "",
        *(
            [
                "Round-to-round spread, (max - min) / median, median over the throughput, "
                "conn/s and rtt figures: "
                + ", ".join(f"{s} {v:.0%}" for s, v in results["noise"].items())
                + ".",
                "",
            ]
            if args.rounds > 1 and results["noise"]
            else []
        ),
        "Targets:",
        "",
        *(f"- **{t['verdict']}** {t['target']} ({_num(t['value'])})" for t in results["targets"]),
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the data plane: direct, socat, haproxy, nodepass single-end "
        "and pairs (tls=0, tls=1, type=2) in one interleaved run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help="comma-separated subset of " + ",".join(ALL_SYSTEMS),
    )
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="phases to run: " + ", ".join(PHASES),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (about a minute): 1 round, short phases, 200 idle connections",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds (ABBA order); medians")
    p.add_argument("--duration", type=float, default=2.0, help="seconds of each throughput test")
    p.add_argument(
        "--conn-duration", type=float, default=10.0, help="seconds of the conn-rate test"
    )
    p.add_argument("--udp-rate", type=float, default=20000.0, help="datagrams per second")
    p.add_argument("--udp-size", type=int, default=512, help="bytes per datagram")
    p.add_argument("--udp-duration", type=float, default=2.0, help="seconds of the UDP test")
    p.add_argument(
        "--idle-conns", type=int, default=1000, help="idle connections held in the last phase"
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds for the idle connections to open",
    )
    options.add_run_options(p, "the forwarder(s)")
    p.set_defaults(rtt_duration=1.5)
    p.add_argument("--np-log", default="event", help="log level of the nodepass pairs")
    p.add_argument("--server-url", default=DEFAULT_SERVER_URL, help=argparse.SUPPRESS)
    p.add_argument("--client-url", default=DEFAULT_CLIENT_URL, help=argparse.SUPPRESS)
    p.add_argument(
        "--pool-settle",
        type=float,
        default=1.0,
        help="seconds a pair gets after its preflight to fill its pool again",
    )
    p.add_argument(
        "--start-timeout", type=float, default=15.0, help="seconds for a system to listen"
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=45.0,
        help="seconds for a nodepass pair to be ready (restarted once if not)",
    )
    p.add_argument("--log-dir", metavar="DIR", help="keep every process's output in DIR")
    p.add_argument(
        "--markdown",
        nargs="?",
        const="-",
        metavar="FILE",
        help="also write the tables as Markdown to FILE (without FILE: stdout)",
    )
    p.add_argument("--chart", metavar="PNG", help="draw the figures into PNG (matplotlib)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    p.add_argument(
        "--commit",
        metavar="REV",
        help="run nodepass from commit REV (exported with git archive into a temporary "
        "directory) instead of the working tree: the figures then belong to exactly REV",
    )
    args = p.parse_args(argv)
    args.systems = options.parse_systems(p, args.systems, ALL_SYSTEMS)
    args.phases = options.parse_phases(p, args.phases, PHASES)
    if args.quick:
        args.rounds = 1
        args.duration = min(args.duration, 0.5)
        args.conn_duration = min(args.conn_duration, 1.0)
        args.rtt_duration = min(args.rtt_duration, 0.3)
        args.udp_duration = min(args.udp_duration, 0.5)
        args.idle_conns = min(args.idle_conns, 200)
        args.pool_settle = min(args.pool_settle, 0.3)
        args.settle = min(args.settle, 0.15)
    options.check_run_args(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = start_run()
    raise_nofile_limit()
    if not args.commit:
        return measure(args, t_start, runner.git_commit())
    with tempfile.TemporaryDirectory(prefix="nodepass-tree-") as tree:
        try:
            short = runner.export_commit(args.commit, tree)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            log(f"[setup] --commit {args.commit}: {exc}")
            return 2
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", os.path.join(tree, "nodepass")],
            check=False,
            timeout=300,
        )
        use_tree(tree)
        log(f"[setup] nodepass from commit {short}, exported to {tree}")
        return measure(args, t_start, f"{short} (exported with git archive)")


def measure(args: argparse.Namespace, t_start: float, commit: str) -> int:
    """The run itself, its report and files; the exit status."""
    skipped: dict[str, str] = {}
    if "nodepass-tls0-ws" in args.systems:
        installed, line = installed_transports()
        if not any(t.code == WS.code for t in installed):
            skipped["nodepass-tls0-ws"] = f"type=2 not installed ({line})"
    needed = {c: c for c in ("socat", "haproxy") if c in args.systems}
    found = tools.ensure_commands(needed, install=not args.no_install) if needed else {}
    for s in needed:
        if not found.get(s):
            skipped[s] = f"{s} not installed"
    can_chart = bool(args.chart) and chart.have_matplotlib(install=not args.no_install)
    args.run_systems = [s for s in args.systems if s not in skipped]
    for s, why in skipped.items():
        log(f"[setup] skipping {s}: {why}")
    versions = tools.tool_versions(found)
    versions["nodepass"] = tools.nodepass_version() or "?"
    results: dict[str, Any] = {
        "meta": runner.run_meta(versions, dict(vars(args))),
        "runs": {},
        "skipped": skipped,
    }
    results["meta"]["commit"] = commit
    interrupted = runner.run_rounds(
        args.run_systems, args, results["runs"], run_system, "nodepass-dataplane-"
    )
    summary = {
        s: stats.aggregate(r, flatten, {"conn_sustain": min}) for s, r in results["runs"].items()
    }
    results["summary"] = summary
    results["spread"] = {s: spread(r) for s, r in results["runs"].items()}
    results["noise"] = noise(results)
    results["vs_haproxy"] = compare(summary, "haproxy")
    results["vs_direct"] = compare(summary, "direct")
    results["targets"] = check_targets(results, args)
    results["sustain"] = sustain.sustain_verdicts(results["runs"], args.run_systems)
    runner.end_meta(results["meta"], t_start, interrupted)
    print_report(results, args)
    print(f"\n(total {results['meta']['wall_s']:.0f} s)")
    if args.json:
        runner.write_json(args.json, results)
    if args.markdown:
        text = markdown_report(results, args)
        if args.markdown == "-":
            print()
            print(text)
        else:
            with open(args.markdown, "w") as f:
                f.write(text)
            print(f"markdown: {args.markdown}")
    if can_chart:
        meta = results["meta"]
        title = (
            f"NodePass data plane, {meta['date']}, commit {meta['commit']}, "
            f"{args.rounds} round(s), medians; load {meta['loadavg_start'][0]:.2f}"
            f"-{meta['loadavg_end'][0]:.2f}"
        )
        systems = [s for s in args.run_systems if s in summary]
        chart.draw(args.chart, summary, systems, title, LABELS, args.idle_conns)
    if interrupted:
        return 130
    failed = [s for s in args.run_systems if not summary.get(s)]
    errors = any(r["errors"] for runs in results["runs"].values() for r in runs)
    if failed or skipped or errors:
        return 1
    if args.strict and any(t["verdict"] == "FAIL" for t in results["targets"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
