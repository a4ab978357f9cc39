#!/usr/bin/env python3
"""Benchmark: single-end TCP forwarding through nodepass vs direct, socat, haproxy.

    python bench/forward.py                 # full run (~130 s), all systems
    python bench/forward.py --quick         # smoke run (~25 s)
    python bench/forward.py --systems direct,haproxy --json out.json

The forwarder under test is started as a subprocess::

    python -m nodepass "client://127.0.0.1:LISTEN/127.0.0.1:TARGET?log=none&mode=1"

and compared, in the same run, with ``direct`` (no forwarder), ``socat``
(fork per connection) and ``haproxy`` (mode tcp, nbthread 1). The target
(discard sink + echo) and the load generator are separate Python processes
from ``bench/np_bench/``. All on 127.0.0.1, ephemeral ports; every child
process is killed at the end, on errors and on Ctrl-C.

See docs/benchmarks.md for what each metric means and the method.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from np_bench import fmt, options, phases, runner, stats, tools
from np_bench.base import StartError, log
from np_bench.procfs import TreeMemorySampler, proc_status_kb
from np_bench.procs import start_run
from np_bench.systems import DEFAULT_SINGLE_CMD, SystemSpec, start_system
from np_bench.target import TargetServer

ALL_SYSTEMS = ("direct", "socat", "haproxy", "nodepass")
BASELINES = ("direct", "socat", "haproxy")
DEFAULT_NODEPASS_CMD = DEFAULT_SINGLE_CMD


def system_spec(name: str, args: argparse.Namespace) -> SystemSpec:
    """``nodepass`` is the single-end forwarder (``--nodepass-cmd``); the others are baselines."""
    if name == "nodepass":
        return SystemSpec(name, "nodepass-single", cmd=args.nodepass_cmd)
    return SystemSpec(name, name)


# --------------------------------------------------------------------------
# Phases
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
    warnings: list[str] = []
    try:
        fwd = start_system(system_spec(name, args), srv.port, tmpdir, args, warnings)
    except StartError as exc:
        run["errors"].append(f"start: {exc}")
        log(f"[{tag}] FAILED to start: {exc}")
        return run
    finally:
        if warnings:
            run["warnings"] = warnings
    run["argv"] = fwd.hops[0].argv if fwd.hops else []
    hop = fwd.hops[0] if fwd.hops else None
    sampler: TreeMemorySampler | None = None
    try:
        if hop is not None:
            time.sleep(0.2)
            run["rss_idle_kb"] = proc_status_kb(hop.pid, "VmRSS").get("VmRSS")
            sampler = phases.rss_guard(fwd, hop.pid, "process tree", args, tag)
        plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("tput1", lambda: phases.phase_stream(fwd.port, srv, 1, args)),
            ("tputN", lambda: phases.phase_stream(fwd.port, srv, args.streams, args)),
            ("connrate", lambda: phases.phase_connrate(fwd.port, args)),
            ("rtt", lambda: phases.phase_rtt(fwd.port, [srv.proc.pid, *fwd.pids()], args)),
        ]
        phases.run_phases(fwd, plan, args, tag, run, keep_cpu_s=True)
    finally:
        if sampler is not None:
            run["memory"] = sampler.stop()
        if hop is not None and not hop.alive() and not fwd.killed_reason:
            run["errors"].append(f"{name} exited early rc={hop.proc.returncode}: {hop.log_tail(5)}")
        fwd.stop()
    return run


# --------------------------------------------------------------------------
# Aggregation and report
# --------------------------------------------------------------------------


def metric_defs(args: argparse.Namespace) -> list[fmt.MetricDef]:
    return [
        ("tput1_mb_s", "throughput, 1 stream (MB/s)", True),
        ("tputN_mb_s", f"throughput, {args.streams} streams (MB/s)", True),
        ("conn_rate", f"conn rate, {args.workers} workers (conn/s)", True),
        ("conn_p50_ms", "  connect+echo+close p50 (ms)", False),
        ("conn_p99_ms", "  connect+echo+close p99 (ms)", False),
        ("rtt_p50_us", "64 B round trip p50 (us)", False),
        ("rtt_p99_us", "64 B round trip p99 (us)", False),
        ("rss_idle_mib", "RSS idle (MiB)", False),
        ("rss_main_mib", "peak RSS, main process VmHWM (MiB)", False),
        ("rss_tree_mib", "peak RSS, process tree (MiB)", False),
        ("cpu_tput1", "fwd CPU during 1-stream test (cores)", None),
        ("cpu_tputN", f"fwd CPU during {args.streams}-stream test (cores)", None),
        ("cpu_conn", "fwd CPU during conn-rate test (cores)", None),
    ]


def flatten(run: dict[str, Any]) -> dict[str, float]:
    """One run's headline numbers (only those measured without error)."""
    out = phases.flatten_phases(run)
    if run.get("rss_idle_kb"):
        out["rss_idle_mib"] = run["rss_idle_kb"] / 1024
    mem = run.get("memory")
    if mem and mem.get("main_hwm_kb"):
        out["rss_main_mib"] = mem["main_hwm_kb"] / 1024
        out["rss_tree_mib"] = mem["tree_peak_kb"] / 1024
    return out


