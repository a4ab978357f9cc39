"""
Tests for L{nodepass.fasttls} (pool-connection TLS over the stdlib C{ssl} module) and its switch
in L{nodepass._compat.fasttls}: in memory, each end either the fast layer or Twisted's
L{TLSMemoryBIOFactory}, on an iosim pump (no sockets).
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from cryptography import x509
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from nodepass._compat import fasttls as compat
from nodepass.fasttls import (
    FastTLSClientEndpoint,
    FastTLSFactory,
    FastTLSProtocol,
    IStdlibTLS,
    StdlibTLS,
)
from nodepass.tls import (
    ServerCredentials,
    certificateFingerprint,
    clientContextFactory,
    generateSelfSigned,
    localFingerprint,
    peerFingerprint,
)
from nodepass.transports.interface import IPoolTLSTransport, PoolAddress, PoolTLS
from nodepass.transports.tcp import tcp

ADDRESS = IPv4Address("TCP", "127.0.0.1", 4433)
CREDENTIALS = ServerCredentials.fromPEM(*generateSelfSigned())


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    Records what arrives (and in how many calls), the handshake and the end; optionally
    greets on connect and echoes.
    """

    def __init__(self, greeting: bytes = b"", echo: bool = False) -> None:
        self.greeting = greeting
        self.echo = echo
        self.received = b""
        self.calls = 0
        self.handshakes = 0
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.calls += 1
        if self.echo:
            self.transport.write(b"echo:" + data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def tlsFactory(
    kind: str, creator: Any, isClient: bool, protocol: Protocol, clock: Clock, coalesce: bool
) -> Any:
    wrapped = Factory.forProtocol(lambda: protocol)
    if kind == "fast":
        return FastTLSFactory(creator, isClient, wrapped, clock=clock if coalesce else None)
    return TLSMemoryBIOFactory(creator, isClient, wrapped, clock=clock)


class Ends:
    """
    Both ends of one in-memory TLS connection; C{server}/C{client} name each end's layer
    (C{"fast"} or C{"twisted"}).
    """

    def __init__(
        self,
        server: str = "fast",
        client: str = "fast",
        serverProtocol: Recorder | None = None,
        clientProtocol: Recorder | None = None,
        clientCreator: Any = None,
        greet: bool = True,
        coalesce: bool = False,
    ) -> None:
        self.clock = Clock()
        self.server = serverProtocol if serverProtocol is not None else Recorder(echo=True)
        self.client = clientProtocol if clientProtocol is not None else Recorder(b"ping")
        serverFactory = tlsFactory(
            server, CREDENTIALS.contextFactory(), False, self.server, self.clock, coalesce
        )
        if clientCreator is None:
            clientCreator = clientContextFactory(1, "none")
        clientFactory = tlsFactory(client, clientCreator, True, self.client, self.clock, coalesce)
        self.clientTLS: Any
        self.serverTLS: Any
        self.clientTLS, self.serverTLS, self.pump = iosim.connectedServerAndClient(
            lambda: serverFactory.buildProtocol(ADDRESS),
            lambda: clientFactory.buildProtocol(ADDRESS),
            greet=greet,
            clock=self.clock,
        )

    @property
    def established(self) -> bool:
        return self.client.received == b"echo:ping" and self.server.received == b"ping"


class ExchangeTests(SynchronousTestCase):
    def test_bothFast(self) -> None:
        """
        Two fast ends agree on TLS 1.3; a write made before the handshake arrives after it.
        """
        ends = Ends()
        self.assertTrue(ends.established)
        self.assertIsInstance(ends.clientTLS, FastTLSProtocol)
        self.assertEqual(ends.clientTLS.getHandle().version(), "TLSv1.3")
        self.assertEqual(ends.serverTLS.getHandle().version(), "TLSv1.3")
        self.assertEqual((ends.client.handshakes, ends.server.handshakes), (1, 1))

    def test_fastServerTwistedClient(self) -> None:
        """
        A fast server and Twisted's client layer (pyOpenSSL) talk; the client sees the
        credentials' certificate.
        """
        ends = Ends(server="fast", client="twisted")
        self.assertTrue(ends.established)
        self.assertIsInstance(ends.clientTLS, TLSMemoryBIOProtocol)
        self.assertEqual(peerFingerprint(ends.clientTLS), CREDENTIALS.fingerprint)

    def test_twistedServerFastClient(self) -> None:
        """
        Twisted's server layer and a fast client talk; the fast client sends no server name.
        """
        ends = Ends(server="twisted", client="fast")
        self.assertTrue(ends.established)
        self.assertIsNone(ends.serverTLS.getHandle().get_servername())
        self.assertEqual(peerFingerprint(ends.clientTLS), CREDENTIALS.fingerprint)

    def test_bigWriteOneDelivery(self) -> None:
        """
        A 1 MiB write (64 records) arrives intact; the records of one received chunk reach the
        wrapped protocol as one string.
        """
        ends = Ends()
        payload = os.urandom(1 << 20)
        ends.client.transport.write(payload)  # type: ignore[union-attr]
        ends.server.echo = False
        calls = ends.server.calls
        ends.pump.pump()
        self.assertEqual(ends.server.calls, calls + 1)
        self.assertEqual(ends.server.received, b"ping" + payload)

    def test_writeSequence(self) -> None:
        ends = Ends()
        ends.server.echo = False
        ends.client.transport.writeSequence([b"a", b"b", b"c"])  # type: ignore[union-attr]
        ends.pump.flush()
        self.assertEqual(ends.server.received, b"pingabc")

    def test_emptyWrite(self) -> None:
        """
        An empty write sends nothing.
        """
        ends = Ends()
        ends.clientTLS.write(b"")
        self.assertEqual(ends.pump.clientIO.stream, [])


class CoalescingTests(SynchronousTestCase):
    """
    With a clock, small writes in a burst (no time between them) go out as one string at
    the end of the reactor turn; a lone one goes out at once.
    """

    def setUp(self) -> None:
        self.ends = Ends(coalesce=True)
        self.ends.server.echo = False
        self.out = self.ends.pump.clientIO.stream

    def test_loneWriteAtOnce(self) -> None:
        self.ends.clock.advance(1)
        self.ends.clientTLS.write(b"a")
        self.assertEqual(len(self.out), 1)

    def test_burst(self) -> None:
        """
        The first write goes at once; the nine after it in the same instant wait for the end
        of the turn and then go as one record, in order.
        """
        self.ends.clock.advance(1)
        for i in range(10):
            self.ends.clientTLS.write(b"%d" % i)
        self.assertEqual(len(self.out), 1)
        self.ends.clock.advance(0)
        self.assertEqual(len(self.out), 2)
        self.assertEqual(len(self.out[1]), 5 + 9 + 17)
        self.ends.pump.flush()
        self.assertEqual(self.ends.server.received, b"ping0123456789")

    def test_spacedWritesAtOnce(self) -> None:
        for i in range(3):
            self.ends.clock.advance(1)
            self.ends.clientTLS.write(b"%d" % i)
        self.assertEqual(len(self.out), 3)

    def test_bigWriteKeepsOrder(self) -> None:
        """
        A large write sends the small ones waiting before it first.
        """
        self.ends.clock.advance(1)
        self.ends.clientTLS.write(b"a")
        self.ends.clientTLS.write(b"b")
        big = b"B" * 20000
        self.ends.clientTLS.write(big)
        self.ends.clientTLS.write(b"c")
        self.ends.pump.flush()
        self.assertEqual(self.ends.server.received, b"pingab" + big + b"c")

    def test_fullBatchGoesEarly(self) -> None:
        """
        A burst is sent as soon as it holds a record's worth.
        """
        self.ends.clock.advance(1)
        self.ends.clientTLS.write(b"x")
        for _ in range(4):
            self.ends.clientTLS.write(b"y" * 4096)
        self.assertEqual(len(self.out), 2)

    def test_closeSendsTheBurstFirst(self) -> None:
        self.ends.clock.advance(1)
        self.ends.clientTLS.write(b"a")
        self.ends.clientTLS.write(b"b")
        self.ends.clientTLS.loseConnection()
        self.ends.pump.flush()
        self.assertEqual(self.ends.server.received, b"pingab")
        assert self.ends.server.lost is not None
        self.assertTrue(self.ends.server.lost.check(ConnectionDone))

    def test_halfCloseSendsTheBurstFirst(self) -> None:
        """
        C{loseWriteConnection} shuts the TCP connection under TLS, after the waiting writes.
        """
        self.ends.clock.advance(1)
        self.ends.clientTLS.write(b"a")
        self.ends.clientTLS.write(b"b")
        closed: list[int] = []
        io = self.ends.pump.clientIO
        io.loseWriteConnection = lambda: closed.append(len(io.stream))
        self.ends.clientTLS.loseWriteConnection()
        self.assertEqual(closed, [2])

    def test_lossDropsTheBurst(self) -> None:
        self.ends.clock.advance(1)
        self.ends.clientTLS.write(b"a")
        self.ends.clientTLS.write(b"b")
        self.ends.clientTLS.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.ends.clock.getDelayedCalls(), [])


