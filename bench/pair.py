#!/usr/bin/env python3
"""Benchmark: the dual-end NodePass tunnel (server + client) vs one- and two-hop baselines.

    python bench/pair.py                    # full run (~4 min): tls=0 and tls=1, all baselines
    python bench/pair.py --quick            # smoke run (~1 min)
    python bench/pair.py --tls 0 --systems direct,haproxy-chain,nodepass --json out.json
    python bench/pair.py --systems haproxy-chain,nodepass --types 0,ws   # pool transports

The tunnel under test is two processes, started for each TLS mode T and pool
transport type Y (``--types``; default: every one ``python -m nodepass --help``
lists as installed)::

    python -m nodepass "server://benchkey@127.0.0.1:TUNNEL/127.0.0.1:ENTRY?mode=1&tls=T&log=event&type=Y"
    python -m nodepass "client://benchkey@127.0.0.1:TUNNEL/127.0.0.1:TARGET?mode=2&log=event"

``&type=Y`` is left out for the TCP pool (type 0): that system is
``nodepass-tlsT``; the others are ``nodepass-tlsT-NAME`` (``nodepass-tls1-ws``).
A transport that always runs over TLS (h2, quic) runs only with T=1. A
"transports" table gives each one's figures as a ratio to the TCP pool of the
same TLS mode.

The server listens on ENTRY for users (flow ``-``) and the client dials
TARGET. Readiness: the tunnel port listening, the first ``CHECK_POINT`` line
of each process, then 20 echo round trips through ENTRY, all within
``--ready-timeout`` (a failed start is retried once). Baselines in the same run: ``direct``,
``socat`` and ``haproxy`` (one hop), ``socat-chain`` and ``haproxy-chain``
(two processes in a row, like the tunnel), and, for tls=1,
``haproxy-tls-chain`` (hop 1 talks TLS 1.3 to hop 2, which terminates it
with a self-signed certificate). haproxy runs with nbthread 1 in every
process. Target and load generator are separate processes from
``bench/np_bench/``. All on 127.0.0.1; every child is killed at the end, on
errors and on Ctrl-C.

See docs/benchmarks.md, section "Dual-end tunnel", for the method.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from np_bench import fmt, nplog, options, phases, runner, stats, sustain, tools
from np_bench.base import StartError, log
from np_bench.procfs import TreeMemorySampler
from np_bench.procs import start_run
from np_bench.systems import (
    DEFAULT_CLIENT_URL,
    DEFAULT_SERVER_URL,
    TCP_POOL,
    SystemSpec,
    Transport,
    installed_transports,
    start_system,
)
from np_bench.target import TargetServer

ALL_SYSTEMS = (
    "direct",
    "socat",
    "socat-chain",
    "haproxy",
    "haproxy-chain",
    "haproxy-tls-chain",
    "nodepass",
)
# Metrics of the transports table: key, label, higher_is_better.
TRANSPORT_METRICS = (
    ("tput1_mb_s", "1 stream MB/s", True),
    ("tputN_mb_s", "{streams} streams MB/s", True),
    ("conn_rate", "conn/s", True),
    ("rtt_p50_us", "64 B rtt p50 us", False),
)


def np_tls(name: str) -> int:
    """The TLS mode of a ``nodepass-tlsT[-NAME]`` system."""
    return int(name.split("-")[1][3:])


def system_spec(name: str, args: argparse.Namespace) -> SystemSpec:
    """What ``name`` starts: a nodepass pair of ``args.np_variants``, or a baseline."""
    if name in args.np_variants:
        tls, tr = args.np_variants[name]
        return SystemSpec(name, "nodepass-pair", tls=tls, transport=tr)
    if name == "direct":
        return SystemSpec(name, "direct")
    kind = name.split("-")[0]
    return SystemSpec(name, kind, hops=2 if name.endswith("chain") else 1, tls=int("tls" in name))


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
        sysm = start_system(system_spec(name, args), srv.port, tmpdir, args, warnings)
    except StartError as exc:
        run["errors"].append(f"start: {exc}")
        if warnings:
            run["warnings"] = warnings
        log(f"[{tag}] FAILED to start: {exc}")
        return run
    if warnings:
        run["warnings"] = warnings
    run["argv"] = [h.argv for h in sysm.hops]
    run["ready"] = dict(sysm.ready)
    log(
        f"[{tag}] ready: "
        + ", ".join(
            f"{k} {v:.2f}s" if k != "echo_failures" else f"{int(v)} echo failures"
            for k, v in sysm.ready.items()
        )
    )
    samplers: list[TreeMemorySampler] = []
    try:
        for hop in sysm.hops:
            samplers.append(phases.rss_guard(sysm, hop.pid, f"{hop.role} process tree", args, tag))
        plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("tput1", lambda: phases.phase_stream(sysm.port, srv, 1, args)),
            ("tputN", lambda: phases.phase_stream(sysm.port, srv, args.streams, args)),
            (
                "connrate",
                lambda: phases.phase_connrate(
                    sysm.port, args, "connrate_series", sustain.sustain_fields
                ),
            ),
            ("rtt", lambda: phases.phase_rtt(sysm.port, [srv.proc.pid, *sysm.pids()], args)),
        ]
        phases.run_phases(sysm, plan, args, tag, run)
    finally:
        run["memory"] = {
            hop.role: smp.stop() for hop, smp in zip(sysm.hops, samplers, strict=False)
        }
        for hop in sysm.hops:
            if not hop.alive() and not sysm.killed_reason:
                run["errors"].append(
                    f"{hop.role} exited early rc={hop.proc.returncode}: {hop.log_tail(5)}"
                )
        # Read the logs before stopping: the shutdown itself logs errors
        # ("control connection closed") that say nothing about the test.
        if name.startswith("nodepass"):
            run["logs"] = {h.role: nplog.scan_nodepass_log(h.log_text()) for h in sysm.hops}
        sysm.stop()
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
        ("conn_first", "  connections in first second", None),
        ("conn_last", "  connections in last second", None),
        ("conn_sustain", "  last / first second", None),
        ("rtt_p50_us", "64 B round trip p50 (us)", False),
        ("rtt_p99_us", "64 B round trip p99 (us)", False),
        ("rss_entry_mib", "peak RSS entry process, VmHWM (MiB)", False),
        ("rss_exit_mib", "peak RSS exit process, VmHWM (MiB)", False),
        ("rss_total_mib", "peak RSS all hops, trees (MiB)", False),
        ("cpu_tput1", "fwd CPU, 1-stream test (cores)", None),
        ("cpu_tputN", f"fwd CPU, {args.streams}-stream test (cores)", None),
        ("cpu_conn", "fwd CPU, conn-rate test (cores)", None),
        ("ready_s", "start until 20 echoes pass (s)", None),
    ]


def flatten(run: dict[str, Any]) -> dict[str, float]:
    out = phases.flatten_phases(run)
    # The per-second counts are kept even when the phase was voided by failures:
    # a rate that collapses is exactly what they are there to show.
    if (r := run["phases"].get("connrate")) and "per_second" in r:
        out["conn_first"] = r["first_s"]
        out["conn_last"] = r["last_s"]
        out["conn_sustain"] = r["sustain"]
    mem = run.get("memory") or {}
    if mem.get("entry", {}).get("main_hwm_kb"):
        out["rss_entry_mib"] = mem["entry"]["main_hwm_kb"] / 1024
    if mem.get("exit", {}).get("main_hwm_kb"):
        out["rss_exit_mib"] = mem["exit"]["main_hwm_kb"] / 1024
    if mem and all(m.get("tree_peak_kb") for m in mem.values()):
        out["rss_total_mib"] = sum(m["tree_peak_kb"] for m in mem.values()) / 1024
    if "forward" in (run.get("ready") or {}):
        out["ready_s"] = run["ready"]["forward"]
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median over rounds; memory: the maximum (it is a peak); sustain: the worst."""
    return stats.aggregate(runs, flatten, {"conn_sustain": min})


