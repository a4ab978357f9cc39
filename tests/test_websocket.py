"""
Tests for L{nodepass.transports.websocket}: the ``type=2`` pool transport (dataplane spec §9.2,
§15.7).

The wire is pinned byte for byte: the client's upgrade request, the server's first frame
(C{82 04 00 00 00 00}) and a masked client frame carrying a control line.  Everything runs in
memory (a L{MemoryReactorClock}, connections completed by iosim's L{ConnectionCompleter}, TLS
as L{TLSMemoryBIOFactory} on both ends of the pump), except one loopback test at the end.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import subprocess
import sys
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter, IOPump
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nodepass.testing import TransportConformanceMixin
from nodepass.tls import ServerCredentials, clientContextFactory
from nodepass.transports.interface import INodePassTransport, PoolAddress
from nodepass.transports.websocket import (
    CLOSE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    MAX_RECEIVE,
    MAX_SEND,
    MessageStream,
    WebSocketError,
    WebSocketTransport,
    hostHeader,
    ws,
)
from nodepass.tunnel.pool import CONTROL_ID, ClientPool, ServerPool

from .support import ROOT, instanceLogger

IP = "127.0.0.1"
PORT = 10101
ADDRESS = PoolAddress(host=IP, ip=IP, port=PORT, text=f"{IP}:{PORT}", serverName="none")
#: The 25-byte ping line of §15.6 (key ``secret``).
PING = b"CEcCEREdHAtBSEcEGgsEUBg=\n"
ID_FRAME = bytes.fromhex("820400000000")
RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


class Recorder(Protocol):
    """
    A pool protocol stand-in: optionally writes a greeting (the server's ID), records what
    arrives and how the connection ended.
    """

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received: list[bytes] = []
        self.lost: Failure | None = None
        self.made = 0

    def connectionMade(self) -> None:
        self.made += 1
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.received)


class TCPTransport(StringTransport):
    """
    A L{StringTransport} that, like Twisted's TCP and TLS transports, accepts
    C{unregisterProducer} with no producer registered (autobahn unregisters when it drops a
    connection).
    """

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class Frame:
    """
    One WebSocket frame as read off the wire (test-side decoding, to pin the framing).
    """

    def __init__(self, fin: bool, opcode: int, mask: bytes | None, payload: bytes) -> None:
        self.fin = fin
        self.opcode = opcode
        self.mask = mask
        self.payload = payload


def readFrames(data: bytes) -> list[Frame]:
    frames = []
    while data:
        first, second = data[0], data[1]
        length, offset = second & 0x7F, 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        mask = None
        if second & 0x80:
            mask = data[offset : offset + 4]
            offset += 4
        payload = data[offset : offset + length]
        assert len(payload) == length, "truncated frame"
        if mask is not None:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frames.append(Frame(bool(first & 0x80), first & 0x0F, mask, payload))
        data = data[offset + length :]
    return frames


class Link:
    """
    A WebSocket pool server on a L{MemoryReactorClock} and one client connection to it,
    pumped in memory, with the plain wire in each direction recorded.
    """

    def __init__(
        self,
        address: PoolAddress = ADDRESS,
        serverTLS: Any = None,
        clientTLS: Any = None,
        greeting: bytes = bytes(4),
        complete: bool = True,
        transport: WebSocketTransport = ws,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.servers: list[Recorder] = []

        def build() -> Recorder:
            server = Recorder(greeting)
            self.servers.append(server)
            return server

        self.reactor.listenTCP(
            address.port,
            transport.serverFactory(self.reactor, Factory.forProtocol(build), serverTLS),
        )
        self.client = Recorder()
        self.result = transport.connect(self.reactor, address, self.client, clientTLS, 30.0)
        self.toServer: list[bytes] = []
        self.toClient: list[bytes] = []
        if complete:
            self.complete()

    def complete(self) -> None:
        pump = ConnectionCompleter(self.reactor).succeedOnce(greet=False)
        assert pump is not None
        self.pump: IOPump = pump
        for side, log in ((pump.server, self.toServer), (pump.client, self.toClient)):
            original = side.dataReceived

            def record(data: bytes, original: Any = original, log: list[bytes] = log) -> None:
                log.append(data)
                original(data)

            side.dataReceived = record  # type: ignore[method-assign]
        self.flush()

    def flush(self) -> None:
        self.pump.flush()

    @property
    def server(self) -> Recorder:
        [server] = self.servers
        return server

    def sent(self, direction: list[bytes], start: int = 0) -> bytes:
        return b"".join(direction[start:])


def splitHandshake(wire: bytes) -> tuple[list[bytes], bytes]:
    head, _, rest = wire.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), rest


class PluginTests(SynchronousTestCase):
    def test_provides(self) -> None:
        """
        C{ws} is a transport plugin with the attributes of §9.2.
        """
        self.assertTrue(verifyObject(INodePassTransport, ws))
        self.assertTrue(verifyObject(IPlugin, ws))
        self.assertEqual(
            (ws.name, ws.typeCode, ws.halfClose, ws.minimumTLS, ws.readyAfterHandshake),
            ("ws", "2", False, 0, False),
        )

    def test_importLight(self) -> None:
        """
        Importing the module (as the plugin scan does) does not import autobahn.
        """
        code = (
            "import sys, nodepass.transports.websocket\n"
            "sys.exit(1 if any(m.split('.')[0] in ('autobahn', 'txaio') for m in sys.modules)"
            " else 0)\n"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        result = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=False)
        self.assertEqual(result.returncode, 0)

    def test_stream(self) -> None:
        """
        The transport a pool protocol sees is a full Twisted transport and push producer.
        """
        stream = MessageStream(object())
        self.assertTrue(verifyObject(ITransport, stream))
        self.assertTrue(verifyObject(IPushProducer, stream))


class WireTests(SynchronousTestCase):
    """
    The bytes on the wire (§15.7).
    """

    def test_request(self) -> None:
        """
        The client's upgrade request is the Go client's: C{GET /}, the bare tunnel host, the
        four upgrade headers, no extension or subprotocol offer.
        """
        link = Link()
        lines, rest = splitHandshake(link.toServer[0])
        self.assertEqual(rest, b"")
        self.assertEqual(lines[0], b"GET / HTTP/1.1")
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        key = headers.pop(b"Sec-WebSocket-Key")
        self.assertEqual(len(base64.b64decode(key, validate=True)), 16)
        self.assertEqual(
            headers,
            {
                b"Host": b"127.0.0.1",
                b"Upgrade": b"websocket",
                b"Connection": b"Upgrade",
                b"Sec-WebSocket-Version": b"13",
            },
        )

    def test_hostHeader(self) -> None:
        """
        The Host header is the tunnel host from the URL without the port, as npws sets it
        (C{DialOptions.Host} = the host part of the tunnel address), also on port 443.
        """
        named = PoolAddress("tunnel.example", "192.0.2.7", 443, "tunnel.example:443", "x")
        self.assertEqual(hostHeader(named), "tunnel.example")
        link = Link(address=PoolAddress("tunnel.example", IP, PORT, f"tunnel.example:{PORT}", "x"))
        lines, _ = splitHandshake(link.toServer[0])
        self.assertIn(b"Host: tunnel.example", lines)
        self.assertIs(self.successResultOf(link.result), link.client)

    def test_response(self) -> None:
        """
        The server answers 101 with the accept value for the client's key and no extension,
        then sends the 4 ID bytes as one unmasked binary frame: C{82 04 00 00 00 00}.
        """
        link = Link()
        lines, rest = splitHandshake(link.sent(link.toClient))
        self.assertEqual(lines[0], b"HTTP/1.1 101 Switching Protocols")
        key = dict(line.split(b": ", 1) for line in splitHandshake(link.toServer[0])[0][1:])[
            b"Sec-WebSocket-Key"
        ]
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        self.assertIn(b"Sec-WebSocket-Accept: " + accept, lines)
        self.assertFalse([line for line in lines if line.lower().startswith(b"sec-websocket-ext")])
        self.assertEqual(rest, ID_FRAME)
        self.assertEqual(link.client.data, bytes(4))
        self.assertIs(self.successResultOf(link.result), link.client)

    def test_clientFrame(self) -> None:
        """
        A client write of the 25-byte ping line goes out as one masked binary frame:
        C{82 99 <mask> <25 masked bytes>}.
        """
        link = Link()
        start = len(link.toServer)
        link.client.transport.write(PING)  # type: ignore[union-attr]
        link.flush()
        wire = link.sent(link.toServer, start)
        self.assertEqual(len(wire), 2 + 4 + 25)
        self.assertEqual(wire[:2], b"\x82\x99")
        mask = wire[2:6]
        self.assertEqual(bytes(b ^ mask[i % 4] for i, b in enumerate(wire[6:])), PING)
        self.assertEqual(link.server.data, PING)

    def test_oneFramePerWrite(self) -> None:
        """
        Every write is one binary message in one final frame, both ways, in order; the reader
        sees one byte stream.
        """
        link = Link(greeting=b"")
        serverStart, clientStart = len(link.toClient), len(link.toServer)
        chunks = [b"a", b"bc" * 100, os.urandom(70000), b"\n"]
        for chunk in chunks:
            link.client.transport.write(chunk)  # type: ignore[union-attr]
            link.server.transport.write(chunk[::-1])  # type: ignore[union-attr]
        link.flush()
        up = readFrames(link.sent(link.toServer, clientStart))
        down = readFrames(link.sent(link.toClient, serverStart))
        self.assertEqual([f.payload for f in up], chunks)
        self.assertEqual([f.payload for f in down], [c[::-1] for c in chunks])
        for frame in up + down:
            self.assertEqual((frame.fin, frame.opcode), (True, 2))
        self.assertTrue(all(f.mask is not None for f in up))
        self.assertTrue(all(f.mask is None for f in down))
        self.assertEqual(link.server.data, b"".join(chunks))
        self.assertEqual(link.client.data, b"".join(c[::-1] for c in chunks))

    def test_writeSequenceAndEmpty(self) -> None:
        """
        C{writeSequence} sends one message; an empty write sends nothing.
        """
        link = Link(greeting=b"")
        start = len(link.toServer)
        transport: Any = link.client.transport
        transport.write(b"")
        transport.writeSequence([b"ab", b"cd"])
        link.flush()
        frames = readFrames(link.sent(link.toServer, start))
        self.assertEqual([f.payload for f in frames], [b"abcd"])

    def test_largeWrite(self) -> None:
        """
        A write larger than L{MAX_SEND} is split into messages of at most that size; the
        stream arrives intact.
        """
        link = Link(greeting=b"")
        start = len(link.toServer)
        data = os.urandom(MAX_SEND * 2 + 10)
        link.client.transport.write(data)  # type: ignore[union-attr]
        link.flush()
        frames = readFrames(link.sent(link.toServer, start))
        self.assertEqual([len(f.payload) for f in frames], [MAX_SEND, MAX_SEND, 10])
        self.assertEqual(link.server.data, data)


class ServerHandshakeTests(SynchronousTestCase):
    """
    The server side of the upgrade, driven with raw requests on a L{StringTransport}.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.pools: list[Recorder] = []

        def build() -> Recorder:
            pool = Recorder(bytes(4))
            self.pools.append(pool)
            return pool

        factory: Any = ws.serverFactory(self.clock, Factory.forProtocol(build), None)
        self.channel: Any = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        self.tcp = TCPTransport(
            hostAddress=IPv4Address("TCP", IP, PORT),
            peerAddress=IPv4Address("TCP", "192.0.2.1", 40000),
        )
        self.channel.makeConnection(self.tcp)

    def request(self, path: bytes = b"/", extra: bytes = b"") -> bytes:
        self.channel.dataReceived(
            b"GET " + path + b" HTTP/1.1\r\n"
            b"Host: tunnel.example\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + RFC_KEY + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
        )
        value: bytes = self.tcp.value()
        return value

    def test_acceptVector(self) -> None:
        """
        RFC 6455's sample key gets the sample accept value.
        """
        lines, rest = splitHandshake(self.request())
        self.assertEqual(lines[0], b"HTTP/1.1 101 Switching Protocols")
        self.assertIn(b"Sec-WebSocket-Accept: " + RFC_ACCEPT, lines)
        self.assertEqual(rest, ID_FRAME)

    def test_anyPathOriginNoCompression(self) -> None:
        """
        Any path is accepted, the Origin is not checked, a permessage-deflate offer and a
        subprotocol list are ignored.
        """
        lines, rest = splitHandshake(
            self.request(
                b"/some/path?x=1",
                b"Origin: http://elsewhere.example\r\n"
                b"Sec-WebSocket-Protocol: chat\r\n"
                b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            )
        )
        self.assertEqual(lines[0], b"HTTP/1.1 101 Switching Protocols")
        names = [line.split(b":")[0].lower() for line in lines[1:]]
        self.assertNotIn(b"sec-websocket-extensions", names)
        self.assertNotIn(b"sec-websocket-protocol", names)
        self.assertEqual(rest, ID_FRAME)

    def test_peerAndHost(self) -> None:
        """
        The pool protocol sees the TCP connection's addresses, and no certificate without TLS.
        """
        self.request()
        [pool] = self.pools
        transport: Any = pool.transport
        self.assertEqual(transport.getPeer(), IPv4Address("TCP", "192.0.2.1", 40000))
        self.assertEqual(transport.getHost(), IPv4Address("TCP", IP, PORT))
        self.assertIsNone(transport.getPeerCertificate())
        self.assertTrue(transport.connected)

    def test_flowControl(self) -> None:
        """
        Producers registered with the pool protocol's transport are registered with the TCP
        connection, and pausing the pool protocol's transport pauses reading the TCP
        connection.
        """
        self.request()
        transport: Any = self.pools[0].transport

        @implementer(IPushProducer)
        class Producer:
            def pauseProducing(self) -> None:
                pass

            def resumeProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                pass

        producer = Producer()
        transport.registerProducer(producer, True)
        self.assertIs(self.tcp.producer, producer)
        self.assertTrue(self.tcp.streaming)
        transport.unregisterProducer()
        self.assertIsNone(self.tcp.producer)
        transport.pauseProducing()
        self.assertEqual(self.tcp.producerState, "paused")
        transport.resumeProducing()
        self.assertEqual(self.tcp.producerState, "producing")

    def test_handshakeTimeout(self) -> None:
        """
        A connection that sends no upgrade request is dropped after L{HANDSHAKE_TIMEOUT}.
        """
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(self.tcp.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.tcp.disconnecting)
        self.assertEqual(self.pools, [])

    def test_handshakeTimerStops(self) -> None:
        """
        Once the upgrade is done, no timer is left behind.
        """
        self.request()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_poolRefuses(self) -> None:
        """
        When the pool factory builds no protocol, the WebSocket is closed with status 1000.
        """

        class Full(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        factory: Any = ws.serverFactory(self.clock, Full(), None)
        channel: Any = factory.buildProtocol(None)
        tcp = TCPTransport()
        channel.makeConnection(tcp)
        channel.dataReceived(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + RFC_KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        _, rest = splitHandshake(tcp.value())
        [close] = readFrames(rest)
        self.assertEqual((close.opcode, close.payload), (8, b"\x03\xe8"))

    def test_textMessage(self) -> None:
        """
        A text message from the client is a protocol error: the server sends close 1003 and
        the pool protocol ends with L{WebSocketError}; nothing of the text reaches it.
        """
        self.request()
        self.tcp.clear()
        mask = b"\x01\x02\x03\x04"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"hello"))
        self.channel.dataReceived(b"\x81\x85" + mask + payload)
        [close] = readFrames(self.tcp.value())
        self.assertEqual(close.opcode, 8)
        self.assertEqual(close.payload[:2], b"\x03\xeb")
        [pool] = self.pools
        self.assertEqual(pool.received, [])
        # The peer does not answer: the connection is dropped in time.
        self.clock.advance(CLOSE_TIMEOUT)
        self.assertTrue(self.tcp.disconnecting)
        self.channel.connectionLost(Failure(ConnectionDone()))
        assert pool.lost is not None
        pool.lost.trap(WebSocketError)

    def test_tooLarge(self) -> None:
        """
        A frame larger than L{MAX_RECEIVE} is refused with close status 1009 before its payload
        is buffered.
        """
        self.request()
        self.tcp.clear()
        self.channel.dataReceived(b"\x82\xff" + struct.pack("!Q", MAX_RECEIVE + 1) + bytes(4))
        [close] = readFrames(self.tcp.value())
        self.assertEqual((close.opcode, close.payload[:2]), (8, b"\x03\xf1"))
        self.assertEqual(self.pools[0].received, [])

    def test_unmaskedClientFrame(self) -> None:
        """
        An unmasked frame from a client breaks RFC 6455 and ends the connection.
        """
        self.request()
        self.channel.dataReceived(b"\x82\x01x")
        self.assertEqual(self.pools[0].received, [])
        self.clock.advance(CLOSE_TIMEOUT)
        self.assertTrue(self.tcp.disconnecting)


class StreamTests(SynchronousTestCase):
    """
    Both ends together: data, closing, errors.
    """

    def test_bothWays(self) -> None:
        """
        Several messages each way arrive intact and in order.
        """
        link = Link()
        client: Any = link.client.transport
        server: Any = link.server.transport
        for i in range(10):
            client.write(b"up%d;" % i)
            server.write(b"down%d;" % i)
            if i % 3 == 0:
                link.flush()
        link.flush()
        self.assertEqual(link.server.data, b"".join(b"up%d;" % i for i in range(10)))
        self.assertEqual(link.client.data, bytes(4) + b"".join(b"down%d;" % i for i in range(10)))
        self.assertEqual(link.client.made, 1)

    def test_clientCloses(self) -> None:
        """
        The client's C{loseConnection} is a close handshake with status 1000 after the data
        already written; both pool protocols end cleanly and no timer is left.
        """
        link = Link()
        start = len(link.toServer)
        client: Any = link.client.transport
        client.write(b"last words")
        client.loseConnection()
        client.write(b"ignored")
        link.flush()
        up = readFrames(link.sent(link.toServer, start))
        self.assertEqual(
            [(f.opcode, f.payload) for f in up], [(2, b"last words"), (8, b"\x03\xe8")]
        )
        self.assertEqual(readFrames(link.toClient[-1])[-1].payload, b"\x03\xe8")
        self.assertEqual(link.server.data, b"last words")
        assert link.client.lost is not None and link.server.lost is not None
        link.client.lost.trap(ConnectionDone)
        link.server.lost.trap(ConnectionDone)
        self.assertEqual(link.reactor.getDelayedCalls(), [])

    def test_serverCloses(self) -> None:
        """
        The server's C{loseConnection} ends both sides cleanly too.
        """
        link = Link()
        link.server.transport.loseConnection()  # type: ignore[union-attr]
        link.flush()
        assert link.client.lost is not None and link.server.lost is not None
        link.client.lost.trap(ConnectionDone)
        link.server.lost.trap(ConnectionDone)
        self.assertEqual(link.reactor.getDelayedCalls(), [])

    def test_loseWriteConnection(self) -> None:
        """
        There is no half-close over a WebSocket: ending the write side closes it all.
        """
        link = Link()
        link.client.transport.loseWriteConnection()  # type: ignore[union-attr]
        link.flush()
        assert link.server.lost is not None
        link.server.lost.trap(ConnectionDone)

    def test_abort(self) -> None:
        """
        C{abortConnection} drops the TCP connection without a close handshake; the peer sees an
        unclean end.
        """
        link = Link()
        link.client.transport.abortConnection()  # type: ignore[union-attr]
        link.flush()
        assert link.client.lost is not None and link.server.lost is not None
        link.server.lost.trap(ConnectionLost)

    def test_quiet(self) -> None:
        """
        Ordinary closes and deliberate aborts log nothing above debug level (autobahn's own
        warnings would otherwise show in the NodePass log).
        """
        with capturedLogs() as events:
            for close in ("loseConnection", "abortConnection"):
                link = Link()
                getattr(link.client.transport, close)()
                link.flush()
                link = Link()
                getattr(link.server.transport, close)()
                link.flush()
        loud = [e for e in events if e["log_level"] > LogLevel.info]
        self.assertEqual(loud, [])

    def test_textFromPeer(self) -> None:
        """
        A text message kills the connection on both ends.
        """
        link = Link()
        channel: Any = link.client.transport.channel  # type: ignore[union-attr]
        channel.sendMessage(b"text", isBinary=False)
        link.flush()
        self.assertEqual(link.server.received, [])
        assert link.server.lost is not None and link.client.lost is not None
        link.server.lost.trap(WebSocketError)
        link.client.lost.trap(ConnectionLost)
        self.assertIn("1003", link.client.lost.getErrorMessage())

    def test_logsThroughTheInstanceLogger(self) -> None:
        """
        The copy L{WebSocketTransport.withLogger} gives an instance logs through that
        instance's logger, on both ends; none of its lines reach the process-global
        publisher (autobahn's own chatter may).
        """
        log, mine, seenGlobally = instanceLogger(self)
        link = Link(transport=ws.withLogger(log))
        channel: Any = link.client.transport.channel  # type: ignore[union-attr]
        channel.sendMessage(b"text", isBinary=False)
        link.flush()
        self.assertEqual(
            [formatEvent(event) for event in mine],
            ["WebSocket pool connection failed: text message on a binary stream"],
        )
        self.assertEqual([e for e in seenGlobally if e.get("log_namespace") == "nodepass"], [])

    def test_tls(self) -> None:
        """
        With TLS (``wss://``), the same stream runs inside TLS and each side's transport gives
        the peer's certificate.
        """
        credentials = ServerCredentials.selfSigned()
        link = Link(
            serverTLS=credentials.contextFactory(), clientTLS=clientContextFactory(1, "none")
        )
        self.assertIs(self.successResultOf(link.result), link.client)
        self.assertEqual(link.client.data, bytes(4))
        client: Any = link.client.transport
        self.assertIsNotNone(client.getPeerCertificate())
        self.assertIsNone(link.server.transport.getPeerCertificate())  # type: ignore[union-attr]
        client.write(PING)
        link.flush()
        self.assertEqual(link.server.data, PING)
        client.pauseProducing()
        client.resumeProducing()
        client.loseConnection()
        link.flush()
        assert link.server.lost is not None
        link.server.lost.trap(ConnectionDone)


class DialTests(SynchronousTestCase):
    """
    The client's C{connect}: failures and the overall timeout.
    """

    def test_refused(self) -> None:
        link = Link(complete=False)
        ConnectionCompleter(link.reactor).failOnce(Failure(ConnectionRefusedError()))
        self.failureResultOf(link.result, ConnectionRefusedError)
        self.assertEqual(link.client.made, 0)

    def test_connectTimeout(self) -> None:
        """
        No TCP connection within the timeout: the Deferred fails with a clear error and the
        attempt is abandoned.
        """
        link = Link(complete=False)
        [connector] = link.reactor.connectors
        link.reactor.advance(30.0)
        failure = self.failureResultOf(link.result, WebSocketError)
        self.assertIn("ws://127.0.0.1:10101/", failure.getErrorMessage())
        self.assertIn("30", failure.getErrorMessage())
        self.assertTrue(connector.stoppedConnecting)  # type: ignore[attr-defined]

    def test_upgradeTimeout(self) -> None:
        """
        A server that never answers the upgrade: the Deferred fails after the timeout and the
        connection is dropped.
        """
        reactor = MemoryReactorClock()
        reactor.listenTCP(PORT, Factory.forProtocol(Protocol))
        client = Recorder()
        result = ws.connect(reactor, ADDRESS, client, None, 30.0)
        pump = ConnectionCompleter(reactor).succeedOnce()
        assert pump is not None
        self.assertNoResult(result)
        reactor.advance(30.0)
        pump.flush()
        self.failureResultOf(result, WebSocketError)
        self.assertTrue(pump.clientIO.disconnected)
        self.assertEqual(client.made, 0)
        self.assertIsNone(client.lost)

    def test_refusedUpgrade(self) -> None:
        """
        A server answering the upgrade with an HTTP error (Go's C{503 pool full}) fails the
        Deferred; the pool protocol is never connected.
        """
        reactor = MemoryReactorClock()

        class Full(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\npool full\n"
                )
                self.transport.loseConnection()  # type: ignore[union-attr]

        reactor.listenTCP(PORT, Factory.forProtocol(Full))
        client = Recorder()
        result = ws.connect(reactor, ADDRESS, client, None, 30.0)
        pump = ConnectionCompleter(reactor).succeedOnce()
        assert pump is not None
        pump.flush()
        failure = self.failureResultOf(result, WebSocketError)
        self.assertIn("upgrade", failure.getErrorMessage())
        self.assertEqual(client.made, 0)
        reactor.advance(60)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        Cancelling the Deferred abandons the attempt.
        """
        link = Link(complete=False)
        link.result.cancel()
        self.failureResultOf(link.result)
        self.assertEqual(link.reactor.getDelayedCalls(), [])


class PoolTests(SynchronousTestCase):
    """
    The real pool protocol over the WebSocket transport.
    """

    def test_controlConnection(self) -> None:
        """
        The server's pool hands out ID C{00000000} first, the client's pool reads it from the
        message stream, and both park the connection as the control connection.
        """
        reactor = MemoryReactorClock()
        server = ServerPool(reactor, 4)
        reactor.listenTCP(PORT, ws.serverFactory(reactor, server.factory(False), None))
        client = ClientPool(
            reactor, lambda conn: ws.connect(reactor, ADDRESS, conn, None, 30.0), 1, 1
        )
        client.start()
        pump = ConnectionCompleter(reactor).succeedOnce()
        assert pump is not None
        pump.flush()
        self.assertEqual(list(server.idle), [CONTROL_ID])
        self.assertEqual(list(client.idle), [CONTROL_ID])
        clientConn, serverConn = client.idle[CONTROL_ID], server.idle[CONTROL_ID]
        clientConn.write(PING)
        serverConn.write(PING[::-1])
        pump.flush()
        self.assertEqual(b"".join(serverConn.pending), PING)
        self.assertEqual(b"".join(clientConn.pending), PING[::-1])
        client.close()
        server.close()
        pump.flush()
        self.assertTrue(clientConn.closed and serverConn.closed)


@pytest.mark.integration
class LoopbackTests(TestCase):
    """
    One real connection on 127.0.0.1, through the global reactor.
    """

    timeout = 20

    async def _roundTrip(self) -> None:
        from twisted.internet import reactor

        servers: list[Recorder] = []

        def build() -> Recorder:
            servers.append(Recorder(bytes(4)))
            return servers[-1]

        factory: Any = ws.serverFactory(reactor, Factory.forProtocol(build), None)
        port = reactor.listenTCP(0, factory, interface=IP)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        number = port.getHost().port  # type: ignore[attr-defined]
        client = Recorder()
        address = PoolAddress(IP, IP, number, f"{IP}:{number}", "none")
        connected = await ws.connect(reactor, address, client, None, 10.0)
        self.assertIs(connected, client)
        data = os.urandom(300000)
        client.transport.write(data)  # type: ignore[union-attr]
        while len(servers[0].data) < len(data):
            await deferLater(reactor, 0.01)
        self.assertEqual(servers[0].data, data)
        self.assertEqual(client.data, bytes(4))
        client.transport.loseConnection()  # type: ignore[union-attr]
        while servers[0].lost is None or client.lost is None:
            await deferLater(reactor, 0.01)
        servers[0].lost.trap(ConnectionDone)
        client.lost.trap(ConnectionDone)

    def test_roundTrip(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._roundTrip())


def deferLater(reactor: Any, seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds)


class WebSocketConformanceTests(TransportConformanceMixin, TestCase):
    """
    The plugin contract, on 127.0.0.1.
    """

    transport = ws
