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
import atexit
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

ALL_SYSTEMS = ("direct", "socat", "haproxy", "nodepass")
BASELINES = ("direct", "socat", "haproxy")
PHASES = ("tput1", "tputN", "connrate", "rtt")
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

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

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


def phase_connrate(fwd: Forwarder, srv: C.TargetServer, args: argparse.Namespace) -> dict[str, Any]:
    load = C.run_load(
        {
            "kind": "connrate",
            "port": fwd.port,
            "workers": args.workers,
            "duration": args.conn_duration,
        },
        timeout=args.conn_duration + 30,
    )
    if "fatal" in load:
        return {"error": load["fatal"]}
    res = {
        "workers": args.workers,
        "count": load["count"],
        "rate": load["rate"],
        "p50_ms": load["latency_s"]["p50"] * 1e3,
        "p99_ms": load["latency_s"]["p99"] * 1e3,
        "latency_ms": {k: (v * 1e3 if k != "n" else v) for k, v in load["latency_s"].items()},
        "errors": load["errors"],
    }
    n_err = sum(load["errors"].values())
    if n_err:
        msg = f"{n_err} failed connections: {load['errors']}"
        # A few failures are reported but do not void the measurement.
        if load["count"] == 0 or n_err > 0.01 * load["count"]:
            res["error"] = msg
        else:
            res["warning"] = msg
    return res


def phase_rtt(fwd: Forwarder, srv: C.TargetServer, args: argparse.Namespace) -> dict[str, Any]:
    # On this VM a wake-up on another CPU costs ~75 us, so without pinning the
    # figure mostly says where the scheduler put the processes. Pinned to one
    # CPU, it measures the work (and context switches) per round trip.
    pin = args.rtt_cpu >= 0
    every_cpu = os.sched_getaffinity(0)
    if pin:
        for pid in (srv.proc.pid, fwd.pid):
            if pid:
                C.set_tree_affinity(pid, {args.rtt_cpu})
    try:
        load = C.run_load(
            {
                "kind": "rtt",
                "port": fwd.port,
                "duration": args.rtt_duration,
                "cpu": args.rtt_cpu if pin else None,
            },
            timeout=args.rtt_duration + 30,
        )
    finally:
        if pin:
            for pid in (srv.proc.pid, fwd.pid):
                if pid:
                    C.set_tree_affinity(pid, every_cpu)
    if "fatal" in load:
        return {"error": load["fatal"]}
    lat = load["latency_s"]
    return {
        "count": lat["n"],
        "p50_us": lat["p50"] * 1e6,
        "p99_us": lat["p99"] * 1e6,
        "latency_us": {k: (v * 1e6 if k != "n" else v) for k, v in lat.items()},
    }


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

            def on_limit(kb: int, fwd: Forwarder = fwd) -> None:
                fwd.killed_reason = (
                    f"killed: process tree RSS {kb / 1024:.0f} MiB > --rss-limit "
                    f"{args.rss_limit:.0f} MiB"
                )
                C.log(f"[{tag}] {fwd.killed_reason}")
                fwd.stop()

            sampler = C.TreeMemorySampler(
                fwd.pid, interval=0.1, limit_kb=int(args.rss_limit * 1024), on_limit=on_limit
            )
            sampler.start()
        phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("tput1", lambda: C.phase_stream(fwd.port, srv, 1, args)),
            ("tputN", lambda: C.phase_stream(fwd.port, srv, args.streams, args)),
            ("connrate", lambda: phase_connrate(fwd, srv, args)),
            ("rtt", lambda: phase_rtt(fwd, srv, args)),
        ]
        for pname, fn in phases:
            if pname not in args.phases:
                continue
            if not fwd.alive():
                msg = (
                    fwd.killed_reason
                    or f"{name} died (rc={fwd.proc.returncode if fwd.proc else '?'})"
                )
                run["errors"].append(f"{pname}: skipped, {msg}")
                continue
            cpu0 = C.proc_cpu_seconds(fwd.pid) if fwd.pid else None
            t0 = time.monotonic()
            try:
                res = fn()
            except (OSError, ValueError, RuntimeError) as exc:
                res = {"error": f"{type(exc).__name__}: {exc}"}
            time.sleep(args.settle)  # let forks exit and be reaped, sockets close
            wall = time.monotonic() - t0
            cpu1 = C.proc_cpu_seconds(fwd.pid) if fwd.pid else None
            if cpu0 is not None and cpu1 is not None:
                res["fwd_cpu_s"] = cpu1 - cpu0
                res["fwd_cpu_cores"] = (cpu1 - cpu0) / max(wall - args.settle, 1e-9)
            if not fwd.alive():
                extra = fwd.killed_reason or f"{name} died during the test"
                res["error"] = "; ".join(filter(None, [res.get("error"), extra]))
            run["phases"][pname] = res
            if res.get("error"):
                run["errors"].append(f"{pname}: {res['error']}")
            if res.get("warning"):
                run.setdefault("warnings", []).append(f"{pname}: {res['warning']}")
            C.log(f"[{tag}] {pname:8s} {describe_phase(pname, res)}")
    finally:
        if sampler is not None:
            run["memory"] = sampler.stop()
        if fwd.proc is not None and fwd.proc.poll() is not None and not fwd.killed_reason:
            run["errors"].append(f"{name} exited early rc={fwd.proc.returncode}: {fwd.log_tail(5)}")
        fwd.stop()
    return run