def report(results: dict[str, Any], args: argparse.Namespace, markdown: bool = False) -> str:
    ratios = results["ratios"]
    ref = args.ratio_of
    columns = {f"{ref}/{b}": ratios[b] for b in BASELINES if b in ratios}
    systems = [s for s in args.systems if s in results["runs"]]
    return fmt.metric_table(metric_defs(args), results["summary"], systems, markdown, columns)


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    runner.print_header(
        "NodePass forwarding benchmark",
        results["meta"],
        args,
        f"haproxy: nbthread {tools.HAPROXY_THREADS}; socat: one forked process per connection; "
        f"MB = 10^6 bytes; ratios = {args.ratio_of} / baseline, same run",
    )
    print(report(results, args))
    notes = [f"{s}: skipped, {why}" for s, why in results["skipped"].items()]
    for s in args.systems:
        runs = results["runs"].get(s, [])
        mems = [r["memory"] for r in runs if r.get("memory")]
        if s == "socat" and mems:
            notes.append(
                f"socat: main VmHWM {max(m['main_hwm_kb'] for m in mems) / 1024:.1f} MiB, "
                f"largest child VmHWM {max(m['child_hwm_max_kb'] for m in mems) / 1024:.1f} MiB, "
                f"up to {max(m['max_children'] for m in mems)} children alive at a sample"
            )
        for r in runs:
            notes += runner.run_notes(s, r)
    runner.print_notes(notes)
    if args.markdown:
        print()
        print(report(results, args, markdown=True))


def collect_meta(args: argparse.Namespace, found: dict[str, str | None]) -> dict[str, Any]:
    versions = tools.tool_versions(found)
    if "nodepass" in args.systems:
        how = (
            "python -m nodepass"
            if args.nodepass_cmd == DEFAULT_NODEPASS_CMD
            else f"custom command: {args.nodepass_cmd}"
        )
        version = tools.nodepass_version()
        versions["nodepass"] = "?" if version is None else f"{version} ({how})"
    return runner.run_meta(versions, dict(vars(args)))


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark single-end TCP forwarding: nodepass vs direct/socat/haproxy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help="comma-separated subset of " + ",".join(ALL_SYSTEMS),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round, 1 s streams, 1 s conn rate, 0.5 s rtt",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds; the system order alternates (ABBA) and medians are reported",
    )
    p.add_argument("--duration", type=float, default=4.0, help="seconds each throughput test sends")
    p.add_argument(
        "--volume",
        type=float,
        default=None,
        help="instead of --duration: MB (10^6 B) sent per throughput test, split over the streams",
    )
    p.add_argument("--max-time", type=float, default=30.0, help="cap on sending time with --volume")
    p.add_argument("--conn-duration", type=float, default=4.0, help="seconds of the conn-rate test")
    p.add_argument(
        "--phases",
        default=",".join(phases.PHASES),
        help="phases to run: tput1 (1 stream), tputN (--streams streams), connrate, rtt",
    )
    p.add_argument(
        "--ratio-of", default="nodepass", help="system whose ratios to the baselines are shown"
    )
    p.add_argument(
        "--nodepass-cmd",
        default=DEFAULT_NODEPASS_CMD,
        help="command line of the forwarder under test ({python}, {listen}, {target})",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=15.0,
        help="seconds for a forwarder to listen and forward",
    )
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    options.add_run_options(p, "forwarder")
    args = p.parse_args(argv)
    args.systems = options.parse_systems(p, args.systems, ALL_SYSTEMS)
    if args.ratio_of not in ALL_SYSTEMS:
        p.error(f"--ratio-of must be one of {', '.join(ALL_SYSTEMS)}")
    args.phases = options.parse_phases(p, args.phases)
    if args.quick:
        args.rounds = 1
        args.duration = min(args.duration, 1.0)
        args.conn_duration = min(args.conn_duration, 1.0)
        args.rtt_duration = min(args.rtt_duration, 0.5)
        if args.volume:
            args.volume = min(args.volume, 500.0)
    options.check_run_args(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = start_run()

    needed = {c: c for c in ("socat", "haproxy") if c in args.systems}
    found = tools.ensure_commands(needed, install=not args.no_install) if needed else {}
    results: dict[str, Any] = {
        "meta": collect_meta(args, found),
        "runs": {},
        "skipped": {},
    }
    systems = []
    for s in args.systems:
        if s in found and not found[s]:
            results["skipped"][s] = f"{s} not installed"
            log(f"[setup] skipping {s}: not installed")
        else:
            systems.append(s)
    args.systems = systems

    interrupted = runner.run_rounds(systems, args, results["runs"], run_system, "nodepass-bench-")
    results["summary"] = {s: stats.aggregate(r, flatten) for s, r in results["runs"].items()}
    summary = results["summary"]
    ref = args.ratio_of
    results["ratios"] = stats.ratios(summary, ref, BASELINES) if ref in summary else {}
    runner.end_meta(results["meta"], t_start, interrupted)
    print_report(results, args)
    print(f"\n(total {results['meta']['wall_s']:.0f} s)")
    if args.json:
        runner.write_json(args.json, results)
    failed = [s for s in systems if not results["summary"].get(s)]
    if interrupted:
        return 130
    return 1 if failed or results["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
