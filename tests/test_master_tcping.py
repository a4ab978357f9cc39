"""
Tests for L{nodepass.master.tcping} (spec §8.9).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IAddress, IHostnameResolver, IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from nodepass.master.tcping import (
    BUSY_ERROR,
    InvalidTarget,
    ProbeResult,
    TCPing,
    parseTarget,
)

FIELDS = ["target", "connected", "latency", "error"]


@implementer(IHostnameResolver)
class RecordingResolver:
    """
    Records names and answers them from a table; unknown names resolve to
    nothing, and names mapped to C{None} never finish resolving.
    """

    def __init__(self, table: dict[str, IAddress | None]) -> None:
        self.table = table
        self.names: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IResolutionReceiver:
        self.names.append(hostName)
        resolutionReceiver.resolutionBegan(None)
        if hostName in self.table:
            address = self.table[hostName]
            if address is None:
                return resolutionReceiver
            resolutionReceiver.addressResolved(address)
        resolutionReceiver.resolutionComplete()
        return resolutionReceiver


class ProbeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.tcping = TCPing(self.reactor)

    def _result(self, d: Deferred[ProbeResult]) -> ProbeResult:
        result = self.successResultOf(d)
        self.assertEqual(list(result), FIELDS)
        json.dumps(result)
        return result

    def _connect(self, index: int = 0) -> StringTransport:
        factory = self.reactor.tcpClients[index][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return transport

    def test_connected(self) -> None:
        """
        A connection gives C{connected: true}, the latency in whole ms, no
        error; the connection is closed at once and nothing is sent.
        """
        d = self.tcping.probe("127.0.0.1:18090")
        self.assertNoResult(d)
        host, port, _, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 18090, 5.0))
        self.assertEqual(self.tcping.busySlots, 1)
        self.reactor.advance(0.2519)
        transport = self._connect()
        self.assertEqual(
            self._result(d),
            {"target": "127.0.0.1:18090", "connected": True, "latency": 251, "error": None},
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.tcping.busySlots, 0)

    def test_refused(self) -> None:
        """
        A refused connection gives a Go-shaped error and latency 0 (capture 53).
        """
        d = self.tcping.probe("127.0.0.1:1")
        self.reactor.advance(0.1)
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        # HostnameEndpoint reports the failure once no address is left to try.
        self.reactor.advance(0.3)
        self.assertEqual(
            self._result(d),
            {
                "target": "127.0.0.1:1",
                "connected": False,
                "latency": 0,
                "error": "dial tcp 127.0.0.1:1: connect: connection refused",
            },
        )
        self.assertEqual(self.tcping.busySlots, 0)

    def test_timeout(self) -> None:
        """
        The dial is abandoned after C{timeout} seconds on the injected clock.
        """
        tcping = TCPing(self.reactor, timeout=2.0)
        d = tcping.probe("10.255.255.1:80")
        self.reactor.advance(1.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertEqual(
            self._result(d),
            {
                "target": "10.255.255.1:80",
                "connected": False,
                "latency": 0,
                "error": "dial tcp 10.255.255.1:80: i/o timeout",
            },
        )
        self.assertEqual(tcping.busySlots, 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeoutIncludesResolution(self) -> None:
        """
        A name that never resolves times out too.
        """
        resolver = RecordingResolver({"slow.example": None})
        self.reactor.installNameResolver(resolver)
        d = self.tcping.probe("slow.example:80")
        self.reactor.advance(5)
        self.assertEqual(self._result(d)["error"], "dial tcp slow.example:80: i/o timeout")
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.tcping.busySlots, 0)

    def test_resolvedByReactorResolver(self) -> None:
        """
        Names go to the reactor's pluggable resolver (no getaddrinfo in the
        reactor thread); IPv6 targets are dialled without brackets.
        """
        resolver = RecordingResolver(
            {
                "dash.example": IPv4Address("TCP", "192.0.2.7", 443),
                "::1": IPv6Address("TCP", "::1", 8080),
            }
        )
        self.reactor.installNameResolver(resolver)
        first = self.tcping.probe("dash.example:443")
        second = self.tcping.probe("[::1]:8080")
        self.assertEqual(resolver.names, ["dash.example", "::1"])
        self.assertEqual(
            [client[:2] for client in self.reactor.tcpClients],
            [("192.0.2.7", 443), ("::1", 8080)],
        )
        self._connect(0)
        self._connect(1)
        self.assertTrue(self._result(first)["connected"])
        self.assertEqual(self._result(second)["target"], "[::1]:8080")

    def test_unknownHost(self) -> None:
        self.reactor.installNameResolver(RecordingResolver({}))
        d = self.tcping.probe("nosuch.invalid:80")
        self.assertEqual(
            self._result(d),
            {
                "target": "nosuch.invalid:80",
                "connected": False,
                "latency": 0,
                "error": "dial tcp: lookup nosuch.invalid: no such host",
            },
        )

    def test_slotExhaustion(self) -> None:
        """
        Beyond C{slots} running probes, a probe waits up to 1 s for a slot,
        then answers "too many requests" without dialling.
        """
        tcping = TCPing(self.reactor, slots=2)
        running = [tcping.probe(f"127.0.0.1:{port}") for port in (1001, 1002)]
        waiting = tcping.probe("127.0.0.1:1003")
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.reactor.advance(0.999)
        self.assertNoResult(waiting)
        self.reactor.advance(0.001)
        self.assertEqual(
            self._result(waiting),
            {"target": "127.0.0.1:1003", "connected": False, "latency": 0, "error": BUSY_ERROR},
        )
        self.assertEqual(BUSY_ERROR, "too many requests")
        self.assertEqual(len(self.reactor.tcpClients), 2)
        for d in running:
            self.assertNoResult(d)
        self.reactor.advance(4)
        for d in running:
            self.assertFalse(self._result(d)["connected"])
        self.assertEqual(tcping.busySlots, 0)

    def test_defaultTenSlots(self) -> None:
        probes = [self.tcping.probe(f"127.0.0.1:{2000 + i}") for i in range(11)]
        self.assertEqual(len(self.reactor.tcpClients), 10)
        self.reactor.advance(1)
        self.assertEqual(self._result(probes[10])["error"], BUSY_ERROR)

    def test_slotFreedInTime(self) -> None:
        """
        A waiting probe dials as soon as a slot frees within the wait.
        """
        tcping = TCPing(self.reactor, slots=1)
        first = tcping.probe("127.0.0.1:1")
        second = tcping.probe("127.0.0.1:2")
        self.reactor.advance(0.5)
        self._connect(0)
        self.assertTrue(self._result(first)["connected"])
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.reactor.advance(0.75)
        self._connect(1)
        self.assertEqual(self._result(second)["latency"], 750)

    def test_cancelReleasesSlot(self) -> None:
        tcping = TCPing(self.reactor, slots=1)
        d = tcping.probe("127.0.0.1:1")
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(tcping.busySlots, 0)
        waiting = tcping.probe("127.0.0.1:2")
        self.assertEqual(len(self.reactor.tcpClients), 2)
        waiting.cancel()
        self.failureResultOf(waiting)

    def test_badTargetNoDial(self) -> None:
        """
        A malformed target is answered at once, without a slot or a dial (capture 55).
        """
        d = self.tcping.probe("nonsense")
        self.assertEqual(
            self._result(d),
            {
                "target": "nonsense",
                "connected": False,
                "latency": 0,
                "error": "dial tcp: address nonsense: missing port in address",
            },
        )
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.tcping.busySlots, 0)

    def test_constructorValidation(self) -> None:
        self.assertRaises(ValueError, TCPing, self.reactor, slots=0)
        self.assertRaises(ValueError, TCPing, self.reactor, timeout=0)
        self.assertRaises(ValueError, TCPing, self.reactor, slotWait=-1)
        self.assertRaises(TypeError, TCPing, object())


class ParseTargetTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for target, expected in [
            ("127.0.0.1:80", ("127.0.0.1", 80)),
            ("example.com:443", ("example.com", 443)),
            ("localhost:65535", ("localhost", 65535)),
            ("[::1]:80", ("::1", 80)),
            ("[2001:db8::1]:8080", ("2001:db8::1", 8080)),
            ("[fe80::1%eth0]:22", ("fe80::1%eth0", 22)),
        ]:
            self.assertEqual(parseTarget(target), expected)

    def test_invalid(self) -> None:
        for target, why in [
            ("", "dial tcp: missing address"),
            ("nonsense", "dial tcp: address nonsense: missing port in address"),
            ("host:", "missing port in address"),
            ("::1:80", "too many colons in address"),
            ("[::1]", "missing port in address"),
            ("[::1]:", "missing port in address"),
            ("[::1", "missing ']' in address"),
            ("[::1]80", "unexpected text after ']'"),
            ("[example.com]:80", "not an IPv6 address in brackets"),
            (":80", "missing host in address"),
            ("h:abc", "invalid port"),
            ("h:0", "invalid port"),
            ("h:65536", "invalid port"),
            ("h:+1", "invalid port"),
            ("h:\u0663", "invalid port"),
            ("a b:80", "invalid host"),
            ("a/b:80", "invalid host"),
            ("user@h:80", "invalid host"),
            ("x" * 254 + ":80", "invalid host"),
        ]:
            with self.assertRaises(InvalidTarget, msg=target) as caught:
                parseTarget(target)
            self.assertIn(why, str(caught.exception), target)
            self.assertIsInstance(caught.exception, ValueError)


class _Recorder(Protocol):
    def __init__(self, finished: Deferred[bytes]) -> None:
        self.finished = finished
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.finished.callback(self.received)


@pytest.mark.integration
class LoopbackTests(TestCase):
    """
    One real dial on 127.0.0.1 through the real reactor (bounded in time).
    """

    timeout = 15

    async def test_loopback(self) -> None:
        finished: Deferred[bytes] = Deferred()
        port = reactor.listenTCP(
            0, Factory.forProtocol(lambda: _Recorder(finished)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        tcping = TCPing(reactor, timeout=5)
        result = await tcping.probe(f"127.0.0.1:{number}")
        self.assertEqual(list(result), FIELDS)
        self.assertEqual(result["target"], f"127.0.0.1:{number}")
        self.assertTrue(result["connected"], result)
        self.assertIsNone(result["error"])
        self.assertGreaterEqual(result["latency"], 0)
        # The server sees the probe close at once, having received nothing.
        self.assertEqual(await finished, b"")

        await port.stopListening()
        refused = await tcping.probe(f"127.0.0.1:{number}")
        self.assertFalse(refused["connected"])
        self.assertEqual(refused["latency"], 0)
        self.assertEqual(
            refused["error"], f"dial tcp 127.0.0.1:{number}: connect: connection refused"
        )
