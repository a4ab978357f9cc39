"""
Tests for L{nodepass.transports.quic}: the ``type=1`` pool transport (dataplane spec §9.1,
§15.7).

Everything runs on the global reactor over UDP on 127.0.0.1 (the conformance mixin listens on
TCP, which this transport refuses): a server from C{listenPool}, clients from C{connect} on a
fresh L{QuicTransport} per test, every wait bounded by L{STEP}.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IListeningPort, IPushProducer, ITransport
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import nodepass.transports.quic as quicModule
from nodepass.testing import TransportConformanceMixin
from nodepass.testing import _Event as Event
from nodepass.tls import ServerCredentials, certificateFingerprint, peerFingerprint
from nodepass.transports.interface import INodePassTransport, PoolAddress
from nodepass.transports.quic import (
    ALPN,
    RECEIVE_WINDOW,
    QuicError,
    QuicStream,
    QuicTransport,
    _Client,
    quic,
)
from nodepass.tunnel.pool import CONTROL_ID, ClientPool, ServerPool
from tests.support import certificates

reactor: Any = globalReactor

IP = "127.0.0.1"
#: Seconds allowed for each step of a test.
STEP = 10.0
CONTROL = b"\x00\x00\x00\x00"

_T = TypeVar("_T")


def address(port: int, ip: str = IP, serverName: str = "none") -> PoolAddress:
    return PoolAddress(host=ip, ip=ip, port=port, text=f"{ip}:{port}", serverName=serverName)


def within(d: Deferred[_T], what: str, timeout: float = STEP) -> Deferred[_T]:
    def timedOut(failure: Failure) -> Failure:
        if failure.check(DeferredTimeout):
            return Failure(AssertionError(f"timed out after {timeout:g}s waiting for {what}"))
        return failure

    d.addTimeout(timeout, reactor)
    d.addErrback(timedOut)
    return d


class Peer(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.made = Event()
        self.lost = Event()
        self.reason: Failure | None = None
        self._wanted: list[tuple[int, Event]] = []

    def connectionMade(self) -> None:
        self.made.fire(self)

    def collect(self, data: bytes) -> None:
        self.received += data
        for count, event in list(self._wanted):
            if len(self.received) >= count:
                self._wanted.remove((count, event))
                event.fire(bytes(self.received))

    def receivedAtLeast(self, count: int) -> Deferred[bytes]:
        event = Event()
        self._wanted.append((count, event))
        self.collect(b"")
        return event.wait()

    def dataReceived(self, data: bytes) -> None:
        self.collect(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.reason = reason
        self.lost.fire(True)


class EchoServer(Peer):
    """
    A miniature server pool connection: the ID first, then an echo.
    """

    def __init__(self, ident: bytes) -> None:
        super().__init__()
        self.ident = ident

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.ident)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.collect(data)
        assert self.transport is not None
        self.transport.write(data)


class Client(Peer):
    """
    A miniature client pool connection: reads 4 ID bytes, then collects.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ident = b""
        self.identified = Event()

    def dataReceived(self, data: bytes) -> None:
        if not self.identified.happened:
            need = 4 - len(self.ident)
            self.ident += data[:need]
            data = data[need:]
            if len(self.ident) < 4:
                return
            self.identified.fire(self.ident)
        if data:
            self.collect(data)


class ServerFactory(Factory):
    noisy = False

    def __init__(self) -> None:
        self.servers: list[EchoServer] = []
        self.addresses: list[Any] = []
        self.first = Event()

    def buildProtocol(self, addr: Any) -> EchoServer:
        ident = CONTROL if not self.servers else os.urandom(4)
        server = EchoServer(ident)
        server.factory = self
        self.servers.append(server)
        self.addresses.append(addr)
        self.first.fire(server)
        return server


class QuicTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.transport = QuicTransport()
        self.addCleanup(self.transport.disconnectAll)
        self.credentials = ServerCredentials.selfSigned()

    def listen(
        self, factory: Any, credentials: Any = None, port: int = 0, clientIP: str | None = None
    ) -> IListeningPort:
        listening = self.transport.listenPool(
            reactor, (IP, port), factory, credentials or self.credentials, clientIP=clientIP
        )
        self.addCleanup(listening.stopListening)
        return listening

    def portOf(self, listening: IListeningPort) -> int:
        return int(listening.getHost().port)  # type: ignore[attr-defined]

    async def connect(
        self, port: int, tls: Any = 1, serverName: str = "none", timeout: float = 5.0
    ) -> Client:
        client = Client()
        connected = await within(
            self.transport.connect(
                reactor, address(port, serverName=serverName), client, tls, timeout
            ),
            "connect",
        )
        self.assertIs(connected, client)
        self.addCleanup(self.closeClient, client)
        return client

    async def closeClient(self, client: Client) -> None:
        transport: Any = client.transport
        if transport is not None and not client.lost.happened:
            transport.abortConnection()
        if client.transport is not None:
            await within(client.lost.wait(), "the client to close")

    async def pair(self, factory: ServerFactory | None = None) -> tuple[Client, EchoServer]:
        factory = factory or ServerFactory()
        port = self.portOf(self.listen(factory))
        client = await self.connect(port)
        ident = await within(client.identified.wait(), "the ID")
        server: EchoServer = factory.servers[-1]
        self.assertEqual(ident, server.ident)
        return client, server


class InterfaceTests(SynchronousTestCase):
    def test_provides(self) -> None:
        """
        The module object provides L{INodePassTransport} and L{IPlugin} with the built-in QUIC
        values.
        """
        self.assertTrue(verifyObject(INodePassTransport, quic))
        self.assertTrue(IPlugin.providedBy(quic))
        self.assertEqual(
            (quic.name, quic.typeCode, quic.halfClose, quic.minimumTLS, quic.readyAfterHandshake),
            ("quic", "1", False, 1, False),
        )
        self.assertTrue(quic.wantsCredentials)
        self.assertEqual(quic.alpn, [b"np-quic"])
        self.assertEqual(ALPN, "np-quic")

    def test_serverFactoryRefuses(self) -> None:
        """
        The tunnel TCP port refuses every pool connection: QUIC serves the pool on UDP.
        """
        factory = quic.serverFactory(reactor, Factory.forProtocol(Protocol), None)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", IP, 1234)))

    def test_listenNeedsCredentials(self) -> None:
        """
        Without server credentials there is no QUIC pool.
        """
        self.assertRaises(QuicError, quic.listenPool, reactor, (IP, 0), Factory(), None)

    def test_badTLSArgument(self) -> None:
        """
        C{connect} wants the TLS mode, 1 or 2; anything else fails at once.
        """
        d = QuicTransport().connect(reactor, address(1), Client(), 3, 1.0)
        self.failureResultOf(d, QuicError)

    def test_pluginModule(self) -> None:
        """
        The plugin scan finds the transport under type 1 once the plugin module lists it.
        """
        from nodepass.transports import available

        self.assertIs(available([quic])["1"], quic)


