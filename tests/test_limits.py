"""Tests for L{nodepass.limits}."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from nodepass.limits import BYTES_PER_MBPS, RateLimiter, Slots, TokenBucket

# --- TokenBucket ----------------------------------------------------------------------------


def test_startsFullAndLetsOneSecondThrough() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    assert bucket.capacity == 1000
    assert bucket.tokens == 1000
    assert bucket.take(1000) == 0.0
    assert bucket.tokens == 0


def test_debtDelays() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    assert bucket.take(1000) == 0.0
    assert bucket.take(500) == 0.5
    clock.advance(0.5)
    assert bucket.take(0) == 0.0
    assert bucket.tokens == 0
    assert bucket.take(250) == 0.25
    clock.advance(0.1)
    # 150 tokens of debt remain.
    assert bucket.take(0) == pytest.approx(0.15)
    assert bucket.take(100) == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.take(0) == 0.0


def test_smallTakesWithinBalance() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    for _ in range(10):
        assert bucket.take(100) == 0.0
    assert bucket.take(1) == pytest.approx(0.001)


def test_takeLargerThanCapacity() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    assert bucket.take(5000) == 4.0
    clock.advance(4)
    assert bucket.take(0) == 0.0


def test_refillCapsAtCapacity() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    bucket.take(1000)
    clock.advance(100)
    assert bucket.tokens == 1000
    assert bucket.take(1000) == 0.0
    assert bucket.take(1) == pytest.approx(0.001)


def test_partialRefill() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    bucket.take(1000)
    clock.advance(0.3)
    assert bucket.tokens == pytest.approx(300)
    assert bucket.take(300) == 0.0
    assert bucket.take(100) == pytest.approx(0.1)


def test_refillForgivesDebt() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    assert bucket.take(3000) == 2.0
    bucket.refill()
    assert bucket.tokens == 1000
    assert bucket.take(1000) == 0.0


def test_clockGoingBackwardsDoesNotRefill() -> None:
    clock = Clock()
    clock.advance(10)
    bucket = TokenBucket(1000, clock)
    bucket.take(1000)
    clock.rightNow = 5.0
    assert bucket.tokens == 0
    clock.rightNow = 5.5
    assert bucket.tokens == pytest.approx(500)


def test_startTimeIsClockTime() -> None:
    clock = Clock()
    clock.advance(1234.5)
    bucket = TokenBucket(10, clock)
    assert bucket.take(10) == 0.0
    assert bucket.take(5) == 0.5


@pytest.mark.parametrize("rate", [0, 0.0, -1, -0.5, math.inf, math.nan])
def test_badRate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate, Clock())


def test_negativeTake() -> None:
    with pytest.raises(ValueError):
        TokenBucket(10, Clock()).take(-1)


def test_fractionalRate() -> None:
    clock = Clock()
    bucket = TokenBucket(0.5, clock)
    assert bucket.capacity == 0.5
    assert bucket.take(1) == 1.0


def _drive(bucket: TokenBucket, clock: Clock, chunks: list[int]) -> float:
    """Take chunks like a paused-and-resumed transport would; return the elapsed time."""
    start = clock.seconds()
    for chunk in chunks:
        delay = bucket.take(chunk)
        assert delay >= 0
        if delay:
            clock.advance(delay)
    return clock.seconds() - start


def test_longRunThroughput() -> None:
    clock = Clock()
    rate = 125_000.0
    bucket = TokenBucket(rate, clock)
    chunks = [16384] * 500
    total = sum(chunks)
    elapsed = _drive(bucket, clock, chunks)
    lower = (total - rate) / rate
    assert elapsed >= lower - 1e-9
    # Waiting exactly the returned delays is also not slower than needed.
    assert elapsed <= lower + 1e-6


@given(
    st.floats(min_value=1, max_value=1e9, allow_nan=False, allow_infinity=False),
    st.lists(st.integers(min_value=0, max_value=1_000_000), min_size=1, max_size=200),
    st.lists(st.floats(min_value=0, max_value=2), max_size=200),
)
def test_throughputBoundProperty(rate: float, chunks: list[int], idle: list[float]) -> None:
    """However the caller interleaves idle time, it never beats capacity + rate * time."""
    clock = Clock()
    bucket = TokenBucket(rate, clock)
    taken = 0
    for index, chunk in enumerate(chunks):
        if index < len(idle):
            clock.advance(idle[index])
        delay = bucket.take(chunk)
        taken += chunk
        assert delay >= 0
        clock.advance(delay)
        # After honouring the delay, the bytes moved so far fit in the budget.
        budget = rate + rate * clock.seconds()
        assert taken <= budget * (1 + 1e-9) + 1e-6


# --- RateLimiter ----------------------------------------------------------------------------


def test_fromMbps() -> None:
    clock = Clock()
    limiter = RateLimiter.fromMbps(1, clock)
    assert limiter is not None
    assert BYTES_PER_MBPS == 125_000
    assert limiter.rate == 125_000
    assert limiter.read.rate == 125_000
    assert limiter.write.rate == 125_000
    assert limiter.read.capacity == 125_000
    big = RateLimiter.fromMbps(100, clock)
    assert big is not None and big.rate == 12_500_000


@pytest.mark.parametrize("mbps", [0, -1])
def test_fromMbpsUnlimited(mbps: int) -> None:
    assert RateLimiter.fromMbps(mbps, Clock()) is None


def test_bucketsIndependent() -> None:
    clock = Clock()
    limiter = RateLimiter(1000, clock)
    assert limiter.read.take(1500) == 0.5
    assert limiter.write.take(1000) == 0.0
    assert limiter.write.take(100) == pytest.approx(0.1)
    assert limiter.read.tokens == -500


def test_limiterRefill() -> None:
    clock = Clock()
    limiter = RateLimiter(1000, clock)
    limiter.read.take(5000)
    limiter.write.take(2000)
    limiter.refill()
    assert limiter.read.tokens == 1000
    assert limiter.write.tokens == 1000


def test_limiterBadRate() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, Clock())


# --- Slots ----------------------------------------------------------------------------------


def test_slotsLimitOnSum() -> None:
    slots = Slots(3)
    assert slots.limit == 3
    assert slots.tryAcquire("tcp")
    assert slots.tryAcquire("udp")
    assert slots.tryAcquire("tcp")
    assert (slots.tcp, slots.udp) == (2, 1)
    assert not slots.tryAcquire("tcp")
    assert not slots.tryAcquire("udp")
    assert (slots.tcp, slots.udp) == (2, 1)
    slots.release("udp")
    assert slots.udp == 0
    assert slots.tryAcquire("tcp")
    assert (slots.tcp, slots.udp) == (3, 0)
    assert not slots.tryAcquire("udp")


def test_slotsReleaseAll() -> None:
    slots = Slots(2)
    assert slots.tryAcquire("tcp") and slots.tryAcquire("tcp")
    slots.release("tcp")
    slots.release("tcp")
    assert (slots.tcp, slots.udp) == (0, 0)
    assert slots.tryAcquire("udp") and slots.tryAcquire("udp")
    assert not slots.tryAcquire("tcp")


def test_slotsUnlimited() -> None:
    slots = Slots(0)
    assert slots.limit == 0
    for _ in range(10_000):
        assert slots.tryAcquire("tcp")
        assert slots.tryAcquire("udp")
    assert (slots.tcp, slots.udp) == (0, 0)
    slots.release("tcp")
    slots.release("udp")
    assert (slots.tcp, slots.udp) == (0, 0)


def test_slotsReleaseBelowZero() -> None:
    slots = Slots(5)
    with pytest.raises(AssertionError):
        slots.release("tcp")
    assert slots.tryAcquire("tcp")
    with pytest.raises(AssertionError):
        slots.release("udp")
    slots.release("tcp")
    with pytest.raises(AssertionError):
        slots.release("tcp")
    assert (slots.tcp, slots.udp) == (0, 0)


@pytest.mark.parametrize("kind", ["TCP", "", "sctp"])
def test_slotsBadKind(kind: str) -> None:
    slots = Slots(1)
    with pytest.raises(ValueError):
        slots.tryAcquire(kind)
    with pytest.raises(ValueError):
        slots.release(kind)
    with pytest.raises(ValueError):
        Slots(0).tryAcquire(kind)


def test_slotsNegativeLimit() -> None:
    with pytest.raises(ValueError):
        Slots(-1)


@given(
    st.integers(min_value=1, max_value=20),
    st.lists(st.tuples(st.booleans(), st.sampled_from(["tcp", "udp"]))),
)
def test_slotsModel(limit: int, ops: list[tuple[bool, str]]) -> None:
    slots = Slots(limit)
    held = {"tcp": 0, "udp": 0}
    for acquire, kind in ops:
        if acquire:
            ok = slots.tryAcquire(kind)
            assert ok == (held["tcp"] + held["udp"] < limit)
            if ok:
                held[kind] += 1
        elif held[kind]:
            slots.release(kind)
            held[kind] -= 1
        assert (slots.tcp, slots.udp) == (held["tcp"], held["udp"])
        assert slots.tcp + slots.udp <= limit
