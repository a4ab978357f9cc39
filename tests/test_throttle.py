"""
L{nodepass.throttle.FailureThrottle} on a L{Clock}: slowing, blocking, escalation, the
summary lines and the bounded table.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from nodepass.throttle import FailureThrottle


def throttle(**options: Any) -> tuple[Clock, FailureThrottle, list[str]]:
    clock = Clock()
    lines: list[str] = []
    log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    return clock, FailureThrottle(clock, log, "bad keys", **options), lines


def test_slowThenBlock() -> None:
    clock, t, lines = throttle()
    delays = [t.failed("a") for _ in range(9)]
    assert delays == [0, 0, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert t.retryAfter("a") is None
    assert t.failed("a") == 0  # the 10th blocks
    assert t.retryAfter("a") == 60
    assert t.retryAfter("b") is None
    clock.advance(60)
    assert t.retryAfter("a") is None
    assert lines == ["10 bad keys from a within 60s: refused for 60s"]
    assert t.known("a") and not t.known("b")


def test_blocksGrowAndAreForgiven() -> None:
    clock, t, _ = throttle(blockAfter=2, blockFor=10, maxBlock=40)
    for expected in (10, 20, 40, 40):
        t.failed("a")
        t.failed("a")
        assert t.retryAfter("a") == expected
        clock.advance(expected + 1)
    clock.advance(100)  # behaved for longer than the longest block: a first block again
    t.failed("a")
    t.failed("a")
    assert t.retryAfter("a") == 10


def test_successClears() -> None:
    _, t, _ = throttle()
    for _ in range(5):
        t.failed("a")
    t.succeeded("a")
    assert t.failed("a") == 0


def test_summaryInsteadOfALinePerAttempt() -> None:
    clock, t, lines = throttle(blockAfter=1000)
    for _ in range(50):
        t.failed("a")
        clock.advance(0.5)
    clock.advance(36)
    t.failed("a")
    assert len(lines) == 1 and lines[0].startswith("50 more bad keys from a in the last")


def test_tableIsBounded() -> None:
    _, t, _ = throttle(maxAddresses=100)
    for n in range(1000):
        t.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(t) == 100