class StreamTests(QuicTestCase):
    async def test_firstStream(self) -> None:
        """
        The first stream carries the control ID C{00 00 00 00} from the server; the announcing
        byte never reaches the server's pool protocol; the stream transport offers what the pool
        needs.
        """
        factory = ServerFactory()
        listening = self.listen(factory)
        self.assertTrue(verifyObject(IListeningPort, listening))
        client = await self.connect(self.portOf(listening))
        self.assertEqual(await within(client.identified.wait(), "the ID"), CONTROL)
        server = factory.servers[0]
        self.assertEqual(bytes(server.received), b"")
        transport = client.transport
        self.assertIsInstance(transport, QuicStream)
        self.assertTrue(verifyObject(ITransport, transport))
        self.assertTrue(verifyObject(IPushProducer, transport))
        # The server sees the client's real address (the pool checks its IP).
        peer = factory.addresses[0]
        self.assertEqual((peer.type, peer.host), ("UDP", IP))
        self.assertEqual(server.transport.getPeer().host, IP)  # type: ignore[union-attr]
        # The verify exchange reads the server's certificate on the client side.
        self.assertEqual(peerFingerprint(transport), self.credentials.fingerprint)
        self.assertEqual(
            certificateFingerprint(transport.getPeerCertificate()),  # type: ignore[union-attr]
            self.credentials.fingerprint,
        )
        # After the ID, the stream carries bytes both ways.
        client.transport.write(b"hello")  # type: ignore[union-attr]
        self.assertEqual(await within(client.receivedAtLeast(5), "the echo"), b"hello")
        self.assertEqual(bytes(server.received), b"hello")

    async def test_manyStreams(self) -> None:
        """
        Many concurrent pool connections share one QUIC connection, each its own stream with
        its own ID and its own bytes.
        """
        factory = ServerFactory()
        listening = self.listen(factory)
        port = self.portOf(listening)
        count = 60
        clients = await within(
            gatherResults([Deferred.fromCoroutine(self.connect(port)) for _ in range(count)]),
            "all connects",
        )
        idents = await within(gatherResults([c.identified.wait() for c in clients]), "all IDs")
        self.assertEqual(len(set(idents)), count)
        self.assertIn(CONTROL, idents)
        self.assertEqual(len(factory.servers), count)
        self.assertEqual(listening.connections, 1)  # type: ignore[attr-defined]
        payloads = [os.urandom(1000 + i) for i in range(count)]
        for client, payload in zip(clients, payloads, strict=True):
            client.transport.write(payload)  # type: ignore[union-attr]
        echoes = await within(
            gatherResults(
                [c.receivedAtLeast(len(p)) for c, p in zip(clients, payloads, strict=True)]
            ),
            "all echoes",
        )
        self.assertEqual(echoes, payloads)
        # Closing one leaves the others working.
        clients[0].transport.loseConnection()  # type: ignore[union-attr]
        await within(clients[0].lost.wait(), "the closed one")
        clients[1].transport.write(b"still")  # type: ignore[union-attr]
        expected = payloads[1] + b"still"
        self.assertEqual(
            await within(clients[1].receivedAtLeast(len(expected)), "a later echo"), expected
        )

    async def test_bigEachWay(self) -> None:
        """
        1 MiB goes to the server and back intact.
        """
        client, server = await self.pair()
        payload = os.urandom(1 << 20)
        client.transport.write(payload)  # type: ignore[union-attr]
        echoed = await within(client.receivedAtLeast(len(payload)), "1 MiB echoed", 30)
        self.assertEqual(len(server.received), len(payload))
        self.assertEqual(hashlib.sha256(echoed).digest(), hashlib.sha256(payload).digest())

    async def test_flowControl(self) -> None:
        """
        A streaming producer is paused while the stream's unacknowledged data is above the high
        mark, and resumed once the peer has taken it.
        """
        client, server = await self.pair()

        @implementer(IPushProducer)
        class Producer:
            paused = 0
            resumed = Event()

            def pauseProducing(self) -> None:
                self.paused += 1

            def resumeProducing(self) -> None:
                self.resumed.fire()

            def stopProducing(self) -> None:
                pass

        producer = Producer()
        transport: Any = client.transport
        transport.registerProducer(producer, True)
        self.addCleanup(transport.unregisterProducer)
        transport.write(os.urandom(3 << 20))
        self.assertEqual(producer.paused, 1)
        await within(producer.resumed.wait(), "resumeProducing", 30)
        await within(server.receivedAtLeast(3 << 20), "all the data at the server", 30)

    async def test_pauseReading(self) -> None:
        """
        A paused stream holds what arrives and delivers it, in order, on resume.
        """
        client, server = await self.pair()
        transport: Any = client.transport
        transport.pauseProducing()
        transport.write(b"abc")
        await within(server.receivedAtLeast(3), "the data at the server")
        await within(_sleep(0.2), "a pause")
        self.assertEqual(bytes(client.received), b"")
        transport.resumeProducing()
        self.assertEqual(await within(client.receivedAtLeast(3), "the held data"), b"abc")

    async def test_pausedStreamHoldsAtMostAWindow(self) -> None:
        """
        A paused stream gives the peer no credit beyond what was consumed plus
        L{RECEIVE_WINDOW}: the sender stops there instead of filling our memory,
        and everything arrives, in order, once reading resumes.
        """
        client, server = await self.pair()
        stream: Any = client.transport
        stream.pauseProducing()
        payload = os.urandom(4 * RECEIVE_WINDOW)
        server.transport.write(payload)  # type: ignore[union-attr]
        reached = Deferred.fromCoroutine(_until(lambda: stream.held >= RECEIVE_WINDOW // 2))
        await within(reached, "the first window")
        await within(_sleep(0.5), "a pause")
        self.assertLessEqual(stream.held, RECEIVE_WINDOW)
        self.assertEqual(bytes(client.received), b"")
        stream.resumeProducing()
        received = await within(client.receivedAtLeast(len(payload)), "the whole payload")
        self.assertEqual(received, payload)

    async def test_clientCloses(self) -> None:
        """
        The client closing ends the server's pool protocol (and its own).
        """
        client, server = await self.pair()
        client.transport.write(b"last words")  # type: ignore[union-attr]
        await within(client.receivedAtLeast(10), "the echo")
        client.transport.loseConnection()  # type: ignore[union-attr]
        await within(server.lost.wait(), "connectionLost on the server")
        reason = server.reason
        assert reason is not None
        self.assertTrue(reason.check(ConnectionDone))
        await within(client.lost.wait(), "connectionLost on the client")

    async def test_serverCloses(self) -> None:
        """
        The server closing ends the client's pool protocol, after the data written before.
        """
        client, server = await self.pair()
        server.transport.write(b"bye")  # type: ignore[union-attr]
        server.transport.loseConnection()  # type: ignore[union-attr]
        await within(client.lost.wait(), "connectionLost on the client")
        reason = client.reason
        assert reason is not None
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual(bytes(client.received), b"bye")
        await within(server.lost.wait(), "connectionLost on the server")

    async def test_abort(self) -> None:
        """
        Aborting resets the stream: the peer's protocol loses its connection.
        """
        client, server = await self.pair()
        client.transport.abortConnection()  # type: ignore[union-attr]
        await within(server.lost.wait(), "connectionLost on the server")
        reason = server.reason
        assert reason is not None
        self.assertTrue(reason.check(ConnectionLost))

    async def test_stopListening(self) -> None:
        """
        Stopping the pool closes the QUIC connection: every client stream ends, and a later
        connect opens a new connection to a new pool on the same port.
        """
        factory = ServerFactory()
        listening = self.listen(factory)
        port = self.portOf(listening)
        client = await self.connect(port)
        await within(client.identified.wait(), "the ID")
        await within(Deferred.fromCoroutine(_stop(listening)), "stopListening")
        await within(client.lost.wait(), "connectionLost on the client")
        reason = client.reason
        assert reason is not None
        self.assertTrue(reason.check(ConnectionLost))
        factory2 = ServerFactory()
        self.listen(factory2, port=port)
        again = await self.connect(port)
        self.assertEqual(await within(again.identified.wait(), "the new ID"), CONTROL)

    async def test_connectFails(self) -> None:
        """
        Dialling a UDP port where nothing listens fails within the time allowed.
        """
        probe = reactor.listenUDP(0, DatagramProtocol(), interface=IP)
        port = probe.getHost().port
        await probe.stopListening()
        client = Client()
        d = self.transport.connect(reactor, address(port), client, 1, 2.0)
        failure = await within(_failure(d), "the connect to fail")
        self.assertIsInstance(failure, QuicError)
        self.assertIsNone(client.transport)

    async def test_wrongALPN(self) -> None:
        """
        A client offering another ALPN than C{np-quic} is refused by the server.
        """
        factory = ServerFactory()
        port = self.portOf(self.listen(factory))
        other = _Client(reactor, address(port), 1, 5.0, alpn="h3", log=Logger())
        self.addCleanup(other.stopped)
        self.addCleanup(other.close)
        failure = await within(_failure(other.whenEstablished()), "the refusal")
        self.assertIsInstance(failure, QuicError)
        self.assertIn("ALPN", str(failure))
        self.assertEqual(factory.servers, [])


class ConnectionTests(QuicTestCase):
    async def test_keepAlive(self) -> None:
        """
        PINGs keep an idle connection alive beyond the idle timeout.
        """
        self.patch(quicModule, "IDLE_TIMEOUT", 0.6)
        self.patch(quicModule, "KEEPALIVE_INTERVAL", 0.1)
        client, _ = await self.pair()
        await within(_sleep(1.5), "a quiet time")
        self.assertFalse(client.lost.happened)
        client.transport.write(b"still there")  # type: ignore[union-attr]
        self.assertEqual(await within(client.receivedAtLeast(11), "the echo"), b"still there")

    async def test_idleTimeout(self) -> None:
        """
        Without PINGs, a connection nobody uses dies after the idle timeout, ending its
        streams.
        """
        self.patch(quicModule, "IDLE_TIMEOUT", 0.6)
        self.patch(quicModule, "KEEPALIVE_INTERVAL", 60.0)
        client, server = await self.pair()
        await within(client.lost.wait(), "the client stream to end", 5)
        await within(server.lost.wait(), "the server stream to end", 5)

    async def test_configuration(self) -> None:
        """
        Both ends use ALPN C{np-quic} and a 15 s idle timeout; TLS mode 1 verifies nothing
        and sends no server name, mode 2 verifies the server name.
        """
        one = quicModule._clientConfiguration(1, "example.com", ALPN)
        self.assertEqual(
            (one.alpn_protocols, one.idle_timeout, one.verify_mode, one.server_name),
            (["np-quic"], 15.0, ssl.CERT_NONE, None),
        )
        two = quicModule._clientConfiguration(2, "example.com", ALPN)
        self.assertEqual((two.verify_mode, two.server_name), (ssl.CERT_REQUIRED, "example.com"))

    async def test_unauthorizedIP(self) -> None:
        """
        With a client IP recorded, a QUIC connection from another IP is closed with the
        reason C{unauthorized IP}.
        """
        factory = ServerFactory()
        port = self.portOf(self.listen(factory, clientIP="192.0.2.1"))
        client = Client()
        await within(self.transport.connect(reactor, address(port), client, 1, 5.0), "connect")
        await within(client.lost.wait(), "the stream to end")
        assert client.reason is not None
        self.assertIn("unauthorized IP", client.reason.getErrorMessage())


class VerificationTests(QuicTestCase):
    """
    TLS mode 2: the client verifies the chain against the system CAs (here a test CA given
    through C{SSL_CERT_FILE}) and the server name.
    """

    def setUp(self) -> None:
        super().setUp()
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        caFile, certFile, keyFile = certificates(directory)
        self.credentials = ServerCredentials.fromPEM(certFile.read_bytes(), keyFile.read_bytes())
        variable = ssl.get_default_verify_paths().openssl_cafile_env
        self.patch(os, "environ", {**os.environ, variable: caFile})

    async def test_verified(self) -> None:
        """
        A certificate from a trusted CA for the server name is accepted.
        """
        port = self.portOf(self.listen(ServerFactory()))
        client = await self.connect(port, tls=2, serverName="localhost")
        self.assertEqual(await within(client.identified.wait(), "the ID"), CONTROL)
        self.assertEqual(peerFingerprint(client.transport), self.credentials.fingerprint)

    async def test_wrongName(self) -> None:
        """
        A certificate for another name is refused.
        """
        port = self.portOf(self.listen(ServerFactory()))
        d = self.transport.connect(reactor, address(port, serverName="other.test"), Client(), 2, 5)
        failure = await within(_failure(d), "the refusal")
        self.assertIsInstance(failure, QuicError)

    async def test_modeOneDoesNotVerify(self) -> None:
        """
        Mode 1 accepts the same server under any name.
        """
        port = self.portOf(self.listen(ServerFactory()))
        client = await self.connect(port, tls=1, serverName="other.test")
        self.assertEqual(await within(client.identified.wait(), "the ID"), CONTROL)


class PoolTests(QuicTestCase):
    """
    The real server and client pools over QUIC.
    """

    async def test_pools(self) -> None:
        """
        The client pool fills through QUIC streams; both ends park the control connection
        C{00000000} and the same data connections; the client reads the server's fingerprint
        on a pool connection.
        """
        serverPool = ServerPool(reactor, 10, clientIP=IP)
        self.addCleanup(serverPool.close)
        port = self.portOf(self.listen(serverPool.factory(False)))

        def dial(conn: Any) -> Deferred[Any]:
            return self.transport.connect(reactor, address(port), conn, 1, 5.0)

        clientPool = ClientPool(reactor, dial, 4, 10, tls=False)
        self.addCleanup(clientPool.close)
        clientPool.start()

        async def filled() -> None:
            while CONTROL_ID not in clientPool.idle or clientPool.idleCount < 3:
                await _sleep(0.05)

        await within(Deferred.fromCoroutine(filled()), "the client pool to fill")
        idents = set(clientPool.idle)
        await within(
            Deferred.fromCoroutine(_until(lambda: idents <= set(serverPool.idle))),
            "the same IDs parked on the server",
        )
        control = clientPool.idle[CONTROL_ID]
        self.assertEqual(peerFingerprint(control.transport), self.credentials.fingerprint)
        serverControl = serverPool.idle[CONTROL_ID]
        control.write(b"ping\n")
        got = Event()
        serverControl.attach(_Sink(got))  # type: ignore[arg-type]
        self.assertEqual(await within(got.wait(), "the control line"), b"ping\n")
        self.addCleanup(_closeAll, clientPool, serverPool)


class _Sink:
    def __init__(self, event: Event) -> None:
        self.event = event

    def dataReceived(self, data: bytes) -> None:
        self.event.fire(data)

    def connectionLost(self) -> None:
        pass


async def _closeAll(*pools: Any) -> None:
    for pool in pools:
        for conn in list(pool.idle.values()) + list(pool.active):
            conn.close()
    await _sleep(0.1)


def _sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def _until(predicate: Any) -> None:
    while not predicate():
        await _sleep(0.02)


async def _stop(listening: IListeningPort) -> None:
    result = listening.stopListening()
    if isinstance(result, Deferred):
        await result


def _failure(d: Deferred[Any]) -> Deferred[Exception]:
    """
    Fires with the exception C{d} fails with, or fails if C{d} succeeds.
    """

    async def wait() -> Exception:
        try:
            value = await d
        except Exception as e:
            return e
        transport = getattr(value, "transport", None)
        if transport is not None:
            transport.abortConnection()
        raise AssertionError(f"expected a failure, got {value!r}")

    return Deferred.fromCoroutine(wait())


class QUICConformanceTests(TransportConformanceMixin, TestCase):
    """
    The plugin contract, on 127.0.0.1, through the transport's own UDP
    listener.
    """

    transport = quic
