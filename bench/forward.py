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
from ``bench/_common.py``. All on 127.0.0.1, ephemeral ports; every child
process is killed at the end, on errors and on Ctrl-C.

See docs/benchmarks.md for what each metric means and the method.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

ALL_SYSTEMS = ("direct", "socat", "haproxy", "nodepass")
BASELINES = ("direct", "socat", "haproxy")
DEFAULT_NODEPASS_CMD = (
    "{python} -m nodepass client://127.0.0.1:{listen}/127.0.0.1:{target}?log=none&mode=1"
)


# --------------------------------------------------------------------------
# Systems under test
# --------------------------------------------------------------------------


@dataclass
class Forwarder:
    name: str
    port: int
    proc: subprocess.Popen[Any] | None = None
    log_path: str | None = None
    killed_reason: str | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def cpu_seconds(self) -> float | None:
        return C.proc_cpu_seconds(self.proc.pid) if self.proc else None

    def skip_reason(self) -> str:
        rc = self.proc.returncode if self.proc else "?"
        return self.killed_reason or f"{self.name} died (rc={rc})"

    def death_reason(self) -> str:
        return self.killed_reason or f"{self.name} died during the test"

    def log_tail(self, n: int = 15) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:]).strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            C.REGISTRY.kill(self.proc)


def forwarder_argv(
    name: str, listen: int, target: int, tmpdir: str, args: argparse.Namespace
) -> list[str]:
    if name == "socat":
        return [
            "socat",
            f"TCP-LISTEN:{listen},fork,reuseaddr,bind=127.0.0.1",
            f"TCP:127.0.0.1:{target}",
        ]
    if name == "haproxy":
        cfg = os.path.join(tmpdir, f"haproxy-{listen}.cfg")
        with open(cfg, "w") as f:
            f.write(C.haproxy_config(listen, target))
        return ["haproxy", "-db", "-f", cfg]
    if name == "nodepass":
        cmd = args.nodepass_cmd.format(
            python=shlex.quote(sys.executable), listen=listen, target=target
        )
        return shlex.split(cmd)
    raise ValueError(name)


def start_forwarder(name: str, target: int, tmpdir: str, args: argparse.Namespace) -> Forwarder:
    if name == "direct":
        fwd = Forwarder(name, target)
    else:
        last_err = ""
        for _attempt in range(3):  # a port picked by free_port() may be taken meanwhile
            listen = C.free_port()
            argv = forwarder_argv(name, listen, target, tmpdir, args)
            log_path = os.path.join(tmpdir, f"{name}-{listen}.log")
            env = dict(os.environ)
            env["PYTHONPATH"] = C.REPO_ROOT + (
                os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
            )
            with open(log_path, "wb") as logf:
                try:
                    proc = C.REGISTRY.spawn(
                        argv, stdout=logf, stderr=subprocess.STDOUT, cwd=C.REPO_ROOT, env=env
                    )
                except OSError as exc:
                    raise C.StartError(f"cannot run {argv[0]}: {exc}") from exc
            fwd = Forwarder(name, listen, proc, log_path, argv=argv)
            if C.wait_listening(listen, args.start_timeout, proc):
                break
            exited = proc.poll() is not None
            last_err = (
                f"{name} exited with rc={proc.returncode}"
                if exited
                else f"{name} not listening on {listen} after {args.start_timeout:.0f}s"
            )
            tail = fwd.log_tail()
            fwd.stop()
            if tail:
                last_err += "; output:\n    " + tail.replace("\n", "\n    ")
            if not exited:
                raise C.StartError(last_err)  # hanging: another port will not help
        else:
            raise C.StartError(last_err)
    # Preflight: the forwarder must really forward (and warm it up a little).
    deadline = time.monotonic() + args.start_timeout
    ok = 0
    err = ""
    while ok < 20 and time.monotonic() < deadline:
        try:
            C.echo_once(fwd.port, timeout=3.0)
            ok += 1
        except OSError as exc:
            err = repr(exc)
            time.sleep(0.1)
    if ok < 20:
        tail = fwd.log_tail()
        fwd.stop()
        raise C.StartError(
            f"{name} accepts on {fwd.port} but does not forward: {err}"
            + (f"; output:\n    {tail}" if tail else "")
        )
    return fwd


# --------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------


def run_system(
    name: str,
    srv: C.TargetServer,
    tmpdir: str,
    args: argparse.Namespace,
    tag: str,
    run: dict[str, Any],
) -> dict[str, Any]:
    """Start ``name``, run the phases, stop it; results go into ``run`` as they come."""
    run.update(system=name, phases={}, errors=[])
    try:
        fwd = start_forwarder(name, srv.port, tmpdir, args)
    except C.StartError as exc:
        run["errors"].append(f"start: {exc}")
        C.log(f"[{tag}] FAILED to start: {exc}")
        return run
    run["argv"] = fwd.argv
    sampler = None
    try:
        if fwd.pid:
            time.sleep(0.2)
            run["rss_idle_kb"] = C.proc_status_kb(fwd.pid, "VmRSS").get("VmRSS")
            sampler = C.rss_guard(fwd, fwd.pid, "process tree", args, tag)
        phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("tput1", lambda: C.phase_stream(fwd.port, srv, 1, args)),
            ("tputN", lambda: C.phase_stream(fwd.port, srv, args.streams, args)),
            ("connrate", lambda: C.phase_connrate(fwd.port, args)),
            ("rtt", lambda: C.phase_rtt(fwd.port, [srv.proc.pid, *fwd.pids()], args)),
        ]
        C.run_phases(fwd, phases, args, tag, run, keep_cpu_s=True)
    finally:
        if sampler is not None:
            run["memory"] = sampler.stop()
        if fwd.proc is not None and fwd.proc.poll() is not None and not fwd.killed_reason:
            run["errors"].append(f"{name} exited early rc={fwd.proc.returncode}: {fwd.log_tail(5)}")
        fwd.stop()
    return run


