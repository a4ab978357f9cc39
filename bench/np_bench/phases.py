"""The measurements, each run against a started system, and how a run strings them together.

Every phase returns a dict of figures (``error`` when it failed, ``warning``
for something worth a note). ``run_phases`` runs those the benchmark asked
for, adds the CPU the system used meanwhile, and logs one line per phase.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from np_bench.base import log
from np_bench.loadgen import Holder, run_load
from np_bench.procfs import TreeMemorySampler, set_tree_affinity
from np_bench.target import TargetServer

#: The phases of forward.py and pair.py, in the order they run (``--phases`` picks some).
PHASES = ("tput1", "tputN", "connrate", "rtt")


def phase_stream(port: int, srv: TargetServer, streams: int, args: Any) -> dict[str, Any]:
    """
    Throughput through C{port} with C{streams} parallel senders into the
    sink: for C{args.duration} seconds, or C{args.volume} MB in all when the
    benchmark has that option and it is set.
    """
    srv.reset()
    spec: dict[str, Any] = {
        "kind": "stream",
        "port": port,
        "streams": streams,
        "chunk": args.chunk,
    }
    volume = getattr(args, "volume", None)
    if volume:
        spec["bytes_per_stream"] = int(volume * 1e6 / streams)
        spec["max_time"] = args.max_time
        send_time = args.max_time
    else:
        spec["duration"] = args.duration
        send_time = args.duration
    load = run_load(spec, timeout=send_time + 30)
    if "fatal" in load:
        return {"error": load["fatal"]}
    st, complete = srv.wait_sinks_closed(streams, timeout=args.drain_timeout)
    received = st["bytes"] + (0 if complete else st["open_bytes"])
    t_end = st["t_last"] if complete and st["t_last"] else st["now"]
    elapsed = t_end - load["t0"]
    res: dict[str, Any] = {
        "streams": streams,
        "sent_bytes": load["sent_bytes"],
        "received_bytes": received,
        "elapsed_s": elapsed,
        "send_s": load["t_send_done"] - load["t0"],
        "drain_s": max(0.0, t_end - load["t_send_done"]),
        "mb_s": received / elapsed / 1e6 if elapsed > 0 else math.nan,
        "complete": complete,
    }
    errors = list(load["errors"])
    if not complete:
        errors.append(
            f"only {st['closed']}/{streams} streams reached the sink's EOF within "
            f"{args.drain_timeout:.0f}s after sending stopped"
        )
    elif received != load["sent_bytes"]:
        errors.append(f"data lost: sent {load['sent_bytes']} B, sink got {received} B")
    if errors:
        res["error"] = "; ".join(errors)
    return res


def phase_down(port: int, srv: TargetServer, streams: int, args: Any) -> dict[str, Any]:
    """
    Throughput from the target's source to the user through ``port``: each of
    ``streams`` connections asks for ``args.duration`` seconds of data, and reads
    until the target's EOF. Every byte the target sent must arrive.
    """
    srv.reset()
    load = run_load(
        {"kind": "down", "port": port, "streams": streams, "duration": args.duration},
        timeout=args.duration + args.drain_timeout + 30,
    )
    if "fatal" in load:
        return {"error": load["fatal"]}
    st = srv.stats()
    elapsed = load["t_end"] - load["t0"]
    got = load["received_bytes"]
    res: dict[str, Any] = {
        "streams": streams,
        "sent_bytes": st["source_bytes"],
        "received_bytes": got,
        "elapsed_s": elapsed,
        "drain_s": max(0.0, elapsed - args.duration),
        "mb_s": got / elapsed / 1e6 if elapsed > 0 else math.nan,
    }
    errors = list(load["errors"])
    if st["source_conns"] != streams:
        errors.append(f"{st['source_conns']}/{streams} streams reached the source")
    elif got != st["source_bytes"]:
        errors.append(f"data lost: the source sent {st['source_bytes']} B, the user got {got} B")
    if errors:
        res["error"] = "; ".join(errors)
    return res


def phase_udp(port: int, srv: TargetServer, args: Any) -> dict[str, Any]:
    """
    ``args.udp_rate`` datagrams/s of ``args.udp_size`` B for ``args.udp_duration``
    s from one socket through ``port`` to the target's UDP echo. ``loss``: the
    share of bytes that did not come back (both directions); ``loss_up``: the
    share that did not reach the target. The target's counters are reset after
    the warm-up datagram came back.
    """
    srv.reset()
    load = run_load(
        {
            "kind": "udp",
            "port": port,
            "control": srv.control,
            "rate": args.udp_rate,
            "duration": args.udp_duration,
            "size": args.udp_size,
        },
        timeout=args.udp_duration + 30,
    )
    if "fatal" in load:
        return {"error": load["fatal"]}
    st = srv.stats()
    sent = load["sent_bytes"]
    res = {
        "sent": load["sent"],
        "rate": load["rate"],
        "sent_bytes": sent,
        "received_bytes": load["received_bytes"],
        "target_bytes": st["udp_bytes"],
        "loss": load["loss"],
        "loss_up": 1 - min(st["udp_bytes"], sent) / sent if sent else math.nan,
        "send_errors": load["send_errors"],
    }
    if load["rate"] < 0.9 * args.udp_rate:
        res["warning"] = f"sent only {load['rate']:.0f} datagrams/s"
    return res


def _stable_rss(sut: SystemUnderTest, timeout: float = 5.0) -> dict[str, dict[int, int]]:
    """``sut.rss_kb()`` once two readings 0.5 s apart agree within 1% (or at ``timeout``)."""
    deadline = time.monotonic() + timeout
    prev = sut.rss_kb()
    while True:
        time.sleep(0.5)
        cur = sut.rss_kb()
        a = sum(sum(p.values()) for p in prev.values())
        b = sum(sum(p.values()) for p in cur.values())
        if abs(b - a) <= 0.01 * max(a, 1) or time.monotonic() >= deadline:
            return cur
        prev = cur


def phase_idle(sut: SystemUnderTest, args: Any) -> dict[str, Any]:
    """
    ``args.idle_conns`` user connections through ``sut`` to the echo target,
    each proven by one 2-byte echo, then held with no traffic; the RSS of every
    process of every hop then (once stable), and before.
    """
    before = sut.rss_kb()
    holder = Holder(sut.port, args.idle_conns, concurrency=16, timeout=args.idle_timeout)
    try:
        opened = holder.opened()
        if "fatal" in opened:
            return {"error": opened["fatal"]}
        after = _stable_rss(sut)
    finally:
        closed = holder.close()
    total_before = sum(sum(p.values()) for p in before.values())
    total_after = sum(sum(p.values()) for p in after.values())
    n = opened["opened"]
    res: dict[str, Any] = {
        "count": args.idle_conns,
        "opened": n,
        "open_s": opened["open_s"],
        "errors": opened["errors"],
        "still_open": closed.get("still_open"),
        "rss_before_kb": before,
        "rss_kb": after,
        "max_process_kb": max((kb for p in after.values() for kb in p.values()), default=0),
        "processes": sum(len(p) for p in after.values()),
        "total_kb": total_after,
        "per_conn_kb": (total_after - total_before) / n if n else math.nan,
    }
    if n < args.idle_conns:
        res["error"] = f"only {n}/{args.idle_conns} connections opened: {opened['errors']}"
    elif closed.get("still_open") is not None and closed["still_open"] < n:
        res["warning"] = f"{n - closed['still_open']} of {n} idle connections were closed early"
    return res


def phase_connrate(
    port: int,
    args: Any,
    kind: str = "connrate",
    extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """
    ``args.workers`` workers doing connect + echo + close through ``port`` for
    ``args.conn_duration`` seconds, with the load generator's ``kind``;
    ``extra`` adds fields computed from the load generator's result.
    """
    load = run_load(
        {
            "kind": kind,
            "port": port,
            "workers": args.workers,
            "duration": args.conn_duration,
        },
        timeout=args.conn_duration + 30,
    )
    if "fatal" in load:
        return {"error": load["fatal"]}
    res: dict[str, Any] = {
        "workers": args.workers,
        "count": load["count"],
        "rate": load["rate"],
        "p50_ms": load["latency_s"]["p50"] * 1e3,
        "p99_ms": load["latency_s"]["p99"] * 1e3,
        "latency_ms": {k: (v * 1e3 if k != "n" else v) for k, v in load["latency_s"].items()},
        "errors": load["errors"],
    }
    if extra is not None:
        res.update(extra(load))
    n_err = sum(load["errors"].values())
    if n_err:
        msg = f"{n_err} failed connections: {load['errors']}"
        # A few failures are reported but do not void the measurement.
        if load["count"] == 0 or n_err > 0.01 * load["count"]:
            res["error"] = msg
        else:
            res["warning"] = msg
    return res


def phase_rtt(port: int, pids: Sequence[int], args: Any) -> dict[str, Any]:
    """
    64-byte round trips on one connection through ``port`` for
    ``args.rtt_duration`` seconds. With ``args.rtt_cpu`` >= 0, the load
    generator and the process trees of ``pids`` are pinned to that CPU
    meanwhile: on this VM a wake-up on another CPU costs ~75 us, so without
    pinning the figure mostly says where the scheduler put the processes.
    Pinned to one CPU, it measures the work (and context switches) per
    round trip.
    """
    pin = args.rtt_cpu >= 0
    every_cpu = os.sched_getaffinity(0)
    if pin:
        for pid in pids:
            set_tree_affinity(pid, {args.rtt_cpu})
    try:
        load = run_load(
            {
                "kind": "rtt",
                "port": port,
                "duration": args.rtt_duration,
                "cpu": args.rtt_cpu if pin else None,
            },
            timeout=args.rtt_duration + 30,
        )
    finally:
        if pin:
            for pid in pids:
                set_tree_affinity(pid, every_cpu)
    if "fatal" in load:
        return {"error": load["fatal"]}
    lat = load["latency_s"]
    return {
        "count": lat["n"],
        "p50_us": lat["p50"] * 1e6,
        "p99_us": lat["p99"] * 1e6,
        "latency_us": {k: (v * 1e6 if k != "n" else v) for k, v in lat.items()},
    }


def describe_phase(res: dict[str, Any]) -> str:
    """One phase result as a progress line."""
    if "mb_s" in res:
        s = (
            f"{res['mb_s']:9.1f} MB/s  ({res['received_bytes'] / 1e6:.0f} MB,"
            f" drain {res['drain_s']:.2f}s)"
        )
    elif "loss" in res:
        s = (
            f"loss {res['loss'] * 100:.2f}% round trip, {res['loss_up'] * 100:.2f}% to the target"
            f"  ({res['sent']} datagrams at {res['rate']:.0f}/s)"
        )
    elif "rate" in res:
        s = f"{res['rate']:9.0f} conn/s  p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms"
        if "per_second" in res:
            s += f"  per second {res['per_second']}"
            if any(res["errors_per_second"]):
                s += f"  failed per second {res['errors_per_second']}"
    elif "per_conn_kb" in res:
        s = (
            f"{res['opened']} idle connections: largest process {res['max_process_kb'] / 1024:.1f}"
            f" MiB, {res['processes']} processes {res['total_kb'] / 1024:.1f} MiB,"
            f" {res['per_conn_kb']:.1f} kB per connection (opened in {res['open_s']:.1f}s)"
        )
    elif "p50_us" in res:
        s = f"p50 {res['p50_us']:.1f} us  p99 {res['p99_us']:.1f} us  ({res['count']} round trips)"
    else:
        s = ""
    if "fwd_cpu_cores" in res:
        s += f"  fwd cpu {res['fwd_cpu_cores']:.2f} cores"
    if res.get("error"):
        s += f"  ERROR: {res['error']}"
    return s


class SystemUnderTest(Protocol):
    """What the phases need of a started system (systems.System)."""

    port: int
    killed_reason: str | None

    def alive(self) -> bool: ...

    def cpu_seconds(self) -> float | None: ...

    def rss_kb(self) -> dict[str, dict[int, int]]: ...

    def skip_reason(self) -> str: ...

    def death_reason(self) -> str: ...

    def stop(self) -> None: ...


def rss_guard(sut: SystemUnderTest, pid: int, tree: str, args: Any, tag: str) -> TreeMemorySampler:
    """
    A started memory sampler of ``pid``'s process tree that stops ``sut`` once
    the tree grows past ``args.rss_limit`` MiB; ``tree`` names it in the reason.
    """

    def on_limit(kb: int) -> None:
        sut.killed_reason = (
            f"killed: {tree} RSS {kb / 1024:.0f} MiB > --rss-limit {args.rss_limit:.0f} MiB"
        )
        log(f"[{tag}] {sut.killed_reason}")
        sut.stop()

    sampler = TreeMemorySampler(
        pid, interval=0.1, limit_kb=int(args.rss_limit * 1024), on_limit=on_limit
    )
    sampler.start()
    return sampler


def run_phases(
    sut: SystemUnderTest,
    phases: Sequence[tuple[str, Callable[[], dict[str, Any]]]],
    args: Any,
    tag: str,
    run: dict[str, Any],
    keep_cpu_s: bool = False,
) -> None:
    """
    Run those of ``phases`` that ``args.phases`` names, each followed by
    ``args.settle`` seconds of pause; results, errors and warnings go into
    ``run``. The CPU ``sut`` used is added to each result as ``fwd_cpu_cores``
    (and, with ``keep_cpu_s``, in seconds as ``fwd_cpu_s``).
    """
    for pname, fn in phases:
        if pname not in args.phases:
            continue
        if not sut.alive():
            run["errors"].append(f"{pname}: skipped, {sut.skip_reason()}")
            continue
        cpu0 = sut.cpu_seconds()
        t0 = time.monotonic()
        try:
            res = fn()
        except (OSError, ValueError, RuntimeError) as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"}
        time.sleep(args.settle)  # let forks exit and be reaped, sockets close
        wall = time.monotonic() - t0
        cpu1 = sut.cpu_seconds()
        if cpu0 is not None and cpu1 is not None:
            if keep_cpu_s:
                res["fwd_cpu_s"] = cpu1 - cpu0
            res["fwd_cpu_cores"] = (cpu1 - cpu0) / max(wall - args.settle, 1e-9)
        if not sut.alive():
            res["error"] = "; ".join(filter(None, [res.get("error"), sut.death_reason()]))
        run["phases"][pname] = res
        if res.get("error"):
            run["errors"].append(f"{pname}: {res['error']}")
        if res.get("warning"):
            run.setdefault("warnings", []).append(f"{pname}: {res['warning']}")
        log(f"[{tag}] {pname:8s} {describe_phase(res)}")


def flatten_phases(run: dict[str, Any]) -> dict[str, float]:
    """One run's phase figures (only those measured without error) by metric key."""
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
    if r := ok("down1"):
        out["down1_mb_s"] = r["mb_s"]
    if r := ok("udp"):
        out["udp_loss_pct"] = r["loss"] * 100
        out["udp_loss_up_pct"] = r["loss_up"] * 100
    if r := ok("idle"):
        out["rss_idle1k_max_mib"] = r["max_process_kb"] / 1024
        out["rss_idle1k_total_mib"] = r["total_kb"] / 1024
        out["idle1k_per_conn_kb"] = r["per_conn_kb"]
    moved = cpu = 0.0
    for p in ("tput1", "down1", "tputN"):
        if (r := ok(p)) and "fwd_cpu_s" in r:
            moved += r["received_bytes"]
            cpu += r["fwd_cpu_s"]
    if moved:
        out["cpu_s_per_gb"] = cpu / (moved / 1e9)
    for p, key in (
        ("tput1", "cpu_tput1"),
        ("tputN", "cpu_tputN"),
        ("down1", "cpu_down1"),
        ("connrate", "cpu_conn"),
    ):
        if (r := ok(p)) and "fwd_cpu_cores" in r:
            out[key] = r["fwd_cpu_cores"]
    return out
