"""
System figures for C{GET P/info} (spec §8.8), read from C{/proc} and C{/sys}.

Two layers:

  - pure parsers that take file contents (and the C{/sys/block} listing) and return
    integers, unit-tested with sample texts;
  - L{collect}, which reads the files in the reactor's thread pool and returns a Deferred of
    the C{/info} system fields, all plain Python integers that fit in int64 (§18 b6).

CPU usage needs two samples of C{/proc/stat}.  A L{CpuSampler} keeps the previous one, so
repeated calls (NodePassDash polls every 2 s) measure the time since the last call; when
there is no recent sample, L{collect} takes a second one after 100 ms, waiting with the
reactor's clock, never blocking it.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Callable, Collection
from typing import Any, Final

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool

__all__ = [
    "INT64_MAX",
    "SYSTEM_FIELDS",
    "CpuSample",
    "CpuSampler",
    "collect",
    "cpuPercent",
    "goArch",
    "goOS",
    "parseCpuStat",
    "parseDiskstats",
    "parseMeminfo",
    "parseNetDev",
    "parseUptime",
]

INT64_MAX = 2**63 - 1

#: The keys of the dict L{collect} returns.
SYSTEM_FIELDS = (
    "cpu",
    "mem_total",
    "mem_used",
    "swap_total",
    "swap_used",
    "netrx",
    "nettx",
    "diskr",
    "diskw",
    "sysup",
)

#: Seconds between the two CPU samples when there is no usable previous one (§8.8).
CPU_SAMPLE_DELAY = 0.1

#: A previous CPU sample older than this is not used; a fresh 100 ms sample is taken.
CPU_SAMPLE_MAX_AGE = 10.0

_SECTOR = 512
_NET_SKIP = ("lo", "veth", "docker", "podman", "br-", "virbr")
# Partition names, for when /sys/block cannot be listed: sda1, vdb2, xvda1, hdc3,
# nvme0n1p1, mmcblk0p2, loop0p1.
_PARTITION = re.compile(r"^(?:(?:sd|hd|vd|xvd)[a-z]+\d+|.*\dp\d+)$")

#: (total jiffies, idle jiffies) of the aggregate C{cpu} line.
CpuSample = tuple[int, int]


def _clamp(value: int) -> int:
    return max(0, min(value, INT64_MAX))


def parseCpuStat(text: str) -> CpuSample | None:
    """
    The (total, idle) jiffies of the aggregate C{cpu } line of C{/proc/stat}: total is the
    sum of every value, idle the 4th value only (as Go counts it).  C{None} if missing.
    """
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == "cpu":
            try:
                values = [int(v) for v in fields[1:]]
            except ValueError:
                return None
            return sum(values), values[3]
    return None


def cpuPercent(previous: CpuSample, current: CpuSample) -> int:
    """
    Percent busy between two samples: (dtotal - didle) x 100 // dtotal, within 0..100;
    0 when no time passed.
    """
    total = current[0] - previous[0]
    idle = current[1] - previous[1]
    if total <= 0:
        return 0
    return max(0, min(100, (total - idle) * 100 // total))


def parseMeminfo(text: str) -> dict[str, int]:
    """
    C{mem_total}, C{mem_used} (MemTotal - MemAvailable), C{swap_total} and C{swap_used}
    (SwapTotal - SwapFree) in bytes from C{/proc/meminfo}.  Missing rows count as 0; a
    kernel without MemAvailable (before 3.14) uses MemFree + Buffers + Cached.
    """
    kb: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kb[name.strip()] = int(fields[0])
    total = kb.get("MemTotal", 0)
    if "MemAvailable" in kb:
        available = kb["MemAvailable"]
    else:
        available = kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0)
    swapTotal = kb.get("SwapTotal", 0)
    return {
        "mem_total": _clamp(total * 1024),
        "mem_used": _clamp((total - available) * 1024),
        "swap_total": _clamp(swapTotal * 1024),
        "swap_used": _clamp((swapTotal - kb.get("SwapFree", 0)) * 1024),
    }


def parseNetDev(text: str) -> tuple[int, int]:
    """
    Received and sent bytes summed over C{/proc/net/dev}, skipping loopback and virtual
    interfaces (names starting with C{lo}, C{veth}, C{docker}, C{podman}, C{br-}, C{virbr}).
    """
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, colon, rest = line.partition(":")
        fields = rest.split()
        if not colon or len(fields) < 9:
            continue
        if name.strip().startswith(_NET_SKIP):
            continue
        try:
            rx += int(fields[0])
            tx += int(fields[8])
        except ValueError:
            continue
    return _clamp(rx), _clamp(tx)


def _countedDisk(name: str, wholeDisks: Collection[str] | None) -> bool:
    if "loop" in name or "ram" in name or name.startswith(("dm-", "md")):
        return False
    if wholeDisks is not None:
        return name in wholeDisks
    return _PARTITION.match(name) is None


def parseDiskstats(text: str, wholeDisks: Collection[str] | None = None) -> tuple[int, int]:
    """
    Bytes read and written, summed over C{/proc/diskstats} (sectors x 512).

    Partitions are skipped so nothing is counted twice: with C{wholeDisks} (the names in
    C{/sys/block}) only those devices count; without, partition names are recognised by
    pattern.  Unlike Go (§17 a24), whole disks whose names end in a digit (C{nvme0n1},
    C{mmcblk0}) are counted.  Loop, RAM, device-mapper and md devices are skipped, as in Go.
    """
    read = written = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 14 or not _countedDisk(fields[2], wholeDisks):
            continue
        try:
            read += int(fields[5])
            written += int(fields[9])
        except ValueError:
            continue
    return _clamp(read * _SECTOR), _clamp(written * _SECTOR)


def parseUptime(text: str) -> int:
    """
    Whole seconds of uptime from C{/proc/uptime}; 0 if unreadable.
    """
    try:
        return _clamp(int(float(text.split()[0])))
    except (IndexError, ValueError, OverflowError):
        return 0


class CpuSampler:
    """
    Keeps the previous C{/proc/stat} sample, when it was taken (by the injected clock) and
    the last figure computed.

    Requests that come closer together than L{CPU_SAMPLE_DELAY} get the last figure again
    instead of a meaningless sample over a few milliseconds (or a 100 ms wait each).
    """

    def __init__(self, maxAge: float = CPU_SAMPLE_MAX_AGE) -> None:
        self.maxAge = maxAge
        self.previous: CpuSample | None = None
        self.previousTime = 0.0
        self.last: int | None = None

    def usable(self, now: float) -> bool:
        """
        Whether a new sample can be compared with the kept one without waiting: it is at
        most C{maxAge} old, and either at least 100 ms old or there is a last figure to
        repeat.
        """
        if self.previous is None:
            return False
        age = now - self.previousTime
        return age <= self.maxAge and (age >= CPU_SAMPLE_DELAY or self.last is not None)

    def update(self, sample: CpuSample | None, now: float) -> int:
        """
        Record C{sample}; return the usage since the previous one, or -1 if there is none.
        Within 100 ms of the previous sample the last figure is returned and the previous
        sample kept.
        """
        previous = self.previous
        tooSoon = now - self.previousTime < CPU_SAMPLE_DELAY
        if sample is not None and previous is not None and tooSoon and self.last is not None:
            return self.last
        self.previous, self.previousTime = sample, now
        if sample is None or previous is None:
            self.last = None
            return -1
        self.last = cpuPercent(previous, sample)
        return self.last


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _readAll(procRoot: str, sysRoot: str) -> dict[str, Any]:
    """
    Read every source file (runs in a thread).
    """
    try:
        wholeDisks: list[str] | None = os.listdir(os.path.join(sysRoot, "block"))
    except OSError:
        wholeDisks = None
    return {
        name: _read(os.path.join(procRoot, *name.split("/")))
        for name in ("stat", "meminfo", "net/dev", "diskstats", "uptime")
    } | {"block": wholeDisks}


def _figures(files: dict[str, Any], cpu: int) -> dict[str, int]:
    figures = {name: 0 for name in SYSTEM_FIELDS}
    figures["cpu"] = cpu
    if files["meminfo"] is not None:
        figures.update(parseMeminfo(files["meminfo"]))
    if files["net/dev"] is not None:
        figures["netrx"], figures["nettx"] = parseNetDev(files["net/dev"])
    if files["diskstats"] is not None:
        figures["diskr"], figures["diskw"] = parseDiskstats(files["diskstats"], files["block"])
    if files["uptime"] is not None:
        figures["sysup"] = parseUptime(files["uptime"])
    return figures


def collect(
    reactor: Any,
    sampler: CpuSampler | None = None,
    procRoot: str = "/proc",
    sysRoot: str = "/sys",
) -> Deferred[dict[str, int]]:
    """
    Gather the C{/info} system fields (L{SYSTEM_FIELDS}).

    @param reactor: provides C{IReactorThreads} (the file reads run in its thread pool) and
        C{IReactorTime} (the 100 ms CPU sample delay).
    @param sampler: keeps the previous CPU sample between calls; without one (or without a
        recent sample in it) two samples are taken 100 ms apart.
    @return: a Deferred of a dict of ints; where C{/proc} is unavailable (not Linux), the
        figures are 0 and C{cpu} is -1.
    """
    cpuSampler = sampler if sampler is not None else CpuSampler()

    def inThread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    @inlineCallbacks
    def run() -> Any:
        now = reactor.seconds()
        if not cpuSampler.usable(now):
            first = yield inThread(_read, os.path.join(procRoot, "stat"))
            cpuSampler.update(parseCpuStat(first) if first is not None else None, now)
            if first is not None:
                yield deferLater(reactor, CPU_SAMPLE_DELAY, lambda: None)
        files = yield inThread(_readAll, procRoot, sysRoot)
        stat = files["stat"]
        cpu = cpuSampler.update(parseCpuStat(stat) if stat is not None else None, reactor.seconds())
        return _figures(files, cpu)

    d: Deferred[dict[str, int]] = run()
    return d


# -- Go's platform names (§8.8) -----------------------------------------------------------------

#: Go's GOARCH for Python's platform.machine() (§8.8).
_ARCH: Final = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "mips": "mips",
    "mipsel": "mipsle",
    "mips64": "mips64",
    "mips64el": "mips64le",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
}


def goOS(name: str | None = None) -> str:
    """
    The Go GOOS value for this system (C{linux}, C{darwin}, C{windows}, C{freebsd}, ...).
    """
    name = sys.platform if name is None else name
    if name.startswith("linux"):
        return "linux"
    if name.startswith("win"):
        return "windows"
    if name.startswith("freebsd"):
        return "freebsd"
    if name.startswith("openbsd"):
        return "openbsd"
    if name.startswith("netbsd"):
        return "netbsd"
    return name


def goArch(machine: str | None = None) -> str:
    """
    The Go GOARCH value for a C{platform.machine()} string (C{x86_64} is C{amd64}).
    """
    machine = (platform.machine() if machine is None else machine).lower()
    if machine.startswith("armv") or machine == "arm":
        return "arm"
    return _ARCH.get(machine, machine)
