"""Traffic counters and the CHECK_POINT line, side by side.

An instance counts the bytes it relays in one L{Counters} and reports them, with its gauges,
in a CHECK_POINT log line every report interval (dataplane spec §11.3).  The master reads that
line back with L{parseCheckpoint} (master spec §9.2).  The writer and the reader live here
together so that the format cannot drift between them.
"""

from __future__ import annotations

import re
from typing import Final

from attrs import define, frozen
from twisted.logger import Logger

from nodepass.log import logEvent

__all__ = [
    "CHECKPOINT",
    "INT32_MAX",
    "UINT64_MAX",
    "Checkpoint",
    "Counters",
    "checkpointLine",
    "logCheckpoint",
    "parseCheckpoint",
]

#: Go's int32 (the gauges) and uint64 (the traffic counters) limits.
INT32_MAX: Final = 2**31 - 1
UINT64_MAX: Final = 2**64 - 1

#: What the master looks for anywhere in a line (after a timestamp, a level, colour codes).
CHECKPOINT: Final = re.compile(
    r"CHECK_POINT\|MODE=(\d+)\|PING=(\d+)ms\|POOL=(\d+)\|TCPS=(\d+)\|UDPS=(\d+)"
    r"\|TCPRX=(\d+)\|TCPTX=(\d+)\|UDPRX=(\d+)\|UDPTX=(\d+)"
)


@define
class Counters:
    """
    Cumulative byte counters of one instance (never reset while it runs, except when its
    master asks an instance host to zero them).
    """

    tcprx: int = 0
    tcptx: int = 0
    udprx: int = 0
    udptx: int = 0


def checkpointLine(
    mode: int,
    ping: int,
    pool: int,
    tcps: int,
    udps: int,
    tcprx: int,
    tcptx: int,
    udprx: int,
    udptx: int,
) -> str:
    """
    The CHECK_POINT message that a master parses (dataplane spec §11.3).
    """
    return (
        f"CHECK_POINT|MODE={mode}|PING={ping}ms|POOL={pool}|TCPS={tcps}|UDPS={udps}"
        f"|TCPRX={tcprx}|TCPTX={tcptx}|UDPRX={udprx}|UDPTX={udptx}"
    )


def logCheckpoint(
    log: Logger, mode: int, ping: int, pool: int, tcps: int, udps: int, counters: Counters
) -> None:
    """
    Log one CHECK_POINT line at the C{event} level, with C{counters}' figures.
    """
    logEvent(
        log,
        checkpointLine(
            mode,
            ping,
            pool,
            tcps,
            udps,
            counters.tcprx,
            counters.tcptx,
            counters.udprx,
            counters.udptx,
        ),
    )


@frozen
class Checkpoint:
    """
    The values of one CHECK_POINT line.  A value that does not fit its Go type (int32 for the
    gauges, uint64 for the traffic counters) is L{None}: "leave the field unchanged".
    """

    mode: int | None
    ping: int | None
    pool: int | None
    tcps: int | None
    udps: int | None
    tcprx: int | None
    tcptx: int | None
    udprx: int | None
    udptx: int | None


def _bounded(text: str, maximum: int) -> int | None:
    value = int(text)
    return value if value <= maximum else None


def parseCheckpoint(line: str) -> Checkpoint | None:
    """
    The checkpoint anywhere in C{line} (after a timestamp, a level, colour codes), or L{None}.
    """
    match = CHECKPOINT.search(line)
    if match is None:
        return None
    groups = match.groups()
    gauges = [_bounded(text, INT32_MAX) for text in groups[:5]]
    traffic = [_bounded(text, UINT64_MAX) for text in groups[5:]]
    return Checkpoint(*gauges, *traffic)