def describe_phase(pname: str, res: dict[str, Any]) -> str:
    if "mb_s" in res:
        s = f"{res['mb_s']:9.1f} MB/s  ({res['received_bytes'] / 1e6:.0f} MB, drain {res['drain_s']:.2f}s)"
    elif "rate" in res:
        s = f"{res['rate']:9.0f} conn/s  p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms"
    elif "p50_us" in res:
        s = f"p50 {res['p50_us']:.1f} us  p99 {res['p99_us']:.1f} us  ({res['count']} round trips)"
    else:
        s = ""
    if "fwd_cpu_cores" in res:
        s += f"  fwd cpu {res['fwd_cpu_cores']:.2f} cores"
    if res.get("error"):
        s += f"  ERROR: {res['error']}"
    return s


# --------------------------------------------------------------------------
# Aggregation and report
# --------------------------------------------------------------------------


# key, label, higher_is_better (None: no ratio direction)
def metric_defs(args: argparse.Namespace) -> list[tuple[str, str, bool | None]]:
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
    out: dict[str, float] = {}
    ph = run["phases"]

    def ok(p: str) -> dict[str, Any] | None:
        r = ph.get(p)
        return r if r and not r.get("error") else None

    if r := ok("tput1"):
        out["tput1_mb_s"] = r["mb_s"]
    if r := ok("tputN"):
        out["tputN_mb_s"] = r["mb_s"]
    if r := ok("connrate"):
        out["conn_rate"] = r["rate"]
        out["conn_p50_ms"] = r["p50_ms"]
        out["conn_p99_ms"] = r["p99_ms"]
    if r := ok("rtt"):
        out["rtt_p50_us"] = r["p50_us"]
        out["rtt_p99_us"] = r["p99_us"]
    for p, key in (("tput1", "cpu_tput1"), ("tputN", "cpu_tputN"), ("connrate", "cpu_conn")):
        if (r := ok(p)) and "fwd_cpu_cores" in r:
            out[key] = r["fwd_cpu_cores"]
    if run.get("rss_idle_kb"):
        out["rss_idle_mib"] = run["rss_idle_kb"] / 1024
    mem = run.get("memory")
    if mem and mem.get("main_hwm_kb"):
        out["rss_main_mib"] = mem["main_hwm_kb"] / 1024
        out["rss_tree_mib"] = mem["tree_peak_kb"] / 1024
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median over rounds; memory: the maximum (it is a peak)."""
    flat = [flatten(r) for r in runs]
    keys = {k for f in flat for k in f}
    out = {}
    for k in keys:
        vals = [f[k] for f in flat if k in f]
        out[k] = max(vals) if k.startswith("rss_") else statistics.median(vals)
    return out


def compute_ratios(summary: dict[str, dict[str, float]], ref: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    if ref not in summary:
        return out
    for base in BASELINES:
        if base == ref or base not in summary:
            continue
        out[base] = {
            k: summary[ref][k] / v for k, v in summary[base].items() if k in summary[ref] and v
        }
    return out


def report(results: dict[str, Any], args: argparse.Namespace, markdown: bool = False) -> str:
    summary = results["summary"]
    ratios = results["ratios"]
    ref = args.ratio_of
    systems = [s for s in args.systems if s in results["runs"]]
    bases = [b for b in BASELINES if b in ratios]
    header = ["metric", *systems, *(f"{ref}/{b}" for b in bases), "better"]
    rows = []
    for key, label, hib in metric_defs(args):
        if not any(key in summary.get(s, {}) for s in systems):
            continue
        row = [label.strip() if markdown else label]
        for s in systems:
            v = summary.get(s, {}).get(key)
            digits = 3 if key.startswith(("conn_p", "cpu_")) else 1
            row.append(C.fmt_num(v, digits))
        for b in bases:
            r = ratios[b].get(key)
            row.append("-" if r is None or hib is None else f"{r:.2f}x")
        row.append("higher" if hib else ("" if hib is None else "lower"))
        rows.append(row)
    return C.render_table(header, rows, markdown=markdown)


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    meta = results["meta"]
    print()
    print(
        f"NodePass forwarding benchmark  {meta['date']}  host={meta['host']}  "
        f"cpus={meta['cpus']}  python={meta['python']}"
    )
    la0, la1 = meta["loadavg_start"][0], meta["loadavg_end"][0]
    print(
        f"cpu: {meta['cpu_model']}  kernel {meta['kernel']}  "
        f"load average (1 min) {la0:.2f} at start, {la1:.2f} at end"
    )
    stream = f"{args.volume:.0f} MB" if args.volume else f"{args.duration:g}s"
    print(
        f"rounds={args.rounds} (median; RSS = max)  stream={stream}"
        f"  conn={args.conn_duration:g}s x {args.workers} workers  rtt={args.rtt_duration:g}s"
        + (f" (pinned to CPU {args.rtt_cpu})" if args.rtt_cpu >= 0 else " (not pinned)")
    )
    for s, v in meta["versions"].items():
        print(f"  {s}: {v}")
    print(
        f"  haproxy: nbthread {C.HAPROXY_THREADS}; socat: one forked process per connection; "
        f"MB = 10^6 bytes; ratios = {args.ratio_of} / baseline, same run"
    )
    print()
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
            for e in r["errors"]:
                notes.append(f"{s} (round {r['round']}): {e}")
            for w in r.get("warnings", []):
                notes.append(f"{s} (round {r['round']}, warning): {w}")
    if notes:
        print()
        for n in notes:
            print("note: " + n)
    if args.markdown:
        print()
        print(report(results, args, markdown=True))


def collect_meta(args: argparse.Namespace, tools: dict[str, str | None]) -> dict[str, Any]:
    versions = {}
    if "socat" in args.systems and tools.get("socat"):
        versions["socat"] = C.command_version(["socat", "-V"])
    if "haproxy" in args.systems and tools.get("haproxy"):
        versions["haproxy"] = C.command_version(["haproxy", "-v"])
    if "nodepass" in args.systems:
        try:
            out = subprocess.run(
                [sys.executable, "-c", "import nodepass; print(nodepass.__version__)"],
                capture_output=True,
                text=True,
                timeout=20,
                cwd=C.REPO_ROOT,
            )
            versions["nodepass"] = (out.stdout.strip() or "?") + (
                " (python -m nodepass)"
                if args.nodepass_cmd == DEFAULT_NODEPASS_CMD
                else f" (custom command: {args.nodepass_cmd})"
            )
        except (OSError, subprocess.SubprocessError):
            versions["nodepass"] = "?"
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "haproxy_nbthread": C.HAPROXY_THREADS,
        "loadavg_start": os.getloadavg(),
        "args": {k: v for k, v in vars(args).items()},
    }


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
        default=",".join(PHASES),
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
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in args.systems if s not in ALL_SYSTEMS]
    if bad:
        p.error(f"unknown system(s): {', '.join(bad)}")
    if args.ratio_of not in ALL_SYSTEMS:
        p.error(f"--ratio-of must be one of {', '.join(ALL_SYSTEMS)}")
    args.phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    bad = [s for s in args.phases if s not in PHASES]
    if bad:
        p.error(f"unknown phase(s): {', '.join(bad)} (known: {', '.join(PHASES)})")
    if args.quick:
        args.rounds = 1
        args.duration = min(args.duration, 1.0)
        args.conn_duration = min(args.conn_duration, 1.0)
        args.rtt_duration = min(args.rtt_duration, 0.5)
        if args.volume:
            args.volume = min(args.volume, 500.0)
    if args.rtt_cpu >= 0 and args.rtt_cpu not in os.sched_getaffinity(0):
        p.error(f"--rtt-cpu {args.rtt_cpu} is not available to this process")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.install_signal_handlers()
    atexit.register(C.REGISTRY.kill_all)
    t_start = time.monotonic()

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

    interrupted = False
    srv = None
    try:
        with tempfile.TemporaryDirectory(prefix="nodepass-bench-") as tmpdir:
            srv = C.TargetServer.start()
            C.log(f"[setup] target (sink+echo) pid {srv.proc.pid} on 127.0.0.1:{srv.port}")
            for rnd in range(args.rounds):
                order = systems if rnd % 2 == 0 else list(reversed(systems))
                for s in order:
                    tag = f"{s} r{rnd + 1}"
                    if srv.proc.poll() is not None:
                        raise RuntimeError("target server died")
                    run: dict[str, Any] = {"round": rnd + 1}
                    results["runs"].setdefault(s, []).append(run)
                    run_system(s, srv, tmpdir, args, tag, run)
    except KeyboardInterrupt:
        interrupted = True
        C.log("\ninterrupted: stopping children, reporting what was measured")
    finally:
        if srv is not None:
            srv.stop()
        C.REGISTRY.kill_all()

    results["summary"] = {s: aggregate(r) for s, r in results["runs"].items()}
    results["ratios"] = compute_ratios(results["summary"], args.ratio_of)
    results["meta"]["wall_s"] = time.monotonic() - t_start
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["interrupted"] = interrupted
    print_report(results, args)
    print(f"\n(total {results['meta']['wall_s']:.0f} s)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
        print(f"raw results: {args.json}")
    failed = [s for s in systems if not results["summary"].get(s)]
    if interrupted:
        return 130
    return 1 if failed or results["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
