"""Tests for L{nodepass.master.sysinfo}: /proc parsers and the threaded collector."""

from __future__ import annotations

import queue
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool

from nodepass.master.sysinfo import (
    INT64_MAX,
    SYSTEM_FIELDS,
    CpuSampler,
    collect,
    cpuPercent,
    parseCpuStat,
    parseDiskstats,
    parseMeminfo,
    parseNetDev,
    parseUptime,
)

STAT = """\
cpu  100 5 50 800 40 0 5 0 0 0
cpu0 50 2 25 400 20 0 3 0 0 0
intr 12345
"""

STAT_LATER = """\
cpu  130 5 60 850 40 0 15 0 0 0
cpu0 65 2 30 425 20 0 8 0 0 0
"""

MEMINFO = """\
MemTotal:       24684084 kB
MemFree:        22000000 kB
MemAvailable:   24324516 kB
Buffers:          100000 kB
Cached:           300000 kB
SwapCached:            0 kB
SwapTotal:       2097148 kB
SwapFree:        1048574 kB
HugePages_Total:       0
"""

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 2335684750983 171040748    0    0    0     0          0         0 2335684750983 171040748    0    0    0     0       0          0
  eth0: 110469906   82817    0    0    0     0          0         0   176523    1741    0    0    0     0       0          0
wlan0:1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0
docker0:    5000 1 0 0 0 0 0 0 5000 1 0 0 0 0 0 0
vethab12: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0
br-1234: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0
virbr0: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0
podman0: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0
"""

# Fields: major minor name reads merged sectors_read ms writes merged sectors_written ...
DISKSTATS = """\
   7       0 loop0 10 0 1000 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 259       0 nvme0n1 100 0 2000 0 50 0 4000 0 0 0 0 0 0 0 0 0 0
 259       1 nvme0n1p1 90 0 1800 0 40 0 3000 0 0 0 0 0 0 0 0 0 0
 179       0 mmcblk0 10 0 300 0 5 0 100 0 0 0 0 0 0 0 0 0 0
 179       1 mmcblk0p1 9 0 200 0 4 0 50 0 0 0 0 0 0 0 0 0 0
   8       0 sda 10 0 10 0 10 0 20 0 0 0 0 0 0 0 0 0 0
   8       1 sda1 10 0 8 0 10 0 16 0 0 0 0 0 0 0 0 0 0
 253       0 dm-0 10 0 777 0 10 0 777 0 0 0 0 0 0 0 0 0 0
   9       0 md0 10 0 777 0 10 0 777 0 0 0 0 0 0 0 0 0 0
   1       0 ram0 10 0 777 0 10 0 777 0 0 0 0 0 0 0 0 0 0
 253       0 zram0 10 0 777 0 10 0 777 0 0 0 0 0 0 0 0 0 0
   8      16 sdb 1 0 2
"""

SYS_BLOCK = ["loop0", "nvme0n1", "mmcblk0", "sda", "dm-0", "md0", "ram0", "zram0", "sdb"]


def test_parseCpuStat() -> None:
    assert parseCpuStat(STAT) == (1000, 800)
    assert parseCpuStat("cpu0 1 2 3 4 5\n") is None
    assert parseCpuStat("") is None
    assert parseCpuStat("cpu  1 2 x 4 5\n") is None


def test_cpuPercent() -> None:
    # dtotal = 1100 - 1000 = 100, didle = 850 - 800 = 50: 50 % busy.
    later = parseCpuStat(STAT_LATER)
    assert later == (1100, 850)
    assert cpuPercent((1000, 800), later) == 50
    assert cpuPercent((1000, 800), (1000, 800)) == 0
    assert cpuPercent((1000, 800), (1100, 800)) == 100
    assert cpuPercent((1000, 800), (1003, 802)) == 33  # integer division
    assert cpuPercent((1000, 800), (900, 700)) == 0  # counters went backwards


def test_cpuSampler() -> None:
    sampler = CpuSampler()
    assert not sampler.usable(0.0)
    assert sampler.update((1000, 800), 5.0) == -1
    assert not sampler.usable(5.05)
    assert sampler.usable(5.2)
    assert sampler.usable(15.0)
    assert not sampler.usable(15.2)
    assert sampler.update((1100, 850), 7.0) == 50
    # Within 100 ms of a sample the last figure is repeated and the sample kept.
    assert sampler.usable(7.01)
    assert sampler.update((1101, 850), 7.01) == 50
    assert sampler.update((1300, 1050), 7.2) == 0
    assert sampler.update(None, 8.0) == -1
    assert not sampler.usable(8.01)
    assert sampler.update((1, 1), 9.0) == -1


def test_parseMeminfo() -> None:
    assert parseMeminfo(MEMINFO) == {
        "mem_total": 24684084 * 1024,
        "mem_used": (24684084 - 24324516) * 1024,
        "swap_total": 2097148 * 1024,
        "swap_used": (2097148 - 1048574) * 1024,
    }


def test_parseMeminfoWithoutMemAvailable() -> None:
    old = "\n".join(line for line in MEMINFO.splitlines() if "MemAvailable" not in line)
    assert parseMeminfo(old)["mem_used"] == (24684084 - 22400000) * 1024
    assert parseMeminfo("") == dict.fromkeys(
        ("mem_total", "mem_used", "swap_total", "swap_used"), 0
    )


def test_parseNetDevSkipsLoopbackAndVirtual() -> None:
    assert parseNetDev(NET_DEV) == (110469906 + 1000, 176523 + 2000)
    assert parseNetDev(NET_DEV.splitlines()[0]) == (0, 0)


def test_parseDiskstatsWithSysBlock() -> None:
    """
    Whole disks count, even when their names end in a digit (§17 a24); partitions,
    loop, RAM, device-mapper and md devices do not; short rows are ignored.
    """
    read, written = parseDiskstats(DISKSTATS, SYS_BLOCK)
    assert read == (2000 + 300 + 10) * 512
    assert written == (4000 + 100 + 20) * 512


def test_parseDiskstatsWithoutSysBlock() -> None:
    """
    Without a /sys/block listing, partitions are recognised by name.
    """
    assert parseDiskstats(DISKSTATS) == parseDiskstats(DISKSTATS, SYS_BLOCK)
    assert parseDiskstats(" 202 1 xvda1 1 0 5 0 1 0 5 0 0 0 0 0 0 0\n") == (0, 0)
    assert parseDiskstats(" 202 0 xvda 1 0 5 0 1 0 6 0 0 0 0 0 0 0\n") == (5 * 512, 6 * 512)


def test_largeValuesFitInt64() -> None:
    huge = f" 8 0 sda 1 0 {2**62} 0 1 0 {2**62} 0 0 0 0 0 0 0\n"
    assert parseDiskstats(huge, ["sda"]) == (INT64_MAX, INT64_MAX)
    assert parseMeminfo(f"SwapTotal: {2**62} kB\n")["swap_total"] == INT64_MAX


def test_parseUptime() -> None:
    assert parseUptime("394.87 1520.12\n") == 394
    assert parseUptime("") == 0
    assert parseUptime("nan 1\n") == 0


class _ThreadedClock(Clock):
    """
    A Clock with a real thread pool; results from threads are queued for the test to run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = ThreadPool(minthreads=1, maxthreads=2)
        self.pool.start()
        self.fromThreads: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def getThreadPool(self) -> ThreadPool:
        return self.pool

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.fromThreads.put((lambda: f(*args, **kw), ()))

    def runUntil(self, d: Deferred[Any]) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        while not results:
            if self.getDelayedCalls():
                self.advance(0.1)
                continue
            f, args = self.fromThreads.get(timeout=10)
            f(*args)
        return results[0]


