"""Command-line options the benchmarks share, and their checks."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from np_bench.phases import PHASES


def parse_systems(p: argparse.ArgumentParser, value: str, known: Sequence[str]) -> list[str]:
    """``--systems`` as a list; a name not in ``known`` is a usage error."""
    systems = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in systems if s not in known]
    if bad:
        p.error(f"unknown system(s): {', '.join(bad)}")
    return systems


def parse_phases(
    p: argparse.ArgumentParser, value: str, known: Sequence[str] = PHASES
) -> list[str]:
    """``--phases`` as a list; a name not in ``known`` is a usage error."""
    phases = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in phases if s not in known]
    if bad:
        p.error(f"unknown phase(s): {', '.join(bad)} (known: {', '.join(known)})")
    return phases


def check_run_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors in ``--rtt-cpu`` and ``--rounds`` (checked after ``--quick`` applied)."""
    if args.rtt_cpu >= 0 and args.rtt_cpu not in os.sched_getaffinity(0):
        p.error(f"--rtt-cpu {args.rtt_cpu} is not available to this process")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")


def add_run_options(p: argparse.ArgumentParser, what: str = "forwarder") -> None:
    """The options every data-plane benchmark has, with the same meaning and defaults."""
    p.add_argument(
        "--streams", type=int, default=8, help="parallel streams for the multi-stream test"
    )
    p.add_argument("--chunk", type=int, default=256 * 1024, help="bytes per send() call")
    p.add_argument(
        "--workers", type=int, default=8, help="concurrent workers in the conn-rate test"
    )
    p.add_argument("--rtt-duration", type=float, default=2.0, help="seconds of the round-trip test")
    p.add_argument(
        "--rtt-cpu",
        type=int,
        default=0,
        help=f"pin load generator, {what} and target to this CPU during the "
        "round-trip test (-1: no pinning)",
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
        help=f"MiB; a {what} one of whose process trees grows past this is killed",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install missing socat/haproxy (skip those systems)",
    )
    p.add_argument("--json", metavar="FILE", help="write raw results as JSON")
