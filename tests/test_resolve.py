"""
Tests for L{nodepass.resolve}: the TTL cache of L{Resolver} driven by a fake lookup whose
Deferreds are fired by hand and a L{Clock}, and L{splitServer}.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nodepass.errors import NodePassError, ResolveError
from nodepass.resolve import Resolver, isIP, splitServer
from tests.support import instanceLogger


class FakeLookup:
    """
    A lookup function that records each query and hands back a Deferred for the test to fire.
    """

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.answers: list[Deferred[str]] = []

    def __call__(self, host: str) -> Deferred[str]:
        self.queries.append(host)
        d: Deferred[str] = Deferred()
        self.answers.append(d)
        return d


class ResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lookup = FakeLookup()

    def resolver(self, ttl: float = 300.0) -> Resolver:
        return Resolver(self.clock, ttl, self.lookup)

    def test_ipLiteralsBypassTheLookup(self) -> None:
        resolver = self.resolver()
        for literal in ("127.0.0.1", "192.0.2.1", "::1", "2001:db8::1"):
            self.assertEqual(self.successResultOf(resolver.resolve(literal)), literal)
        self.assertEqual(self.lookup.queries, [])
        self.assertEqual(resolver.lookups, 0)

    def test_emptyHostIsEmpty(self) -> None:
        resolver = self.resolver()
        self.assertEqual(self.successResultOf(resolver.resolve("")), "")
        self.assertEqual(self.lookup.queries, [])

    def test_waitsForTheLookup(self) -> None:
        resolver = self.resolver()
        d = resolver.resolve("backend.test")
        self.assertNoResult(d)
        self.assertEqual(self.lookup.queries, ["backend.test"])
        self.lookup.answers[0].callback("192.0.2.10")
        self.assertEqual(self.successResultOf(d), "192.0.2.10")

    def test_cachedWithinTheTTL(self) -> None:
        resolver = self.resolver(ttl=300)
        d = resolver.resolve("backend.test")
        self.lookup.answers[0].callback("192.0.2.10")
        self.successResultOf(d)
        for _ in range(5):
            self.clock.advance(59.9)
            self.assertEqual(self.successResultOf(resolver.resolve("backend.test")), "192.0.2.10")
        self.assertEqual(self.lookup.queries, ["backend.test"])
        self.assertEqual(resolver.lookups, 1)

    def test_lookedUpAgainOnceTheTTLExpires(self) -> None:
        resolver = self.resolver(ttl=300)
        resolver.resolve("backend.test")
        self.lookup.answers[0].callback("192.0.2.10")
        self.clock.advance(300)
        again = resolver.resolve("backend.test")
        self.assertNoResult(again)
        self.assertEqual(len(self.lookup.queries), 2)
        self.lookup.answers[1].callback("192.0.2.11")
        self.assertEqual(self.successResultOf(again), "192.0.2.11")
        self.assertEqual(self.successResultOf(resolver.resolve("backend.test")), "192.0.2.11")
        self.assertEqual(resolver.lookups, 2)

    def test_ttlStartsWhenTheAnswerArrives(self) -> None:
        resolver = self.resolver(ttl=10)
        resolver.resolve("slow.test")
        self.clock.advance(8)
        self.lookup.answers[0].callback("192.0.2.12")
        self.clock.advance(9.9)
        self.successResultOf(resolver.resolve("slow.test"))
        self.assertEqual(len(self.lookup.queries), 1)
        self.clock.advance(0.1)
        self.assertNoResult(resolver.resolve("slow.test"))
        self.assertEqual(len(self.lookup.queries), 2)

    def test_zeroTTLLooksUpEveryTime(self) -> None:
        resolver = self.resolver(ttl=0)
        for index in range(3):
            d = resolver.resolve("backend.test")
            self.assertNoResult(d)
            self.lookup.answers[index].callback(f"192.0.2.{index}")
            self.assertEqual(self.successResultOf(d), f"192.0.2.{index}")
        self.assertEqual(self.lookup.queries, ["backend.test"] * 3)
        self.assertEqual(resolver.lookups, 3)

    def test_concurrentResolvesShareOneLookup(self) -> None:
        resolver = self.resolver(ttl=0)
        waiters = [resolver.resolve("backend.test") for _ in range(3)]
        other = resolver.resolve("other.test")
        self.assertEqual(self.lookup.queries, ["backend.test", "other.test"])
        self.lookup.answers[0].callback("192.0.2.20")
        self.assertEqual([self.successResultOf(w) for w in waiters], ["192.0.2.20"] * 3)
        self.assertNoResult(other)
        self.lookup.answers[1].callback("192.0.2.21")
        self.assertEqual(self.successResultOf(other), "192.0.2.21")

    def test_synchronousLookup(self) -> None:
        resolver = Resolver(self.clock, 300, lambda host: succeed("192.0.2.30"))
        self.assertEqual(self.successResultOf(resolver.resolve("now.test")), "192.0.2.30")
        self.assertEqual(self.successResultOf(resolver.resolve("now.test")), "192.0.2.30")
        self.assertEqual(resolver.lookups, 1)

    def test_failureReachesEveryWaiter(self) -> None:
        resolver = self.resolver()
        waiters = [resolver.resolve("nx.test") for _ in range(2)]
        self.lookup.answers[0].errback(OSError("Name or service not known"))
        for waiter in waiters:
            failure = self.failureResultOf(waiter, ResolveError)
            self.assertIsInstance(failure.value, NodePassError)
            self.assertIn("'nx.test'", str(failure.value))
            self.assertIn("Name or service not known", str(failure.value))

    def test_failureIsNotCached(self) -> None:
        resolver = self.resolver()
        first = resolver.resolve("flaky.test")
        self.lookup.answers[0].errback(OSError("temporary failure"))
        self.failureResultOf(first, ResolveError)
        second = resolver.resolve("flaky.test")
        self.assertNoResult(second)
        self.assertEqual(len(self.lookup.queries), 2)
        self.lookup.answers[1].callback("192.0.2.40")
        self.assertEqual(self.successResultOf(second), "192.0.2.40")

    def test_clearForgetsTheCache(self) -> None:
        resolver = self.resolver()
        resolver.resolve("backend.test")
        self.lookup.answers[0].callback("192.0.2.50")
        resolver.clear()
        d = resolver.resolve("backend.test")
        self.assertNoResult(d)
        self.assertEqual(len(self.lookup.queries), 2)
        self.lookup.answers[1].callback("192.0.2.51")
        self.assertEqual(self.successResultOf(d), "192.0.2.51")

    def test_namesAreCachedSeparately(self) -> None:
        resolver = self.resolver()
        resolver.resolve("a.test")
        resolver.resolve("b.test")
        self.lookup.answers[0].callback("192.0.2.1")
        self.lookup.answers[1].callback("192.0.2.2")
        self.assertEqual(self.successResultOf(resolver.resolve("a.test")), "192.0.2.1")
        self.assertEqual(self.successResultOf(resolver.resolve("b.test")), "192.0.2.2")

    def test_logsThroughTheInstanceLogger(self) -> None:
        """
        Given a logger, the resolver's lines go to it and not to the
        process-global publisher (several instances share one process).
        """
        log, mine, seenGlobally = instanceLogger(self)
        resolver = Resolver(self.clock, 300.0, self.lookup, log=log)
        resolver.resolve("backend.test")
        self.lookup.answers[0].callback("192.0.2.10")
        self.assertEqual(
            [formatEvent(event) for event in mine], ["Resolved backend.test -> 192.0.2.10"]
        )
        self.assertEqual(seenGlobally, [])

    def test_withoutALoggerLogsGlobally(self) -> None:
        resolver = self.resolver()
        with capturedLogs() as events:
            resolver.resolve("backend.test")
            self.lookup.answers[0].callback("192.0.2.10")
        self.assertEqual(
            [formatEvent(event) for event in events], ["Resolved backend.test -> 192.0.2.10"]
        )

    def test_lookupRaisingSynchronouslyFailsAndIsNotStuck(self) -> None:
        calls: list[str] = []

        def lookup(host: str) -> Deferred[str]:
            calls.append(host)
            raise UnicodeError("label empty or too long")

        resolver = Resolver(self.clock, 300, lookup)
        for attempt in (1, 2):
            self.failureResultOf(resolver.resolve("a..b"), ResolveError)
            self.assertEqual(len(calls), attempt)


def test_isIP() -> None:
    assert isIP("1.2.3.4") and isIP("::1") and isIP("fe80::1")
    assert not isIP("example.com") and not isIP("") and not isIP("1.2.3.4:5")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.1.1.1", ("1.1.1.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("[2001:db8::53]", ("2001:db8::53", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("::1", ("::1", 53)),
        ("dns.test:54", ("dns.test", 54)),
        ("dns.test", ("dns.test", 53)),
    ],
)
def test_splitServer(text: str, expected: tuple[str, int]) -> None:
    assert splitServer(text) == expected


def test_splitServerDefaultPort() -> None:
    assert splitServer("9.9.9.9", defaultPort=853) == ("9.9.9.9", 853)
    assert splitServer("[::1]", defaultPort=853) == ("::1", 853)
    assert splitServer("9.9.9.9:5300", defaultPort=853) == ("9.9.9.9", 5300)
