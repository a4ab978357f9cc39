"""Rounds, run metadata, the report's header and notes, JSON."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from np_bench.base import REPO_ROOT, log
from np_bench.procs import REGISTRY
from np_bench.target import TargetServer
from np_bench.tools import HAPROXY_THREADS


def run_rounds(
    systems: Sequence[str],
    args: Any,
    runs: dict[str, list[dict[str, Any]]],
    run_system: Callable[[str, TargetServer, str, Any, str, dict[str, Any]], object],
    prefix: str,
) -> bool:
    """
    Run every system ``args.rounds`` times against one target server, the
    order alternating (ABBA); each run's dict is added to ``runs`` before
    ``run_system`` fills it. Files go to a temporary directory (``prefix``),
    or to ``args.log_dir`` where the benchmark has that option and it is set.
    Returns whether it was interrupted; every child is killed either way.
    """
    srv = None
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmpdir:
            log_dir = getattr(args, "log_dir", None)
            if log_dir:
                os.makedirs(log_dir, exist_ok=True)
                tmpdir = log_dir  # configs, certificate and process logs are kept
            srv = TargetServer.start()
            log(f"[setup] target (sink+echo) pid {srv.proc.pid} on 127.0.0.1:{srv.port}")
            for rnd in range(args.rounds):
                order = systems if rnd % 2 == 0 else list(reversed(systems))
                for s in order:
                    if srv.proc.poll() is not None:
                        raise RuntimeError("target server died")
                    run: dict[str, Any] = {"round": rnd + 1}
                    runs.setdefault(s, []).append(run)
                    run_system(s, srv, tmpdir, args, f"{s} r{rnd + 1}", run)
    except KeyboardInterrupt:
        log("\ninterrupted: stopping children, reporting what was measured")
        return True
    finally:
        if srv is not None:
            srv.stop()
        REGISTRY.kill_all()
    return False


def run_meta(versions: dict[str, str], args: dict[str, Any]) -> dict[str, Any]:
    """A result's ``meta``: date, host, CPU, kernel, Python, ``versions``, load, ``args``."""
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
        "commit": git_commit(),
        "haproxy_nbthread": HAPROXY_THREADS,
        "loadavg_start": os.getloadavg(),
        "args": args,
    }


def git_commit(rev: str = "HEAD", dirty_check: bool = True) -> str:
    """``git rev-parse --short REV`` of the checkout ("?" without git); "+dirty" when
    ``dirty_check`` and ``nodepass/`` has uncommitted changes."""
    try:
        short = subprocess.run(
            ["git", "rev-parse", "--short", rev],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=REPO_ROOT,
        ).stdout.strip()
        dirty = (
            dirty_check
            and subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "nodepass"],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=REPO_ROOT,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (short or "?") + ("+dirty" if dirty else "")


def export_commit(rev: str, dest: str) -> str:
    """The tree of commit ``rev`` (``git archive``) extracted into ``dest``; its short hash.

    Benchmarking an exported commit measures exactly that commit, whatever is
    being edited in the checkout meanwhile. Raises RuntimeError if git fails.
    """
    short = git_commit(rev, dirty_check=False)
    if short == "?":
        raise RuntimeError(f"git does not know {rev!r}")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", short],
        capture_output=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {short} failed: {archive.stderr.decode()[-300:]}")
    tar = subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, timeout=120)
    if tar.returncode != 0:
        raise RuntimeError(f"extracting git archive {short} failed")
    return short


def print_header(title: str, meta: dict[str, Any], args: Any, note: str) -> None:
    """The report's first lines: ``title``, host, load, test sizes, versions, ``note``."""
    print()
    print(
        f"{title}  {meta['date']}  host={meta['host']}  "
        f"cpus={meta['cpus']}  python={meta['python']}"
    )
    la0, la1 = meta["loadavg_start"][0], meta["loadavg_end"][0]
    print(
        f"cpu: {meta['cpu_model']}  kernel {meta['kernel']}  "
        f"load average (1 min) {la0:.2f} at start, {la1:.2f} at end"
    )
    print(f"commit {meta['commit']}")
    volume = getattr(args, "volume", None)
    stream = f"{volume:.0f} MB" if volume else f"{args.duration:g}s"
    print(
        f"rounds={args.rounds} (median; RSS = max)  stream={stream}"
        f"  conn={args.conn_duration:g}s x {args.workers} workers  rtt={args.rtt_duration:g}s"
        + (f" (pinned to CPU {args.rtt_cpu})" if args.rtt_cpu >= 0 else " (not pinned)")
    )
    for s, v in meta["versions"].items():
        print(f"  {s}: {v}")
    print(f"  {note}")
    print()


def run_notes(system: str, run: dict[str, Any]) -> list[str]:
    """The errors and warnings of one run of ``system``, as notes."""
    out = [f"{system} (round {run['round']}): {e}" for e in run["errors"]]
    out += [f"{system} (round {run['round']}, warning): {w}" for w in run.get("warnings", [])]
    return out


def print_notes(notes: Sequence[str]) -> None:
    """The notes under the tables, after a blank line (nothing when there are none)."""
    if notes:
        print()
        for n in notes:
            print("note: " + n)


def end_meta(meta: dict[str, Any], t_start: float, interrupted: bool) -> None:
    """Add the wall time, the load average at the end and ``interrupted`` to ``meta``."""
    meta["wall_s"] = time.monotonic() - t_start
    meta["loadavg_end"] = os.getloadavg()
    meta["interrupted"] = interrupted


def write_json(path: str, results: dict[str, Any]) -> None:
    """The raw results as JSON in ``path`` (its directory is created); says so on stdout."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"raw results: {path}")