# --------------------------------------------------------------------------
# Aggregation and report
# --------------------------------------------------------------------------


def metric_defs(args: argparse.Namespace) -> list[C.MetricDef]:
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
    out = C.flatten_phases(run)
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
    return C.metric_table(metric_defs(args), results["summary"], systems, markdown, columns)


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    C.print_header(
        "NodePass forwarding benchmark",
        results["meta"],
        args,
        f"haproxy: nbthread {C.HAPROXY_THREADS}; socat: one forked process per connection; "
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
            notes += C.run_notes(s, r)
    C.print_notes(notes)
    if args.markdown:
        print()
        print(report(results, args, markdown=True))


def collect_meta(args: argparse.Namespace, tools: dict[str, str | None]) -> dict[str, Any]:
    versions = C.tool_versions(tools)
    if "nodepass" in args.systems:
        how = (
            "python -m nodepass"
            if args.nodepass_cmd == DEFAULT_NODEPASS_CMD
            else f"custom command: {args.nodepass_cmd}"
        )
        version = C.nodepass_version()
        versions["nodepass"] = "?" if version is None else f"{version} ({how})"
    return C.run_meta(versions, dict(vars(args)))


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
    p.add_argument(
        "--streams", type=int, default=8, help="parallel streams for the multi-stream test"
    )
    p.add_argument("--chunk", type=int, default=256 * 1024, help="bytes per send() call")
    p.add_argument("--conn-duration", type=float, default=4.0, help="seconds of the conn-rate test")
    p.add_argument(
        "--workers", type=int, default=8, help="concurrent workers in the conn-rate test"
    )
    p.add_argument("--rtt-duration", type=float, default=2.0, help="seconds of the round-trip test")
    p.add_argument(
        "--rtt-cpu",
        type=int,
        default=0,
        help="pin load generator, forwarder and target to this CPU during the "
        "round-trip test (-1: no pinning)",
    )
    p.add_argument(
        "--phases",
        default=",".join(C.PHASES),
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
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="seconds after sending stops for all streams to reach the sink",
    )
    p.add_argument("--settle", type=float, default=0.3, help="pause after each phase (s)")
    p.add_argument(
        "--rss-limit",
        type=float,
        default=2048.0,
        help="MiB; a forwarder whose process tree grows past this is killed",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install missing socat/haproxy (skip those systems)",
    )
    p.add_argument("--json", metavar="FILE", help="write raw results as JSON")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = p.parse_args(argv)
    args.systems = C.parse_systems(p, args.systems, ALL_SYSTEMS)
    if args.ratio_of not in ALL_SYSTEMS:
        p.error(f"--ratio-of must be one of {', '.join(ALL_SYSTEMS)}")
    args.phases = C.parse_phases(p, args.phases)
    if args.quick:
        args.rounds = 1
        args.duration = min(args.duration, 1.0)
        args.conn_duration = min(args.conn_duration, 1.0)
        args.rtt_duration = min(args.rtt_duration, 0.5)
        if args.volume:
            args.volume = min(args.volume, 500.0)
    C.check_run_args(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = C.start_run()

    needed = {c: c for c in ("socat", "haproxy") if c in args.systems}
    tools = C.ensure_commands(needed, install=not args.no_install) if needed else {}
    results: dict[str, Any] = {
        "meta": collect_meta(args, tools),
        "runs": {},
        "skipped": {},
    }
    systems = []
    for s in args.systems:
        if s in tools and not tools[s]:
            results["skipped"][s] = f"{s} not installed"
            C.log(f"[setup] skipping {s}: not installed")
        else:
            systems.append(s)
    args.systems = systems

    interrupted = C.run_rounds(systems, args, results["runs"], run_system, "nodepass-bench-")
    results["summary"] = {s: C.aggregate(r, flatten) for s, r in results["runs"].items()}
    summary = results["summary"]
    ref = args.ratio_of
    results["ratios"] = C.ratios(summary, ref, BASELINES) if ref in summary else {}
    C.end_meta(results["meta"], t_start, interrupted)
    print_report(results, args)
    print(f"\n(total {results['meta']['wall_s']:.0f} s)")
    if args.json:
        C.write_json(args.json, results)
    failed = [s for s in systems if not results["summary"].get(s)]
    if interrupted:
        return 130
    return 1 if failed or results["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
