"""
L{nodepass.stats}: what an instance writes in its CHECK_POINT line is what a master reads.
"""

from __future__ import annotations

from typing import cast

from twisted.logger import ILogObserver, LogEvent, Logger

from nodepass.stats import (
    CHECKPOINT,
    INT32_MAX,
    UINT64_MAX,
    Checkpoint,
    Counters,
    checkpointLine,
    logCheckpoint,
    parseCheckpoint,
)


def test_logCheckpointRoundTrip() -> None:
    events: list[LogEvent] = []
    log = Logger(namespace="nodepass", observer=cast(ILogObserver, events.append))
    counters = Counters(tcprx=UINT64_MAX, tcptx=2, udprx=3, udptx=4)
    logCheckpoint(log, 2, 17, 64, 5, 6, counters)
    (event,) = events
    assert event.get("npEvent") is True
    parsed = parseCheckpoint("2026-01-02 16:37:20.123  EVENT  " + event["log_format"])
    assert parsed == Checkpoint(2, 17, 64, 5, 6, UINT64_MAX, 2, 3, 4)


def test_outOfRangeFiguresAreLeftUnchanged() -> None:
    line = checkpointLine(INT32_MAX + 1, 0, 0, 0, 0, UINT64_MAX + 1, 0, 0, 0)
    parsed = parseCheckpoint(line)
    assert parsed is not None
    assert (parsed.mode, parsed.tcprx, parsed.tcptx) == (None, None, 0)


def test_refusalsRideInASuffixTheGoExpressionIgnores() -> None:
    events: list[LogEvent] = []
    log = Logger(namespace="nodepass", observer=cast(ILogObserver, events.append))
    counters = Counters(tcprx=1, refusedSlot=3, refusedDeny=2, refusedBlock=1)
    logCheckpoint(log, 1, 0, 0, 0, 0, counters)
    (event,) = events
    line = event["log_format"]
    assert line.endswith("|UDPTX=0|REFUSED_SLOT=3|REFUSED_DENY=2|REFUSED_BLOCK=1")
    parsed = parseCheckpoint("2026-01-02 16:37:20.123  EVENT  " + line)
    assert parsed == Checkpoint(1, 0, 0, 0, 0, 1, 0, 0, 0, 3, 2, 1)
    # What a v1.14.0 master matches is still all there, up to UDPTX.
    assert CHECKPOINT.search(line) is not None
    assert line[: CHECKPOINT.search(line).end()].endswith("UDPTX=0")  # type: ignore[union-attr]


def test_noSuffixWhileNothingWasRefused() -> None:
    line = checkpointLine(1, 0, 0, 0, 0, 0, 0, 0, 0)
    assert "REFUSED" not in line
    parsed = parseCheckpoint(line)
    assert parsed is not None
    assert (parsed.refusedSlot, parsed.refusedDeny, parsed.refusedBlock) == (0, 0, 0)


def test_outOfRangeRefusalsAreLeftUnchanged() -> None:
    line = checkpointLine(1, 0, 0, 0, 0, 0, 0, 0, 0, refusedSlot=UINT64_MAX + 1, refusedDeny=5)
    parsed = parseCheckpoint(line)
    assert parsed is not None
    assert (parsed.refusedSlot, parsed.refusedDeny, parsed.refusedBlock) == (None, 5, 0)


def test_aSuffixNotRightAfterTheFiguresIsNotRead() -> None:
    line = (
        checkpointLine(1, 0, 0, 0, 0, 0, 0, 0, 0)
        + " |REFUSED_SLOT=1|REFUSED_DENY=1|REFUSED_BLOCK=1"
    )
    parsed = parseCheckpoint(line)
    assert parsed is not None
    assert parsed.refusedSlot == 0