class CertificateTests(SynchronousTestCase):
    def test_peerCertificate(self) -> None:
        """
        After the handshake the client's transport gives the server's leaf as a cryptography
        certificate, with the credentials' fingerprint; before it, nothing.
        """
        ends = Ends(greet=False)
        self.assertIsNone(ends.clientTLS.getPeerCertificate())
        self.assertIsNone(peerFingerprint(ends.clientTLS))
        ends.pump.flush()
        cert = ends.clientTLS.getPeerCertificate()
        self.assertIsInstance(cert, x509.Certificate)
        self.assertEqual(certificateFingerprint(cert), CREDENTIALS.fingerprint)
        self.assertEqual(peerFingerprint(ends.client.transport), CREDENTIALS.fingerprint)

    def test_serverSide(self) -> None:
        """
        The server names its own certificate and sees none from the client.
        """
        ends = Ends()
        self.assertEqual(localFingerprint(ends.serverTLS), CREDENTIALS.fingerprint)
        self.assertIsNone(peerFingerprint(ends.serverTLS))
        self.assertIsNone(localFingerprint(ends.clientTLS))

    def test_noALPN(self) -> None:
        ends = Ends()
        self.assertIsNone(ends.clientTLS.negotiatedProtocol)
        self.assertIsNone(ends.serverTLS.negotiatedProtocol)

    def test_creators(self) -> None:
        """
        Creators without ALPN offer the stdlib form; with ALPN they do not.
        """
        self.assertTrue(IStdlibTLS.providedBy(CREDENTIALS.contextFactory()))
        self.assertTrue(IStdlibTLS.providedBy(clientContextFactory(1, "none")))
        self.assertTrue(IStdlibTLS.providedBy(clientContextFactory(2, "localhost")))
        self.assertFalse(IStdlibTLS.providedBy(CREDENTIALS.contextFactory([b"h2"])))
        self.assertFalse(IStdlibTLS.providedBy(clientContextFactory(1, "none", [b"h2"])))
        settings = CREDENTIALS.contextFactory().stdlibTLS()  # type: ignore[attr-defined]
        self.assertIsInstance(settings, StdlibTLS)
        self.assertEqual(settings.context.minimum_version, ssl.TLSVersion.TLSv1_3)
        self.assertEqual(settings.context.num_tickets, 0)
        self.assertIs(settings, CREDENTIALS.contextFactory().stdlibTLS())  # type: ignore[attr-defined]


