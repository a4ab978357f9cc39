"""
L{nodepass.stats}: what an instance writes in its CHECK_POINT line is what a master reads.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from nodepass.stats import (
    INT32_MAX,
    UINT64_MAX,
    Checkpoint,
    Counters,
    checkpointLine,
    logCheckpoint,
    parseCheckpoint,
)


def test_logCheckpointRoundTrip() -> None:
    events: list[dict[str, Any]] = []
    log = Logger(namespace="nodepass", observer=events.append)
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