def baselines_for(variant: str, systems: list[str]) -> list[str]:
    tls_variant = np_tls(variant) == 1
    return [
        s
        for s in systems
        if not s.startswith("nodepass") and (tls_variant or s != "haproxy-tls-chain")
    ]


def compute_ratios(summary: dict[str, dict[str, float]], systems: list[str]) -> dict[str, Any]:
    return {
        variant: stats.ratios(summary, variant, baselines_for(variant, systems))
        for variant in systems
        if variant.startswith("nodepass") and variant in summary
    }


def transport_rows(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per nodepass system: its figures and their ratio to the TCP pool
    (``nodepass-tlsT``) of the same TLS mode in the same run."""
    summary = results["summary"]
    rows = []
    for name in args.run_systems:
        if name not in args.np_variants:
            continue
        tls, tr = args.np_variants[name]
        ref = f"nodepass-tls{tls}"
        mine, base = summary.get(name, {}), summary.get(ref, {})
        ratios = {}
        for key, _label, _hib in TRANSPORT_METRICS:
            if key in mine and base.get(key):
                ratios[key] = mine[key] / base[key]
        verdict = results["sustain"].get(name)
        rows.append(
            {
                "system": name,
                "type": tr.code,
                "transport": tr.name,
                "tls": tls,
                "reference": ref if ref in summary else None,
                "values": {k: mine[k] for k, _l, _h in TRANSPORT_METRICS if k in mine},
                "ratios": ratios,
                "ready_s": mine.get("ready_s"),
                "sustain": None if verdict is None else ("PASS" if verdict["pass"] else "FAIL"),
                "sustain_ratio": None if verdict is None else verdict["ratio"],
                "failed": not mine or any(r["errors"] for r in results["runs"].get(name, [])),
            }
        )
    return rows


def transport_table(results: dict[str, Any], args: argparse.Namespace, markdown: bool) -> str:
    header = ["system", "type", "tls"]
    for _key, label, _hib in TRANSPORT_METRICS:
        header.append(label.format(streams=args.streams))
    header += ["ready (s)", "sustained"]
    rows = []
    for r in results["transports"]:
        row = [r["system"], f"{r['type']} ({r['transport']})", str(r["tls"])]
        for key, _label, _hib in TRANSPORT_METRICS:
            v = r["values"].get(key)
            if v is None:
                row.append("-")
                continue
            digits = 0 if key == "conn_rate" else 1
            cell = fmt.fmt_num(v, digits)
            if r["system"] == r["reference"]:
                cell += " (ref)"
            elif key in r["ratios"]:
                cell += f" ({r['ratios'][key]:.2f}x)"
            row.append(cell)
        row.append(fmt.fmt_num(r["ready_s"], 2))
        if r["sustain"] is None:
            row.append("-")
        else:
            verdict = f"**{r['sustain']}**" if markdown else r["sustain"]
            row.append(f"{verdict} ({r['sustain_ratio']:.2f})")
        rows.append(row)
    return fmt.render_table(header, rows, markdown=markdown)


def raw_table(results: dict[str, Any], args: argparse.Namespace, markdown: bool) -> str:
    summary = results["summary"]
    systems = [s for s in args.run_systems if s in summary]
    return fmt.metric_table(metric_defs(args), summary, systems, markdown)


def ratio_table(
    results: dict[str, Any], variant: str, args: argparse.Namespace, markdown: bool
) -> str:
    ratios = results["ratios"].get(variant, {})
    bases = [b for b in baselines_for(variant, args.run_systems) if b in ratios]
    rows = []
    for key, label, hib in metric_defs(args):
        if hib is None or not any(key in ratios[b] for b in bases):
            continue
        row = [label.strip() if markdown else label]
        for b in bases:
            r = ratios[b].get(key)
            row.append("-" if r is None else f"{r:.2f}x")
        row.append(fmt.better(hib))
        rows.append(row)
    header = [f"{variant} / baseline", *bases, "better"]
    return fmt.render_table(header, rows, markdown=markdown)


def notes(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    out = [f"{s}: skipped, {why}" for s, why in results["skipped"].items()]
    for s in args.run_systems:
        for r in results["runs"].get(s, []):
            out += runner.run_notes(s, r)
            mem = r.get("memory") or {}
            if s.startswith("socat") and mem:
                kids = max(m["max_children"] for m in mem.values())
                child = max(m["child_hwm_max_kb"] for m in mem.values()) / 1024
                out.append(
                    f"{s} (round {r['round']}): forks up to {kids} children per hop, "
                    f"largest child VmHWM {child:.1f} MiB"
                )
            out += nplog.log_notes(s, r)
    return out


def print_ratio_tables(results: dict[str, Any], args: argparse.Namespace, markdown: bool) -> None:
    for variant in results["ratios"]:
        if results["ratios"][variant]:
            print()
            print(ratio_table(results, variant, args, markdown=markdown))


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    runner.print_header(
        "NodePass dual-end tunnel benchmark",
        results["meta"],
        args,
        f"haproxy: nbthread {tools.HAPROXY_THREADS} per process; socat: a fork per connection; "
        "*-chain: two processes in a row; MB = 10^6 bytes",
    )
    print(raw_table(results, args, markdown=False))
    print_ratio_tables(results, args, markdown=False)
    if results["sustain"]:
        print()
        print(
            f"Sustained connection rate (requirement: last second >= {sustain.SUSTAIN_MIN:.0%} of first; "
            "worst round):"
        )
    for s, v in results["sustain"].items():
        verdict = "PASS" if v["pass"] else "FAIL"
        mark = f"{verdict}" if s.startswith("nodepass") else f"({verdict}, baseline)"
        print(
            f"  {s:18s} first {v['first']:6d}  last {v['last']:6d}  last/first {v['ratio']:.2f}"
            f"  {mark}   per second {v['per_second']}"
            + (f" failed {v['failed_per_second']}" if any(v["failed_per_second"]) else "")
        )
    if results["transports"]:
        print()
        print(
            "Pool transports (type=): figure (ratio to the TCP pool nodepass-tlsT of the same "
            "TLS mode, same run;\n  MB/s and conn/s: higher is better, rtt: lower is better); "
            "ready = start until 20 echoes pass;\n  sustained = conn-rate test, last second / "
            f"first second >= {sustain.SUSTAIN_MIN:.0%}:"
        )
        print(transport_table(results, args, markdown=False))
    runner.print_notes(notes(results, args))
    if args.markdown:
        print()
        print(raw_table(results, args, markdown=True))
        print_ratio_tables(results, args, markdown=True)
        if results["transports"]:
            print()
            print(transport_table(results, args, markdown=True))


def collect_meta(args: argparse.Namespace, found: dict[str, str | None]) -> dict[str, Any]:
    versions = tools.tool_versions(found)
    if any(s.startswith("nodepass") for s in args.run_systems):
        versions["nodepass"] = tools.nodepass_version() or "?"
        versions["nodepass server"] = args.server_url
        versions["nodepass client"] = args.client_url
        versions["pool transports"] = args.transports_line
    meta = runner.run_meta(
        versions,
        {
            k: ({n: [t, vars(tr)] for n, (t, tr) in v.items()} if k == "np_variants" else v)
            for k, v in vars(args).items()
            if k != "transports"
        },
    )
    meta["transports"] = [vars(t) for t in args.transports]
    return meta


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the dual-end NodePass tunnel against one- and two-hop "
        "socat/haproxy baselines.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help="comma-separated subset of " + ",".join(ALL_SYSTEMS),
    )
    p.add_argument(
        "--tls",
        default="0,1",
        help="nodepass server tls modes to run (0 and/or 1); haproxy-tls-chain runs only with 1",
    )
    p.add_argument(
        "--types",
        default="",
        help="pool transports to run, by type code or name (e.g. 0,2 or tcp,ws,h2,quic); "
        "default: every one 'python -m nodepass --help' lists as installed. Those that "
        "always use TLS (h2, quic) run only with tls=1",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 s streams, 2 s conn rate, 0.5 s rtt",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds; the system order alternates (ABBA) and medians are reported",
    )
    p.add_argument("--duration", type=float, default=3.0, help="seconds each throughput test sends")
    p.add_argument(
        "--conn-duration",
        type=float,
        default=10.0,
        help="seconds of the conn-rate test (whole seconds are binned for the sustained-rate check)",
    )
    p.add_argument(
        "--phases",
        default=",".join(phases.PHASES),
        help="phases to run: tput1, tputN, connrate, rtt",
    )
    p.add_argument(
        "--np-log",
        default="event",
        help="nodepass log level for both ends; 'event' gives the CHECK_POINT lines used for "
        "readiness and the pool figures; 'warn' also records warnings (diagnosis); "
        "'none' makes readiness poll an echo instead",
    )
    p.add_argument(
        "--server-url",
        default=DEFAULT_SERVER_URL,
        help="nodepass server URL ({key}, {tunnel}, {entry}, {tls}, {log}, {type}); without "
        "{type}, '&type=Y' is appended for every pool transport but TCP (type 0)",
    )
    p.add_argument(
        "--client-url",
        default=DEFAULT_CLIENT_URL,
        help="nodepass client URL ({key}, {tunnel}, {target}, {log})",
    )
    p.add_argument(
        "--pool-settle",
        type=float,
        default=1.0,
        help="seconds to wait after the preflight so the client's pool is full again",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=15.0,
        help="seconds for a socat/haproxy system to listen, and then to forward",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=45.0,
        help="seconds from starting a nodepass pair until its tunnel port listens, both ends "
        "print CHECK_POINT and 20 echoes pass; a pair that misses it is restarted once",
    )
    p.add_argument(
        "--log-dir",
        metavar="DIR",
        help="keep every process's output (and the generated configs) in DIR "
        "instead of a temporary directory",
    )
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    options.add_run_options(p, "every hop")
    args = p.parse_args(argv)
    args.systems = options.parse_systems(p, args.systems, ALL_SYSTEMS)
    try:
        args.tls = sorted({int(t) for t in args.tls.split(",") if t.strip()})
    except ValueError:
        p.error("--tls takes a list of 0 and 1")
    if not args.tls or any(t not in (0, 1) for t in args.tls):
        p.error("--tls takes a list of 0 and 1")
    args.phases = options.parse_phases(p, args.phases)
    if args.np_log not in ("none", "debug", "info", "warn", "error", "event"):
        p.error("--np-log: none, debug, info, warn, error or event")
    if args.quick:
        args.duration = min(args.duration, 1.0)
        args.conn_duration = min(args.conn_duration, 2.0)
        args.rtt_duration = min(args.rtt_duration, 0.5)
        args.pool_settle = min(args.pool_settle, 0.5)
    if args.conn_duration < 2:
        p.error("--conn-duration must be >= 2 (first and last second are compared)")
    options.check_run_args(p, args)
    return args


def resolve_types(
    args: argparse.Namespace, installed: list[Transport], skipped: dict[str, str]
) -> list[Transport]:
    """``--types`` as Transports (by code or name); unknown ones go to ``skipped``."""
    if not args.types:
        return list(installed)
    out: list[Transport] = []
    for want in (t.strip() for t in args.types.split(",") if t.strip()):
        tr = next((t for t in installed if want in (t.code, t.name)), None)
        if tr is None:
            listed = ", ".join(f"{t.code} ({t.name})" for t in installed) or "none"
            skipped[f"type={want}"] = f"not installed (installed: {listed})"
            log(f"[setup] skipping type={want}: not installed (installed: {listed})")
        elif tr not in out:
            out.append(tr)
    return sorted(out, key=installed.index)  # TCP, the reference, first


def expand_systems(args: argparse.Namespace, skipped: dict[str, str]) -> list[str]:
    out = []
    args.np_variants = {}
    for s in args.systems:
        if s == "nodepass":
            for t in args.tls:
                for tr in args.transports:
                    name = f"nodepass-tls{t}" if tr.code == "0" else f"nodepass-tls{t}-{tr.name}"
                    if t < tr.min_tls:
                        # h2/quic with tls=0: the server would force TLS, so it would
                        # only repeat the tls=1 system. Not a skip when tls=1 runs too.
                        if 1 not in args.tls and args.types:
                            skipped[name] = f"type={tr.code} always uses TLS: needs --tls 1"
                        continue
                    args.np_variants[name] = (t, tr)
                    out.append(name)
        elif s == "haproxy-tls-chain" and 1 not in args.tls:
            skipped[s] = "only run with --tls including 1"
        else:
            out.append(s)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = start_run()

    if "nodepass" in args.systems:
        installed, args.transports_line = installed_transports()
        log(f"[setup] {args.transports_line}")
        if not installed:  # an older tree without the line: the TCP pool alone
            installed = [TCP_POOL]
    else:
        installed, args.transports_line = [], ""
    skipped: dict[str, str] = {}
    args.transports = resolve_types(args, installed, skipped)
    kinds = {s.split("-")[0] for s in args.systems}
    needed = {c: c for c in ("socat", "haproxy") if c in kinds}
    found = tools.ensure_commands(needed, install=not args.no_install) if needed else {}
    systems = []
    for s in expand_systems(args, skipped):
        tool = s.split("-")[0]
        if tool in found and not found[tool]:
            skipped[s] = f"{tool} not installed"
            log(f"[setup] skipping {s}: {tool} not installed")
        else:
            systems.append(s)
    args.run_systems = systems
    results: dict[str, Any] = {
        "meta": collect_meta(args, found),
        "runs": {},
        "skipped": skipped,
    }

    interrupted = runner.run_rounds(systems, args, results["runs"], run_system, "nodepass-pair-")
    results["summary"] = {s: aggregate(r) for s, r in results["runs"].items()}
    results["ratios"] = compute_ratios(results["summary"], systems)
    results["sustain"] = sustain.sustain_verdicts(results["runs"], systems)
    results["transports"] = transport_rows(results, args)
    runner.end_meta(results["meta"], t_start, interrupted)
    print_report(results, args)
    print(f"\n(total {results['meta']['wall_s']:.0f} s)")
    if args.json:
        runner.write_json(args.json, results)
    if interrupted:
        return 130
    failed = [s for s in systems if not results["summary"].get(s)]
    sustain_fail = [
        s for s, v in results["sustain"].items() if s.startswith("nodepass") and not v["pass"]
    ]
    return 1 if failed or skipped or sustain_fail else 0


if __name__ == "__main__":
    sys.exit(main())