class CloseTests(SynchronousTestCase):
    def test_loseConnection(self) -> None:
        """
        C{loseConnection} exchanges close_notify alerts, then both ends end cleanly; later
        writes are dropped.
        """
        ends = Ends()
        ends.clientTLS.loseConnection()
        ends.clientTLS.write(b"too late")
        ends.pump.flush()
        assert ends.client.lost is not None and ends.server.lost is not None
        self.assertTrue(ends.client.lost.check(ConnectionDone))
        self.assertTrue(ends.server.lost.check(ConnectionDone))
        self.assertEqual(ends.server.received, b"ping")

    def test_serverCloses(self) -> None:
        ends = Ends()
        ends.serverTLS.write(b"bye")
        ends.serverTLS.loseConnection()
        ends.pump.flush()
        self.assertEqual(ends.client.received, b"echo:pingbye")
        assert ends.client.lost is not None
        self.assertTrue(ends.client.lost.check(ConnectionDone))

    def test_loseBeforeHandshake(self) -> None:
        """
        Closing before the handshake (with nothing to send) aborts the connection.
        """
        ends = Ends(clientProtocol=Recorder(), greet=False)
        ends.clientTLS.loseConnection()
        self.assertTrue(ends.pump.clientIO.disconnecting)
        ends.pump.flush()
        self.assertIsNotNone(ends.client.lost)
        self.assertEqual(ends.server.received, b"")

    def test_closeNotifyWaitsForProducer(self) -> None:
        """
        With a producer registered, C{loseConnection} waits: the close_notify goes out when
        the producer is unregistered.
        """
        ends = Ends()
        ends.clientTLS.registerProducer(Producer(), True)
        ends.clientTLS.loseConnection()
        ends.clientTLS.write(b"still flowing")
        ends.pump.flush()
        self.assertIsNone(ends.server.lost)
        self.assertEqual(ends.server.received, b"pingstill flowing")
        ends.clientTLS.unregisterProducer()
        ends.pump.flush()
        self.assertIsNotNone(ends.server.lost)
        self.assertIsNotNone(ends.client.lost)

    def test_badRecord(self) -> None:
        """
        Garbage where a record should be ends the connection with the TLS error; nothing of it
        reaches the wrapped protocol.
        """
        ends = Ends()
        ends.serverTLS.dataReceived(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        ends.pump.flush()
        assert ends.server.lost is not None
        self.assertTrue(ends.server.lost.check(ssl.SSLError))
        self.assertEqual(ends.server.received, b"ping")

    def test_eofWithoutCloseNotify(self) -> None:
        """
        The TCP connection ending without a close_notify is reported as L{ConnectionLost};
        what arrived before the end is delivered first.
        """
        ends = Ends()
        ends.server.echo = False
        ends.clientTLS.write(b"final")
        data = ends.pump.clientIO.getOutBuffer()
        ends.serverTLS.dataReceived(data[:-1])
        ends.serverTLS.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(ends.server.received, b"ping")
        assert ends.server.lost is not None
        self.assertTrue(ends.server.lost.check(ConnectionLost))

    def test_dataThenLoss(self) -> None:
        ends = Ends()
        ends.server.echo = False
        ends.clientTLS.write(b"final")
        ends.serverTLS.dataReceived(ends.pump.clientIO.getOutBuffer())
        ends.serverTLS.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(ends.server.received, b"pingfinal")


class RefusedSettingsTests(SynchronousTestCase):
    def test_badServerName(self) -> None:
        """
        A server name the ssl module refuses ends that connection (with the error as the
        reason), not the process.
        """

        @implementer(IStdlibTLS)
        class Source:
            def stdlibTLS(self) -> StdlibTLS:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                return StdlibTLS(context, "")

        application = Recorder(b"early")
        protocol = FastTLSFactory(
            Source(), True, Factory.forProtocol(lambda: application)
        ).buildProtocol(ADDRESS)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        protocol.connectionLost(Failure(ConnectionDone()))
        assert application.lost is not None
        self.assertTrue(application.lost.check(ValueError))


class ProducerTests(SynchronousTestCase):
    def test_pendingWritesPause(self) -> None:
        """
        A write before the handshake pauses a registered producer; the handshake sends the
        write and resumes it.
        """
        ends = Ends(clientProtocol=Recorder(), greet=False)
        producer = Producer()
        ends.clientTLS.registerProducer(producer, True)
        ends.clientTLS.write(b"early")
        self.assertEqual(producer.events, ["pause"])
        ends.pump.flush()
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertEqual(ends.server.received, b"early")

    def test_membrane(self) -> None:
        """
        The TCP transport gets a membrane: repeated pauses reach the producer once.
        """
        protocol = FastTLSFactory(
            CREDENTIALS.contextFactory(),  # type: ignore[arg-type]
            False,
            Factory.forProtocol(Recorder),
        ).buildProtocol(ADDRESS)
        transport = StringTransport()
        protocol.makeConnection(transport)
        producer = Producer()
        protocol.registerProducer(producer, True)
        membrane = transport.producer
        self.assertIsNot(membrane, producer)
        membrane.pauseProducing()
        membrane.pauseProducing()
        membrane.resumeProducing()
        membrane.resumeProducing()
        membrane.stopProducing()
        self.assertEqual(producer.events, ["pause", "resume", "stop"])
        protocol.unregisterProducer()
        self.assertIsNone(transport.producer)

    def test_pauseReadingPassesDown(self) -> None:
        """
        Pausing the TLS transport pauses the TCP transport's reading.
        """
        protocol = FastTLSFactory(
            CREDENTIALS.contextFactory(),  # type: ignore[arg-type]
            False,
            Factory.forProtocol(Recorder),
        ).buildProtocol(ADDRESS)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_registerAfterLoss(self) -> None:
        ends = Ends()
        ends.clientTLS.loseConnection()
        ends.pump.flush()
        producer = Producer()
        ends.clientTLS.registerProducer(producer, True)
        self.assertEqual(producer.events, ["stop"])


class EndpointTests(SynchronousTestCase):
    def test_connectFiresWithWrapped(self) -> None:
        """
        L{FastTLSClientEndpoint} connects the inner endpoint with a TLS factory and fires with
        the application's protocol.
        """
        made: list[Any] = []

        class Inner:
            def connect(self, factory: Any) -> Any:
                made.append(factory)
                return succeed(factory.buildProtocol(ADDRESS))

        endpoint = FastTLSClientEndpoint(
            clientContextFactory(1, "none"),  # type: ignore[arg-type]
            Inner(),  # type: ignore[arg-type]
        )
        application = Recorder()
        result = self.successResultOf(endpoint.connect(Factory.forProtocol(lambda: application)))
        self.assertIs(result, application)
        self.assertIsInstance(made[0], FastTLSFactory)
        self.assertTrue(made[0].isClient)
        self.assertIn("(TLS)", made[0].logPrefix())


class SwitchTests(SynchronousTestCase):
    """
    L{nodepass._compat.fasttls}: what it pins, the switch, the logged fallback, and the TCP
    transport following them.
    """

    def setUp(self) -> None:
        self.addCleanup(compat.setEnabled, True)

    def test_nothingMissing(self) -> None:
        """
        This Python's ssl module has everything the fast path relies on.
        """
        self.assertEqual(compat.missing(), [])
        self.assertTrue(compat.available())

    def test_stdlibBehaviourPinned(self) -> None:
        """
        What L{FastTLSProtocol} relies on in C{ssl.SSLObject}: one write of any size makes
        records of at most 16 KiB, each read returns one record, C{unwrap} before the peer's
        close_notify raises C{SSLWantReadError} after queueing ours, and a read after the
        peer's close_notify answers C{b""} (or raises C{SSLZeroReturnError}).
        """
        server = CREDENTIALS.contextFactory().stdlibTLS().context  # type: ignore[attr-defined]
        client = clientContextFactory(1, "none").stdlibTLS().context  # type: ignore[attr-defined]
        sIn, sOut, cIn, cOut = (ssl.MemoryBIO() for _ in range(4))
        s = server.wrap_bio(sIn, sOut, server_side=True)
        c = client.wrap_bio(cIn, cOut, server_side=False)
        for _ in range(3):
            for end in (c, s):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            sIn.write(cOut.read())
            cIn.write(sOut.read())
        c.write(b"x" * 40000)
        sIn.write(cOut.read())
        self.assertEqual([len(s.read(65536)) for _ in range(3)], [16384, 16384, 7232])
        self.assertRaises(ssl.SSLWantReadError, s.read, 65536)
        self.assertRaises(ssl.SSLWantReadError, c.unwrap)
        self.assertTrue(cOut.pending)
        sIn.write(cOut.read())
        try:
            self.assertEqual(s.read(65536), b"")
        except ssl.SSLZeroReturnError:
            pass

    def test_switchOff(self) -> None:
        """
        C{NP_FAST_TLS=0} puts the TCP transport back on Twisted's TLS layer; anything else
        leaves the fast path on.
        """
        creator = CREDENTIALS.contextFactory()
        compat.configure({"NP_FAST_TLS": "0"})
        self.assertFalse(compat.available())
        self.assertIsInstance(tcp.serverFactory(Clock(), Factory(), creator), TLSMemoryBIOFactory)
        compat.configure({"NP_FAST_TLS": "1"})
        self.assertIsInstance(tcp.serverFactory(Clock(), Factory(), creator), FastTLSFactory)
        compat.configure({})
        self.assertTrue(compat.available())

    def test_poolTLS(self) -> None:
        """
        The TCP transport takes a L{PoolTLS}: mode 0 is the pool factory itself, mode 1 the
        fast layer on both sides.
        """
        self.assertTrue(IPoolTLSTransport.providedBy(tcp))
        factory = Factory()
        self.assertIs(tcp.serverFactory(Clock(), factory, PoolTLS()), factory)
        serving = tcp.serverFactory(Clock(), factory, PoolTLS.forServer(1, CREDENTIALS))
        self.assertIsInstance(serving, FastTLSFactory)
        reactor = MemoryReactorClock()
        application = Recorder()
        address = PoolAddress("127.0.0.1", "127.0.0.1", 10101, "127.0.0.1:10101", "none")
        tls = PoolTLS.forClient(1, lambda: clientContextFactory(1, "none"))
        tcp.connect(reactor, address, application, tls, 5.0)
        reactor.tcpClients[0][2].buildProtocol(ADDRESS).makeConnection(StringTransport())
        self.assertIsInstance(application.transport, FastTLSProtocol)

    def test_creatorWithoutStdlibForm(self) -> None:
        """
        A creator the stdlib module cannot serve (ALPN) stays on Twisted's layer.
        """
        creator = CREDENTIALS.contextFactory([b"h2"])
        self.assertIsInstance(tcp.serverFactory(Clock(), Factory(), creator), TLSMemoryBIOFactory)

    def test_unavailableLogsOnce(self) -> None:
        """
        When something is missing the fast path is off, and says why once.
        """
        self.patch(compat, "missing", lambda: ["ssl.MemoryBIO"])
        self.patch(compat, "_checked", None)
        with capturedLogs() as events:
            self.assertFalse(compat.available())
            self.assertFalse(compat.available())
        self.assertEqual(len(events), 1)
        self.assertIn("ssl.MemoryBIO", events[0]["missing"])

    def test_senderIsTheDirectWriter(self) -> None:
        """
        Ciphertext goes out through the direct writer of L{nodepass._compat.directwrite}
        (for a non-TCP transport that is its C{write}).
        """
        from nodepass._compat import directwrite

        self.assertTrue(callable(getattr(directwrite, "directWriter", None)))
        transport = StringTransport()
        compat.sender(transport)(b"abc")
        self.assertEqual(transport.value(), b"abc")

    def test_clientConnect(self) -> None:
        """
        The client side follows the switch too: the pool protocol's transport is the fast
        layer, or Twisted's with the switch off.
        """
        for enabled, kind in ((True, FastTLSProtocol), (False, TLSMemoryBIOProtocol)):
            compat.setEnabled(enabled)
            reactor = MemoryReactorClock()
            application = Recorder()
            address = PoolAddress("127.0.0.1", "127.0.0.1", 10101, "127.0.0.1:10101", "none")
            tcp.connect(reactor, address, application, clientContextFactory(1, "none"), 5.0)
            factory = reactor.tcpClients[0][2]
            wrapper = factory.buildProtocol(ADDRESS)
            wrapper.makeConnection(StringTransport())
            self.assertIsInstance(application.transport, kind)