@pytest.fixture
def reactor() -> Any:
    clock = _ThreadedClock()
    yield clock
    clock.pool.stop()


def _fakeRoot(tmp_path: Path, stat: str) -> tuple[str, str]:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "stat").write_text(stat)
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "net" / "dev").write_text(NET_DEV)
    (proc / "diskstats").write_text(DISKSTATS)
    (proc / "uptime").write_text("394.87 1520.12\n")
    block = tmp_path / "sys" / "block"
    block.mkdir(parents=True)
    for name in SYS_BLOCK:
        (block / name).mkdir()
    return str(proc), str(tmp_path / "sys")


def test_collectFromFiles(reactor: _ThreadedClock, tmp_path: Path) -> None:
    """
    With no previous sample, collect reads /proc/stat, waits 100 ms on the clock and reads
    everything again; the next call reuses the kept sample.
    """
    procRoot, sysRoot = _fakeRoot(tmp_path, STAT)
    sampler = CpuSampler()
    figures = reactor.runUntil(collect(reactor, sampler, procRoot, sysRoot))
    assert figures == {
        "cpu": 0,
        "mem_total": 24684084 * 1024,
        "mem_used": (24684084 - 24324516) * 1024,
        "swap_total": 2097148 * 1024,
        "swap_used": (2097148 - 1048574) * 1024,
        "netrx": 110469906 + 1000,
        "nettx": 176523 + 2000,
        "diskr": 2310 * 512,
        "diskw": 4120 * 512,
        "sysup": 394,
    }
    assert reactor.seconds() == pytest.approx(0.1)
    (Path(procRoot) / "stat").write_text(STAT_LATER)
    reactor.advance(2)
    figures = reactor.runUntil(collect(reactor, sampler, procRoot, sysRoot))
    assert figures["cpu"] == 50
    assert reactor.seconds() == pytest.approx(2.1)
    # A request right after another answers at once with the same figure.
    assert reactor.runUntil(collect(reactor, sampler, procRoot, sysRoot))["cpu"] == 50
    assert reactor.seconds() == pytest.approx(2.1)


def test_collectWithoutProc(reactor: _ThreadedClock, tmp_path: Path) -> None:
    """
    Where /proc is missing (not Linux) every figure is 0 and cpu is -1, with no delay.
    """
    figures = reactor.runUntil(collect(reactor, None, str(tmp_path / "no"), str(tmp_path)))
    assert figures == {**dict.fromkeys(SYSTEM_FIELDS, 0), "cpu": -1}
    assert reactor.seconds() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the real /proc")
def test_collectOnThisMachine(reactor: _ThreadedClock) -> None:
    figures = reactor.runUntil(collect(reactor))
    assert set(figures) == set(SYSTEM_FIELDS)
    for name, value in figures.items():
        assert type(value) is int, name
        assert -1 <= value <= INT64_MAX, name
    assert 0 <= figures["cpu"] <= 100
    assert figures["mem_total"] > figures["mem_used"] > 0
    assert figures["sysup"] > 0
    assert figures["swap_used"] <= figures["swap_total"]
