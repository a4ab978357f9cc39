"""
Tests for L{nodepass.transports.http2}: the ``type=3`` pool transport (dataplane spec §9.3,
§15.7).

The wire is checked against a plain C{h2} peer in memory (the client's request head and first
DATA byte, the server's C{200} and ID bytes, the C{404}); our own client and server then run
against each other in memory through iosim (many streams on one connection, flow control,
closing, TLS with ALPN), and the conformance suite runs them on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter, IOPump
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nodepass.testing import TransportConformanceMixin
from nodepass.tls import ServerCredentials, clientContextFactory
from nodepass.transports.http2 import (
    CANCEL,
    IDLE_TIMEOUT,
    NOT_FOUND,
    PING_INTERVAL,
    STREAM_WINDOW,
    HTTP2Error,
    HTTP2Transport,
    StreamTransport,
    h2transport,
)
from nodepass.transports.interface import INodePassTransport, PoolAddress
from nodepass.transports.substream import HIGH_WATER

from .support import ROOT

IP = "127.0.0.1"
PORT = 10103
ADDRESS = PoolAddress(host=IP, ip=IP, port=PORT, text=f"{IP}:{PORT}", serverName="none")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Recorder(Protocol):
    """
    A pool protocol stand-in: optionally writes a greeting (the server's ID), records what
    arrives and how the connection ended.
    """

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = bytearray()
        self.lost: Failure | None = None
        self.made = 0

    def connectionMade(self) -> None:
        self.made += 1
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason

    @property
    def data(self) -> bytes:
        return bytes(self.received)

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Echo(Recorder):
    """
    A server pool protocol writing the ID, then echoing.
    """

    def __init__(self) -> None:
        super().__init__(bytes(4))

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.send(data)


def rawPeer(clientSide: bool) -> Any:
    """
    A plain C{h2} connection playing the other end.
    """
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    peer = H2Connection(H2Configuration(client_side=clientSide, header_encoding=None))
    peer.initiate_connection()
    return peer


def eventsOf(peer: Any, data: bytes) -> list[Any]:
    return list(peer.receive_data(data))


def ofType(events: list[Any], name: str) -> list[Any]:
    return [e for e in events if type(e).__name__ == name]


class Link:
    """
    An HTTP/2 pool server on a L{MemoryReactorClock} and our client, pumped in memory.
    """

    def __init__(
        self,
        serverTLS: Any = None,
        clientTLS: Any = None,
        build: type[Recorder] = Echo,
        transport: HTTP2Transport | None = None,
    ) -> None:
        self.transport = transport or HTTP2Transport()
        self.reactor = MemoryReactorClock()
        self.servers: list[Recorder] = []
        self.clientTLS = clientTLS

        def make() -> Recorder:
            server = build()
            self.servers.append(server)
            return server

        self.reactor.listenTCP(
            PORT,
            self.transport.serverFactory(self.reactor, Factory.forProtocol(make), serverTLS),
        )
        self.pump: IOPump | None = None

    def dial(self, client: Recorder | None = None) -> tuple[Recorder, Deferred[Any]]:
        client = client or Recorder()
        return client, self.transport.connect(self.reactor, ADDRESS, client, self.clientTLS, 30.0)

    def complete(self) -> IOPump:
        pump = ConnectionCompleter(self.reactor).succeedOnce(greet=False)
        assert pump is not None
        self.pump = pump
        self.flush()
        return pump

    def flush(self) -> None:
        assert self.pump is not None
        self.pump.flush()


class PluginTests(SynchronousTestCase):
    def test_provides(self) -> None:
        """
        C{h2transport} is a transport plugin with the attributes of §9.3.
        """
        self.assertTrue(verifyObject(INodePassTransport, h2transport))
        self.assertTrue(verifyObject(IPlugin, h2transport))
        self.assertEqual(
            (
                h2transport.name,
                h2transport.typeCode,
                h2transport.halfClose,
                h2transport.minimumTLS,
                h2transport.readyAfterHandshake,
                h2transport.alpn,
            ),
            ("h2", "3", False, 1, False, [b"h2"]),
        )

    def test_importLight(self) -> None:
        """
        Importing the module (as the plugin scan does) does not import C{h2}.
        """
        code = (
            "import sys, nodepass.transports.http2\n"
            "sys.exit(1 if any(m.split('.')[0] in ('h2', 'hpack', 'hyperframe')"
            " for m in sys.modules) else 0)\n"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        result = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=False)
        self.assertEqual(result.returncode, 0)

    def test_stream(self) -> None:
        """
        The transport a pool protocol sees is a full Twisted transport and push producer.
        """
        stream = StreamTransport(object(), 1, Protocol())  # type: ignore[arg-type]
        self.assertTrue(verifyObject(ITransport, stream))
        self.assertTrue(verifyObject(IPushProducer, stream))


class ClientWireTests(SynchronousTestCase):
    """
    What our client sends, read by a plain C{h2} server (§15.7).
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.transport = HTTP2Transport()
        self.client = Recorder()
        self.result = self.transport.connect(self.reactor, ADDRESS, self.client, None, 30.0)
        [(host, port, factory, timeout, _bind)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), (IP, PORT, 30.0))
        self.protocol = factory.buildProtocol(None)
        self.wire = StringTransport()
        self.protocol.makeConnection(self.wire)
        self.server = rawPeer(False)

    def read(self) -> list[Any]:
        data = self.wire.value()
        self.wire.clear()
        return eventsOf(self.server, data)

    def answer(self) -> None:
        self.protocol.dataReceived(self.server.data_to_send())

    def test_firstBytes(self) -> None:
        """
        The connection preface, then HEADERS C{POST https none /stream} in the Go client's
        order, then DATA C{00} without END_STREAM.
        """
        self.assertTrue(self.wire.value().startswith(PREFACE))
        events = self.read()
        [request] = ofType(events, "RequestReceived")
        self.assertEqual(
            request.headers,
            [
                (b":authority", b"none"),
                (b":method", b"POST"),
                (b":path", b"/stream"),
                (b":scheme", b"https"),
                (b"accept-encoding", b"gzip"),
                (b"user-agent", b"Go-http-client/2.0"),
            ],
        )
        self.assertIsNone(request.stream_ended)
        [data] = ofType(events, "DataReceived")
        self.assertEqual((data.stream_id, data.data), (request.stream_id, b"\x00"))
        self.assertIsNone(data.stream_ended)
        self.assertNoResult(self.result)

    def test_response(self) -> None:
        """
        Once the response HEADERS arrive the protocol is connected and the Deferred fires;
        the response body is the stream (the ID first).
        """
        [request] = ofType(self.read(), "RequestReceived")
        sid = request.stream_id
        self.server.send_headers(sid, [(b":status", b"200")])
        self.answer()
        self.assertIs(self.successResultOf(self.result), self.client)
        self.assertEqual(self.client.made, 1)
        self.server.send_data(sid, bytes(4) + b"line\n")
        self.answer()
        self.assertEqual(self.client.data, bytes(4) + b"line\n")
        self.client.send(b"up")
        [data] = ofType(self.read(), "DataReceived")
        self.assertEqual(data.data, b"up")

    def test_refused(self) -> None:
        """
        A C{404} fails the dial (and cancels the stream).
        """
        [request] = ofType(self.read(), "RequestReceived")
        self.server.send_headers(request.stream_id, [(b":status", b"404")])
        self.answer()
        failure = self.failureResultOf(self.result, HTTP2Error)
        self.assertIn("404", failure.getErrorMessage())
        self.assertEqual(self.client.made, 0)
        [reset] = ofType(self.read(), "StreamReset")
        self.assertEqual(reset.error_code, CANCEL)

    def test_closeIsEndAndCancel(self) -> None:
        """
        Closing on the client ends the request body and cancels the response, as Go does;
        the shared connection then has no stream left and says GOAWAY.
        """
        [request] = ofType(self.read(), "RequestReceived")
        sid = request.stream_id
        self.server.send_headers(sid, [(b":status", b"200")])
        self.answer()
        self.successResultOf(self.result)
        self.client.transport.loseConnection()  # type: ignore[union-attr]
        events = [
            e
            for e in self.read()
            if type(e).__name__ in ("StreamEnded", "StreamReset", "ConnectionTerminated")
        ]
        names = [type(e).__name__ for e in events]
        self.assertEqual(names, ["StreamEnded", "StreamReset", "ConnectionTerminated"])
        self.assertEqual(events[1].error_code, CANCEL)
        assert self.client.lost is not None
        self.client.lost.trap(ConnectionDone)

    def test_serverEnds(self) -> None:
        """
        The server ending the response ends the client's pool protocol.
        """
        [request] = ofType(self.read(), "RequestReceived")
        sid = request.stream_id
        self.server.send_headers(sid, [(b":status", b"200")])
        self.server.send_data(sid, bytes(4), end_stream=True)
        self.answer()
        self.successResultOf(self.result)
        self.assertEqual(self.client.data, bytes(4))
        assert self.client.lost is not None
        self.client.lost.trap(ConnectionDone)

    def test_timeout(self) -> None:
        """
        No response within the timeout: the dial fails and its stream is cancelled.
        """
        self.read()
        self.reactor.advance(30.0)
        self.failureResultOf(self.result, HTTP2Error)
        events = self.read()
        self.assertEqual(ofType(events, "StreamReset")[0].error_code, CANCEL)

    def test_ping(self) -> None:
        """
        A PING every interval; a connection silent for a whole interval after one is
        dropped, and its streams end.
        """
        [request] = ofType(self.read(), "RequestReceived")
        self.server.send_headers(request.stream_id, [(b":status", b"200")])
        self.answer()
        self.successResultOf(self.result)
        self.reactor.advance(PING_INTERVAL)
        self.assertEqual(len(ofType(self.read(), "PingReceived")), 1)
        self.answer()  # the PING ACK
        self.reactor.advance(PING_INTERVAL)
        self.assertEqual(len(ofType(self.read(), "PingReceived")), 1)
        self.assertFalse(self.wire.disconnecting)
        self.reactor.advance(PING_INTERVAL)
        self.assertTrue(self.wire.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.client.lost)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_sharedConnection(self) -> None:
        """
        A second dial to the same address opens a stream on the same connection.
        """
        other = Recorder()
        self.transport.connect(self.reactor, ADDRESS, other, None, 30.0)
        self.assertEqual(self.reactor.tcpClients[1:], [])
        requests = ofType(self.read(), "RequestReceived")
        self.assertEqual([r.stream_id for r in requests], [1, 3])


