"""Slow down, then refuse, an address that keeps presenting a wrong key.

Used on the tunnel port (the handshake's bad tokens) and by the master API (bad
C{X-API-Key} values).  Per address:

- the first failures are answered as usual; from the C{slowAfter}-th failure within C{window}
  seconds each answer is held back for L{FailureThrottle.delayFor} seconds (growing, capped),
  which makes guessing slow without costing the server anything but a timer;
- from the C{blockAfter}-th failure the address is refused outright for C{blockFor} seconds
  (doubling each time it comes back, up to C{maxBlock}), before its key is even looked at;
- a right key clears the address's record.

The caller logs an address's first failure (L{FailureThrottle.known} tells it which one that
is); the throttle adds one line when the address is blocked, and a summary of what was
counted meanwhile, instead of a line per attempt.  The table of addresses
is bounded (the oldest are forgotten), so a flood from many addresses costs bounded memory.
Nothing is scheduled: time is read from the injected clock when something happens.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from attrs import define
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["FailureThrottle"]

#: How many addresses are remembered at most.
MAX_ADDRESSES: Final = 4096


@define
class _Record:
    first: float
    failures: int = 0
    blockedUntil: float = 0.0
    blocks: int = 0
    #: Attempts counted since the last log line about this address.
    unlogged: int = 0
    loggedAt: float = 0.0


class FailureThrottle:
    """
    Per-address failure accounting for one listener.

    @param clock: the time source.
    @param log: where the summary lines go (the instance's or the master's logger).
    @param what: what the failures are, for the log lines (e.g. C{"bad tunnel keys"}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        log: Logger,
        what: str,
        *,
        window: float = 60.0,
        slowAfter: int = 3,
        blockAfter: int = 10,
        blockFor: float = 60.0,
        maxBlock: float = 900.0,
        maxDelay: float = 2.0,
        maxAddresses: int = MAX_ADDRESSES,
    ) -> None:
        self._clock = clock
        self._log = log
        self._what = what
        self.window = window
        self.slowAfter = slowAfter
        self.blockAfter = blockAfter
        self.blockFor = blockFor
        self.maxBlock = maxBlock
        self.maxDelay = maxDelay
        self._max = maxAddresses
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def _now(self) -> float:
        return float(self._clock.seconds())

    def _record(self, address: str, now: float) -> tuple[_Record, bool]:
        record = self._records.get(address)
        if record is None:
            record = _Record(first=now)
            self._records[address] = record
            while len(self._records) > self._max:
                self._records.popitem(last=False)
            return record, True
        self._records.move_to_end(address)
        if record.blockedUntil <= now and now - record.first > self.window:
            # A new window: the failures start over.  The blocks are remembered (the next
            # one is longer) until the address has behaved for as long as the longest block.
            record.first, record.failures = now, 0
            if record.blocks and now - record.blockedUntil > self.maxBlock:
                record.blocks = 0
        return record, False

    def retryAfter(self, address: str) -> float | None:
        """
        Seconds until C{address} may try again, or L{None} when it is not blocked.  A
        refused attempt is counted for the summary line.
        """
        record = self._records.get(address)
        if record is None:
            return None
        now = self._now()
        if record.blockedUntil <= now:
            return None
        record.unlogged += 1
        self._summarise(address, record, now)
        return record.blockedUntil - now

    def failed(self, address: str) -> float:
        """
        Count one failure of C{address}; return how long to hold its answer back (0 for the
        first few).  The failure that reaches C{blockAfter} blocks the address.
        """
        now = self._now()
        record, created = self._record(address, now)
        record.failures += 1
        record.unlogged += 1
        if created:
            # The caller logs the first failure in its own words; later ones are summed up.
            record.unlogged, record.loggedAt = 0, now
        if record.failures >= self.blockAfter:
            duration = min(self.maxBlock, self.blockFor * 2**record.blocks)
            record.blocks += 1
            record.blockedUntil = now + duration
            record.failures = 0
            record.first = now
            self._log.warn(
                "{count} {what} from {address} within {window:g}s: refused for {seconds:g}s",
                count=self.blockAfter,
                what=self._what,
                address=address,
                window=self.window,
                seconds=duration,
            )
            record.unlogged, record.loggedAt = 0, now
            return 0.0
        self._summarise(address, record, now)
        return self.delayFor(record.failures)

    def delayFor(self, failures: int) -> float:
        """
        How long the answer to the C{failures}-th failure within the window is held back.
        """
        if failures < self.slowAfter:
            return 0.0
        return float(min(self.maxDelay, 0.25 * 2.0 ** (failures - self.slowAfter)))

    def known(self, address: str) -> bool:
        """
        Whether C{address} has failed lately (the caller logs a first failure in full).
        """
        return address in self._records

    def succeeded(self, address: str) -> None:
        """
        C{address} presented the right key: it starts with a clean record.
        """
        self._records.pop(address, None)

    def _summarise(self, address: str, record: _Record, now: float) -> None:
        if record.unlogged and now - record.loggedAt >= self.window:
            self._log.warn(
                "{count} more {what} from {address} in the last {seconds:.0f}s",
                count=record.unlogged,
                what=self._what,
                address=address,
                seconds=now - record.loggedAt,
            )
            record.unlogged, record.loggedAt = 0, now
