"""
The restart loop of a tunnel peer (L{nodepass.tunnel.peer.TunnelPeer}): the pause between
two cycles grows only while attempts keep failing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from nodepass.relay import Counters
from nodepass.settings import Settings
from nodepass.tunnel.peer import MAX_BACKOFF, TunnelPeer
from nodepass.tunnel.session import Shared
from nodepass.url import parse

URL = "server://127.0.0.1:10101/127.0.0.1:8080"


class _Session:
    relays: tuple[Any, ...] = ()

    def adoptEntry(self, tcp: Any, udp: Any) -> None:
        pass

    def stop(self) -> Any:
        return succeed(None)


class _Peer(TunnelPeer):
    """
    A peer whose cycles follow a script: C{True} brings a session up before the cycle
    ends, C{False} fails at once.
    """

    def __init__(self, reactor: MemoryReactorClock, script: list[bool]) -> None:
        config = parse(URL)
        settings = Settings(serviceCooldown=1.0)
        shared = Shared(config, reactor, settings, None, Counters())  # type: ignore[arg-type]
        super().__init__(config, reactor, settings, shared)
        self.ext = True
        self.script = script
        self._rng.uniform = lambda low, high: 1.0  # type: ignore[method-assign]

    async def cycle(self) -> None:
        if self.script.pop(0):
            self.newSession(_Session())  # type: ignore[arg-type]
        raise ConnectionError("cycle over")


class BackoffTests(SynchronousTestCase):
    def pauses(self, script: list[bool]) -> list[float]:
        reactor = MemoryReactorClock()
        peer = _Peer(reactor, list(script))
        peer.startService()
        seen = []
        for _ in script[:-1]:
            (call,) = reactor.getDelayedCalls()
            delay = call.getTime() - reactor.seconds()
            seen.append(delay)
            reactor.advance(delay)
        self.flushLoggedErrors()
        peer.stopping = True
        return seen

    def test_failuresInARowDouble(self) -> None:
        self.assertEqual(self.pauses([False] * 5), [1.0, 2.0, 4.0, 8.0])

    def test_establishedSessionResetsTheBackoff(self) -> None:
        """
        After a session that came up, the next pause is the base cooldown again, however
        many attempts failed before it.
        """
        self.assertEqual(self.pauses([False, False, False, True, False, False]), [1, 2, 4, 1, 2])

    def test_backoffIsCapped(self) -> None:
        self.assertEqual(self.pauses([False] * 9)[-1], MAX_BACKOFF)
