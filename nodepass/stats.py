"""Traffic counters and the CHECK_POINT line, side by side.

An instance counts the bytes it relays in one L{Counters} and reports them, with its gauges,
in a CHECK_POINT log line every report interval (dataplane spec §11.3).  The master reads that
line back with L{parseCheckpoint} (master spec §9.2).  The writer and the reader live here
together so that the format cannot drift between them.

The instance also counts the user connections (and UDP datagrams) it refused, by reason: the
slot limit, the C{allow}/C{deny} lists, C{block}.  Once any of them is not zero the line
carries them in a suffix, L{REFUSED}: C{|REFUSED_SLOT=n|REFUSED_DENY=n|REFUSED_BLOCK=n}.  A Go
master's expression is not anchored at the end, so it reads the line as before and ignores
the suffix; L{parseCheckpoint} reads both (no suffix: all zero).
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
    "REFUSED",
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

#: The refusal counts right after the figures of L{CHECKPOINT} (only when one is not zero).
REFUSED: Final = re.compile(r"\|REFUSED_SLOT=(\d+)\|REFUSED_DENY=(\d+)\|REFUSED_BLOCK=(\d+)")


@define
class Counters:
    """
    Cumulative byte counters of one instance (never reset while it runs, except when its
    master asks an instance host to zero them), and its refusal counts (never reset): user
    connections or UDP datagrams refused for the slot limit (C{refusedSlot}: entry and exit
    side, TCP and UDP), by the C{allow}/C{deny} lists (C{refusedDeny}) and by C{block}
    sniffing (C{refusedBlock}).
    """

    tcprx: int = 0
    tcptx: int = 0
    udprx: int = 0
    udptx: int = 0
    refusedSlot: int = 0
    refusedDeny: int = 0
    refusedBlock: int = 0


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
    *,
    refusedSlot: int = 0,
    refusedDeny: int = 0,
    refusedBlock: int = 0,
) -> str:
    """
    The CHECK_POINT message that a master parses (dataplane spec §11.3), with the L{REFUSED}
    suffix when a refusal count is not zero.
    """
    line = (
        f"CHECK_POINT|MODE={mode}|PING={ping}ms|POOL={pool}|TCPS={tcps}|UDPS={udps}"
        f"|TCPRX={tcprx}|TCPTX={tcptx}|UDPRX={udprx}|UDPTX={udptx}"
    )
    if refusedSlot or refusedDeny or refusedBlock:
        line += (
            f"|REFUSED_SLOT={refusedSlot}|REFUSED_DENY={refusedDeny}|REFUSED_BLOCK={refusedBlock}"
        )
    return line


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
            refusedSlot=counters.refusedSlot,
            refusedDeny=counters.refusedDeny,
            refusedBlock=counters.refusedBlock,
        ),
    )


@frozen
class Checkpoint:
    """
    The values of one CHECK_POINT line.  A value that does not fit its Go type (int32 for the
    gauges, uint64 for the traffic counters and the refusal counts) is L{None}: "leave the
    field unchanged".  The refusal counts are cumulative for the instance's life: C{refusedSlot}
    (the slot limit), C{refusedDeny} (the C{allow}/C{deny} lists), C{refusedBlock} (C{block});
    0 when the line has no L{REFUSED} suffix (nothing refused yet, or a Go instance).
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
    refusedSlot: int | None = 0
    refusedDeny: int | None = 0
    refusedBlock: int | None = 0


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
    suffix = REFUSED.match(line, match.end())
    refused = [0, 0, 0] if suffix is None else [_bounded(t, UINT64_MAX) for t in suffix.groups()]
    return Checkpoint(*gauges, *traffic, *refused)