class ServerWireTests(SynchronousTestCase):
    """
    What our server answers to a plain C{h2} client (§9.3, §15.7).
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.servers: list[Recorder] = []
        self.refuse = False

        def build(addr: Any) -> Recorder | None:
            if self.refuse:
                return None
            server = Recorder(bytes(4))
            self.servers.append(server)
            return server

        factory = Factory()
        factory.buildProtocol = build  # type: ignore[method-assign]
        serving = HTTP2Transport().serverFactory(self.reactor, factory, None)
        self.protocol = serving.buildProtocol(None)
        self.wire = StringTransport()
        self.protocol.makeConnection(self.wire)  # type: ignore[union-attr]
        self.client = rawPeer(True)

    def send(self) -> list[Any]:
        self.protocol.dataReceived(self.client.data_to_send())  # type: ignore[union-attr]
        data = self.wire.value()
        self.wire.clear()
        return eventsOf(self.client, data)

    def request(self, path: bytes = b"/stream", method: bytes = b"POST") -> int:
        sid: int = self.client.get_next_available_stream_id()
        head = [(b":method", method), (b":scheme", b"https")]
        self.client.send_headers(
            sid, [*head, (b":authority", b"none"), (b":path", path), (b"user-agent", b"t")]
        )
        return sid

    def test_firstPoolConnection(self) -> None:
        """
        After the first DATA byte: C{:status 200}, then DATA C{00 00 00 00} (no END_STREAM).
        """
        sid = self.request()
        self.assertEqual(ofType(self.send(), "ResponseReceived"), [])
        self.assertEqual(self.servers, [])
        self.client.send_data(sid, b"\x00")
        events = self.send()
        [response] = ofType(events, "ResponseReceived")
        self.assertEqual(response.headers, [(b":status", b"200")])
        [data] = ofType(events, "DataReceived")
        self.assertEqual((data.stream_id, data.data), (sid, bytes(4)))
        self.assertIsNone(data.stream_ended)
        [server] = self.servers
        self.assertEqual(server.data, b"")
        self.client.send_data(sid, b"more")
        self.send()
        self.assertEqual(server.data, b"more")
        self.assertEqual(server.transport.getPeer(), self.wire.getPeer())  # type: ignore[union-attr]

    def test_firstByteWithData(self) -> None:
        """
        Bytes after the first one in the same DATA frame belong to the stream.
        """
        sid = self.request()
        self.client.send_data(sid, b"\x00hello")
        self.send()
        self.assertEqual(self.servers[0].data, b"hello")

    def assertNotFound(self, events: list[Any]) -> None:
        [response] = ofType(events, "ResponseReceived")
        self.assertEqual(dict(response.headers)[b":status"], b"404")
        [data] = ofType(events, "DataReceived")
        self.assertEqual(data.data, NOT_FOUND)
        self.assertEqual(len(ofType(events, "StreamEnded")), 1)
        self.assertEqual(self.servers, [])

    def test_wrongPath(self) -> None:
        """
        Another path is C{404} C{not found}.
        """
        self.request(b"/other")
        self.assertNotFound(self.send())

    def test_wrongMethod(self) -> None:
        self.request(method=b"GET")
        self.assertNotFound(self.send())

    def test_poolFull(self) -> None:
        """
        A pool factory refusing the connection is C{404} as well.
        """
        self.refuse = True
        sid = self.request()
        self.client.send_data(sid, b"\x00")
        self.assertNotFound(self.send())

    def test_clientCloses(self) -> None:
        """
        END_STREAM + RST_STREAM(CANCEL) from the client ends that pool protocol only.
        """
        first, second = self.request(), self.request()
        self.client.send_data(first, b"\x00")
        self.client.send_data(second, b"\x00")
        self.send()
        self.client.end_stream(first)
        self.client.reset_stream(first, CANCEL)
        self.send()
        one, two = self.servers
        assert one.lost is not None
        one.lost.trap(ConnectionDone)
        self.assertIsNone(two.lost)
        self.client.send_data(second, b"still")
        self.send()
        self.assertEqual(two.data, b"still")

    def test_serverCloses(self) -> None:
        """
        Closing on the server ends the response (END_STREAM) of that stream only.
        """
        first, second = self.request(), self.request()
        self.client.send_data(first, b"\x00")
        self.client.send_data(second, b"\x00")
        self.send()
        self.servers[0].transport.loseConnection()  # type: ignore[union-attr]
        events = self.send()
        [ended] = ofType(events, "StreamEnded")
        self.assertEqual(ended.stream_id, first)
        self.assertIsNotNone(self.servers[0].lost)
        self.assertIsNone(self.servers[1].lost)

    def test_idle(self) -> None:
        """
        A connection without streams is closed after the idle timeout (GOAWAY).
        """
        self.send()
        self.reactor.advance(IDLE_TIMEOUT)
        self.assertTrue(self.wire.disconnecting)
        events = eventsOf(self.client, self.wire.value())
        self.assertEqual(len(ofType(events, "ConnectionTerminated")), 1)

    def test_notIdleWithStreams(self) -> None:
        sid = self.request()
        self.client.send_data(sid, b"\x00")
        self.send()
        self.reactor.advance(IDLE_TIMEOUT * 3)
        self.assertFalse(self.wire.disconnecting)

    def test_garbage(self) -> None:
        """
        Something that is not HTTP/2 closes the connection.
        """
        self.protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")  # type: ignore[union-attr]
        self.assertTrue(self.wire.disconnecting)


class StreamTests(SynchronousTestCase):
    """
    Our client and server together, in memory.
    """

    def test_manyStreams(self) -> None:
        """
        Many pool connections share one TCP connection; each is its own byte stream.
        """
        link = Link()
        dials = [link.dial() for _ in range(50)]
        self.assertEqual(len(link.reactor.tcpClients), 1)
        link.complete()
        clients = [self.successResultOf(d) for _, d in dials]
        self.assertEqual(len(link.servers), 50)
        for i, client in enumerate(clients):
            client.send(b"%d;" % i * (i + 1))
        link.flush()
        for i, client in enumerate(clients):
            self.assertEqual(client.data, bytes(4) + b"%d;" % i * (i + 1))
        self.assertEqual(
            sorted(s.data for s in link.servers), sorted(b"%d;" % i * (i + 1) for i in range(50))
        )
        self.assertEqual(len(link.transport.live), 2)
        # A later dial still uses the same connection.
        late, result = link.dial()
        self.assertEqual(link.reactor.tcpClients, [])
        link.flush()
        self.assertIs(self.successResultOf(result), late)

    def test_bigWithFlowControl(self) -> None:
        """
        1 MiB through one stream while the receiver is paused: the sender keeps what the
        window does not allow and pauses its producer; resuming lets it all through.
        """
        link = Link(build=Recorder)
        client, result = link.dial()
        link.complete()
        self.successResultOf(result)
        [server] = link.servers
        stream: Any = server.transport
        stream.pauseProducing()

        @implementer(IPushProducer)
        class Producer:
            paused = 0
            resumed = 0

            def pauseProducing(self) -> None:
                self.paused += 1

            def resumeProducing(self) -> None:
                self.resumed += 1

            def stopProducing(self) -> None:
                pass

        producer = Producer()
        sender: Any = client.transport
        sender.registerProducer(producer, True)
        payload = os.urandom(1 << 20) * 2
        sender.write(payload)
        link.flush()
        self.assertEqual(server.data, b"")
        # The window the server announced, less the first byte.
        self.assertEqual(len(sender.outgoing), len(payload) - (STREAM_WINDOW - 1))
        self.assertGreater(len(sender.outgoing), HIGH_WATER - STREAM_WINDOW)
        self.assertEqual(producer.paused, 1)
        stream.resumeProducing()
        link.flush()
        self.assertEqual(server.data, payload)
        self.assertEqual(len(sender.outgoing), 0)
        self.assertEqual(producer.resumed, 1)

    def test_pausedStreamsDoNotStallOthers(self) -> None:
        """
        Streams whose readers are paused fill their own windows only: another stream on
        the same connection still flows.
        """
        link = Link(build=Recorder)
        dials = [link.dial() for _ in range(18)]
        link.complete()
        clients = [self.successResultOf(d) for _, d in dials]
        *paused, free = link.servers
        for server in paused:
            server.transport.pauseProducing()  # type: ignore[union-attr]
        block = bytes(STREAM_WINDOW)
        for client in clients[:-1]:
            client.send(block)
        link.flush()
        clients[-1].send(b"through")
        link.flush()
        self.assertEqual(free.data, b"through")
        self.assertEqual([s.data for s in paused], [b""] * len(paused))
        for server in paused:
            server.transport.resumeProducing()  # type: ignore[union-attr]
        link.flush()
        self.assertEqual([len(s.data) for s in paused], [len(block)] * len(paused))

    def test_closeEitherSide(self) -> None:
        """
        Closing a stream on either side ends that pool connection on both sides, and no
        other.
        """
        link = Link()
        dials = [link.dial() for _ in range(3)]
        link.complete()
        a, b, c = (self.successResultOf(d) for _, d in dials)
        sa, sb, sc = link.servers
        a.transport.loseConnection()  # type: ignore[union-attr]
        link.flush()
        for peer in (a, sa):
            assert peer.lost is not None
            peer.lost.trap(ConnectionDone)
        sb.transport.loseConnection()  # type: ignore[union-attr]
        link.flush()
        for peer in (b, sb):
            assert peer.lost is not None
            peer.lost.trap(ConnectionDone)
        self.assertIsNone(c.lost)
        self.assertIsNone(sc.lost)
        c.send(b"alive")
        link.flush()
        self.assertEqual(c.data, bytes(4) + b"alive")

    def test_abort(self) -> None:
        link = Link()
        client, result = link.dial()
        link.complete()
        self.successResultOf(result)
        client.transport.abortConnection()  # type: ignore[union-attr]
        link.flush()
        self.assertIsNotNone(client.lost)
        self.assertIsNotNone(link.servers[0].lost)

    def test_lastStreamClosesConnection(self) -> None:
        """
        The client closes its shared connection when its last stream is gone; a new dial
        then opens a new connection.
        """
        link = Link()
        client, result = link.dial()
        pump = link.complete()
        self.successResultOf(result)
        client.transport.loseConnection()  # type: ignore[union-attr]
        link.flush()
        self.assertTrue(pump.clientIO.disconnecting)
        self.assertEqual(link.transport.live, set())
        link.dial()
        self.assertEqual(len(link.reactor.tcpClients), 1)

    def test_connectionLost(self) -> None:
        """
        Losing the TCP connection ends every stream on it.
        """
        link = Link()
        dials = [link.dial() for _ in range(2)]
        pump = link.complete()
        clients = [self.successResultOf(d) for _, d in dials]
        pump.clientIO.abortConnection()
        link.flush()
        for peer in [*clients, *link.servers]:
            self.assertIsNotNone(peer.lost)

    def test_refused(self) -> None:
        link = Link()
        client, result = link.dial()
        ConnectionCompleter(link.reactor).failOnce(Failure(ConnectionRefusedError()))
        self.failureResultOf(result, ConnectionRefusedError)
        self.assertEqual(client.made, 0)

    def test_cancelWhileConnecting(self) -> None:
        """
        Cancelling the only dial abandons the TCP connection attempt.
        """
        link = Link()
        _client, result = link.dial()
        [connector] = link.reactor.connectors
        result.cancel()
        self.failureResultOf(result)
        self.assertTrue(connector.stoppedConnecting)  # type: ignore[attr-defined]

    def test_tls(self) -> None:
        """
        Over TLS with ALPN h2; each side's transport gives the peer's certificate.
        """
        credentials = ServerCredentials.selfSigned()
        link = Link(
            serverTLS=credentials.contextFactory(alpn=[b"h2"]),
            clientTLS=clientContextFactory(1, "none", alpn=[b"h2"]),
        )
        client, result = link.dial()
        link.complete()
        self.assertIs(self.successResultOf(result), client)
        self.assertEqual(client.data, bytes(4))
        self.assertIsNotNone(client.transport.getPeerCertificate())  # type: ignore[union-attr]
        client.send(b"over tls")
        link.flush()
        self.assertEqual(link.servers[0].data, b"over tls")

    def test_noALPN(self) -> None:
        """
        A TLS connection that does not negotiate h2 is dropped and the dial fails.
        """
        credentials = ServerCredentials.selfSigned()
        link = Link(
            serverTLS=credentials.contextFactory(alpn=[b"h2"]),
            clientTLS=clientContextFactory(1, "none"),
        )
        _client, result = link.dial()
        link.complete()
        self.failureResultOf(result, HTTP2Error)
        self.assertEqual(link.servers, [])


class HTTP2ConformanceTests(TransportConformanceMixin, TestCase):
    """
    The plugin contract, on 127.0.0.1, with ALPN h2 on both ends.
    """

    transport = h2transport

    def setUp(self) -> None:
        # Registered first, so it runs last: the shared HTTP/2 connections outlive the
        # streams the mixin waits for.
        self.addCleanup(self._quiet)

    def _credentials(self, tls: bool) -> tuple[Any, Any]:
        if not tls:
            return None, None
        return (
            ServerCredentials.selfSigned().contextFactory(alpn=[b"h2"]),
            clientContextFactory(1, "none", alpn=[b"h2"]),
        )

    def _requirePlain(self) -> None:
        """
        Plain variants run cleartext HTTP/2 (what the transport does without a TLS creator).
        """

    async def _quiet(self) -> None:
        from twisted.internet import reactor

        h2transport.closeIdle()
        try:
            await h2transport.whenQuiet().addTimeout(5.0, reactor)  # type: ignore[arg-type]
        except DeferredTimeout:
            for connection in list(h2transport.live):
                connection.transport.abortConnection()  # type: ignore[union-attr]
            await h2transport.whenQuiet()
