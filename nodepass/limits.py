"""
Process-wide limits: the C{rate} token buckets (spec §10.2) and the C{slot} counter (§10.3).

Nothing here schedules anything: a L{TokenBucket} only tells its caller how long to wait, and
the caller pauses its transport for that long with its own clock.
"""

from __future__ import annotations

import math

from twisted.internet.interfaces import IReactorTime

__all__ = ["BYTES_PER_MBPS", "RateLimiter", "Slots", "TokenBucket"]

#: One Mbit/s in bytes per second, as the C{rate} parameter counts it.
BYTES_PER_MBPS = 125_000

_KINDS = ("tcp", "udp")

# Delays shorter than this are reported as 0.0.  Advancing a clock by exactly the returned
# delay can leave a rounding residue of debt (around 1e-17 s); the residue stays in the
# balance, so nothing is forgiven, but the caller is not asked to wait for it.
_NEGLIGIBLE_DELAY = 1e-9


class TokenBucket:
    """
    A token bucket that may go into debt.

    It refills continuously at C{rate} tokens (bytes) per second, up to a capacity of one
    second's worth, and starts full.  L{take} always succeeds; when the balance goes negative
    it returns how long the caller must wait before more I/O, which is exactly the time the
    refill needs to pay the debt back.
    """

    def __init__(self, rate: float, clock: IReactorTime) -> None:
        """
        @param rate: tokens (bytes) per second; must be finite and positive (callers
            represent "unlimited" by not having a bucket at all).
        @param clock: the time source.
        @raise ValueError: if C{rate} is not a finite positive number.
        """
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise ValueError(
                f"token bucket rate must be a finite positive number, got {rate!r}"
                " (use None for unlimited)"
            )
        self._rate = float(rate)
        self._clock = clock
        self._tokens = self._rate
        self._stamp = clock.seconds()

    @property
    def rate(self) -> float:
        """Refill rate in tokens per second."""
        return self._rate

    @property
    def capacity(self) -> float:
        """Maximum balance: one second's worth of tokens."""
        return self._rate

    @property
    def tokens(self) -> float:
        """The current balance (negative while in debt), refilled up to now."""
        self._advance()
        return self._tokens

    def _advance(self) -> None:
        now = self._clock.seconds()
        elapsed = now - self._stamp
        self._stamp = now
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self._rate)

    def take(self, n: int) -> float:
        """
        Consume C{n} tokens.

        @return: the delay in seconds before the caller may do more I/O: C{0.0} while the
            balance is still non-negative, otherwise the time the refill needs to bring it
            back to zero (a rounding residue below a nanosecond also counts as C{0.0}).
        @raise ValueError: if C{n} is negative.
        """
        if n < 0:
            raise ValueError(f"cannot take a negative number of tokens ({n})")
        self._advance()
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        delay = -self._tokens / self._rate
        return delay if delay >= _NEGLIGIBLE_DELAY else 0.0

    def refill(self) -> None:
        """Fill the bucket to capacity (forgiving any debt)."""
        self._stamp = self._clock.seconds()
        self._tokens = self.capacity


class RateLimiter:
    """
    The process-wide rate limiter: independent C{read} and C{write} buckets of the same rate.
    """

    def __init__(self, bytesPerSecond: float, clock: IReactorTime) -> None:
        """
        @raise ValueError: if C{bytesPerSecond} is not a finite positive number.
        """
        self.read = TokenBucket(bytesPerSecond, clock)
        self.write = TokenBucket(bytesPerSecond, clock)

    @property
    def rate(self) -> float:
        """Bytes per second, per direction."""
        return self.read.rate

    @classmethod
    def fromMbps(cls, mbps: int, clock: IReactorTime) -> RateLimiter | None:
        """
        Build the limiter for a C{rate=} value in Mbit/s (1 Mbit/s = 125 000 bytes/s).

        @return: C{None} (unlimited) when C{mbps} is 0 or negative, as v1.14.0 treats any
            value that is not positive as "off".
        """
        if mbps <= 0:
            return None
        return cls(mbps * BYTES_PER_MBPS, clock)

    def refill(self) -> None:
        """Fill both buckets (done on every restart)."""
        self.read.refill()
        self.write.refill()


class Slots:
    """
    Concurrent session counter for one peer (spec §10.3).

    TCP and UDP sessions are counted separately and limited on their sum.  With a limit of 0
    the limit is off: L{tryAcquire} always succeeds and the counters stay at 0, as v1.14.0
    reports C{TCPS=0|UDPS=0} in that case.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: maximum number of concurrent TCP + UDP sessions; 0 means unlimited.
        @raise ValueError: if C{limit} is negative.
        """
        if limit < 0:
            raise ValueError(f"slot limit must be >= 0 (0 = unlimited), got {limit}")
        self._limit = limit
        self._counts = {"tcp": 0, "udp": 0}

    @property
    def limit(self) -> int:
        """The configured limit (0 = unlimited)."""
        return self._limit

    @property
    def tcp(self) -> int:
        """Active TCP sessions (always 0 when unlimited)."""
        return self._counts["tcp"]

    @property
    def udp(self) -> int:
        """Active UDP sessions (always 0 when unlimited)."""
        return self._counts["udp"]

    @staticmethod
    def _checkKind(kind: str) -> None:
        if kind not in _KINDS:
            raise ValueError(f"slot kind must be 'tcp' or 'udp', got {kind!r}")

    def tryAcquire(self, kind: str) -> bool:
        """
        Take a slot for a session of C{kind} (C{"tcp"} or C{"udp"}).

        @return: C{False} when the sum of TCP and UDP sessions has reached the limit.
        @raise ValueError: for an unknown C{kind}.
        """
        self._checkKind(kind)
        if self._limit == 0:
            return True
        if self._counts["tcp"] + self._counts["udp"] >= self._limit:
            return False
        self._counts[kind] += 1
        return True

    def release(self, kind: str) -> None:
        """
        Give back a slot taken with L{tryAcquire}.

        @raise ValueError: for an unknown C{kind}.
        @raise AssertionError: when no slot of that kind is held (a bookkeeping bug).
        """
        self._checkKind(kind)
        if self._limit == 0:
            return
        if self._counts[kind] <= 0:
            raise AssertionError(f"released a {kind} slot that was not acquired")
        self._counts[kind] -= 1
