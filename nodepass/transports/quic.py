"""The built-in QUIC pool transport (``type=1``, dataplane spec §9.1, §15.7).

The server serves the pool with QUIC on the **UDP** port that has the tunnel
port's number (the handshake stays on TCP); the client keeps one QUIC
connection to that address and opens one client-initiated bidirectional
stream per pool connection.  The client writes one byte ``00`` on a new
stream so that the server learns of it; the server reads (and ignores) that
byte, then the pool protocol takes over: 4 ID bytes from the server, then
the byte stream.  ALPN ``np-quic``, TLS 1.3 always (``minimumTLS = 1``),
idle timeout 15 s, a PING every 5 s.  Closing a pool connection ends our
send direction with a FIN; there is no half-close.

The QUIC state machine is aioquic's sans-IO C{QuicConnection}, driven here by
a Twisted C{DatagramProtocol} on the injected reactor: datagrams go in with
C{receive_datagram} and out with C{datagrams_to_send}, timers are
C{reactor.callLater} calls at C{get_timer()}.  This module stays import-light
(it is loaded by the plugin scan): aioquic is only imported when a port is
opened or a connection is made.

The server side is not a TCP factory: C{serverFactory} returns a factory
that refuses every TCP pool connection, and the tunnel server calls
L{QuicTransport.listenPool} (the transport provides
L{IListeningPoolTransport}) to serve the pool on UDP.  Each stream is a
L{Substream <nodepass.transports.substream.Substream>}, and the aioquic
internals used here are reached through L{nodepass._compat.aioquic}.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    MessageLengthError,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
)
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass._compat import aioquic as aioquicCompat
from nodepass.errors import NodePassError
from nodepass.log import defaultLogger
from nodepass.transports.interface import (
    IALPNTransport,
    ICredentialTransport,
    IDisconnectingTransport,
    IListeningPoolTransport,
    ILoggingTransport,
    IPoolTLSTransport,
    PoolAddress,
    PoolTLS,
)
from nodepass.transports.substream import Substream

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

__all__ = ["ALPN", "QuicError", "QuicStream", "QuicTransport", "quic"]


#: The ALPN protocol both ends require.
ALPN = "np-quic"

#: Seconds without any packet from the peer after which a connection is
#: dead (3 x ``report``).
IDLE_TIMEOUT = 15.0

#: Seconds between PINGs on an established connection (``report``).
KEEPALIVE_INTERVAL = 5.0

#: How many streams the peer may have open at once (Go: the pool's ``max``;
#: large here, the pool itself refuses connections beyond ``max``).
MAX_INCOMING_STREAMS = 1 << 16

#: How many bytes a stream may receive beyond what its protocol has consumed
#: (the stream receive window advertised to the peer), and the step by which
#: the window moves: credit is granted in steps of a quarter window.
RECEIVE_WINDOW = 1 << 21
RECEIVE_STEP = RECEIVE_WINDOW // 4

#: Kernel buffer sizes asked for the UDP socket (the kernel caps them at
#: net.core.rmem_max / wmem_max).  The default (about 200 KiB) drops bursts,
#: and every drop halves the congestion window.
SOCKET_BUFFER = 1 << 22

#: The largest UDP datagram read.
MAX_DATAGRAM = 65535

#: QUIC application error code used when we close or reset (Go uses 0).
APPLICATION_ERROR = 0


class QuicError(NodePassError):
    """
    A QUIC connection could not be set up, or died.
    """


def _address(host: str, port: int, kind: str = "UDP") -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address(kind, host, port)  # type: ignore[arg-type]
    return IPv4Address(kind, host, port)  # type: ignore[arg-type]


# -- one stream: the transport a pool protocol sees ---------------------------------------------


class QuicStream(Substream):
    """
    One bidirectional QUIC stream carrying one pool connection.

    Writes become stream data; C{loseConnection} ends our direction with a
    FIN, C{abortConnection} resets the stream both ways; the peer's FIN or
    reset, or the end of the QUIC connection, is the protocol's
    C{connectionLost}.

    Flow control: the watermarks of L{Substream} count the stream's
    unacknowledged send buffer.  Pausing this transport holds received data
    here until resumed; the peer gets credit for what the protocol consumed
    plus L{RECEIVE_WINDOW}, so what is held stays below that window.
    """

    def __init__(self, connection: _Connection, streamID: int) -> None:
        super().__init__()
        self.connection = connection
        self.streamID = streamID
        self._sendClosed = False
        self._receiveClosed = False
        self._paused = False
        #: Bytes handed to the protocol so far (the receive window follows it).
        self.consumed = 0
        self._inbox: list[bytes] = []
        self._inboxEnd: Failure | None = None
        self._deliverCall: IDelayedCall | None = None
        self._finishCall: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<QuicStream {self.streamID} with {self.connection.peerAddress}>"

    # -- Substream ----------------------------------------------------------

    @property
    def log(self) -> Logger:
        return self.connection.log

    @property
    def clock(self) -> Any:
        return self.connection.reactor

    def describe(self) -> str:
        return f"QUIC stream {self.streamID}"

    def send(self, data: bytes) -> None:
        if self._sendClosed:
            return
        self.connection.quic.send_stream_data(self.streamID, bytes(data))
        self.connection.flushSoon()

    def pending(self) -> int:
        return self.connection.unacknowledged(self.streamID)

    def writeBlocked(self, blocked: bool) -> None:
        # The connection checks blocked streams again after each flush.
        if blocked:
            self.connection.blocked.add(self)
        else:
            self.connection.blocked.discard(self)

    def endOutput(self) -> None:
        """
        End our direction (FIN after the data already written);
        C{connectionLost} follows at once, as a TCP connection's does once
        its data is handed to the kernel (aioquic delivers what is left).
        """
        # Only our direction: a STOP_SENDING would overtake the FIN (aioquic
        # writes it first) and the peer would see an error instead of the
        # end.  The peer answers the FIN with its own; whatever it sends
        # meanwhile is dropped.
        self._endSend(reset=False)
        self.connection.flushSoon()
        self._finishSoon(Failure(ConnectionDone("QUIC stream closed")))

    def reset(self) -> None:
        self._endSend(reset=True)
        self._stopReceiving()
        self.connection.flushSoon()
        self._finishSoon(Failure(ConnectionAborted("QUIC stream reset")))

    def getPeer(self) -> IPv4Address | IPv6Address:
        host, port = self.connection.peerAddress[:2]
        return _address(str(host), int(port))

    def getHost(self) -> Any:
        return self.connection.getHost()

    def getPeerCertificate(self) -> Any:
        """
        The peer's leaf certificate (a C{cryptography} certificate) on the
        client side, L{None} on the server side (no client certificates).
        """
        return self.connection.peerCertificate

    @property
    def held(self) -> int:
        """
        Bytes received and held while the protocol is paused.
        """
        return sum(len(data) for data in self._inbox)

    # -- IPushProducer: hold received data ------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if (self._inbox or self._inboxEnd is not None) and self._deliverCall is None:
            self._deliverCall = self.connection.reactor.callLater(0, self._deliverHeld)

    def _deliverHeld(self) -> None:
        self._deliverCall = None
        while self._inbox and not self._paused and not self.closed:
            data = self._inbox.pop(0)
            self._deliver(data)
        # What was consumed opens the window again: tell the peer.
        self.connection.flushSoon()
        if not self._inbox and not self._paused and self._inboxEnd is not None:
            end, self._inboxEnd = self._inboxEnd, None
            self._peerEnded(end)

    # -- called by the connection ---------------------------------------------

    def attach(self, protocol: IProtocol) -> None:
        """
        Connect C{protocol}; its exceptions propagate (the caller resets).
        """
        self.protocol = protocol
        protocol.makeConnection(self)

    def received(self, data: bytes, end: bool) -> None:
        if self.closed or self._receiveClosed:
            return
        if end:
            self._receiveClosed = True
        if self._paused or self._inbox:
            if data:
                self._inbox.append(data)
            if end:
                self._inboxEnd = Failure(ConnectionDone("QUIC stream ended by the peer"))
            return
        if data:
            self._deliver(data)
        if end:
            self._peerEnded(Failure(ConnectionDone("QUIC stream ended by the peer")))

    def _deliver(self, data: bytes) -> None:
        if self.protocol is None or self.closed:
            return
        self.consumed += len(data)
        self.deliver(data)

    def _peerEnded(self, reason: Failure) -> None:
        """
        The peer's FIN: no half-close, so end ours too and report the end.
        """
        if self.closed:
            return
        self._endSend(reset=False)
        self.connection.flushSoon()
        self.finish(reason)

    def peerReset(self, stopSending: bool) -> None:
        """
        The peer reset its direction (RESET_STREAM) or asked us to stop
        sending (STOP_SENDING; aioquic has reset ours already).
        """
        if self.closed:
            return
        if stopSending:
            self._sendClosed = True
            self._stopReceiving()
            why = "QUIC stream: the peer stopped reading"
        else:
            self._receiveClosed = True
            self._endSend(reset=True)
            why = "QUIC stream reset by the peer"
        self.connection.flushSoon()
        self.finish(Failure(ConnectionLost(why)))

    def _endSend(self, reset: bool) -> None:
        if self._sendClosed:
            return
        self._sendClosed = True
        quic = self.connection.quic
        try:
            if reset:
                quic.reset_stream(self.streamID, APPLICATION_ERROR)
            else:
                quic.send_stream_data(self.streamID, b"", end_stream=True)
        except Exception as e:  # e.g. already reset by a STOP_SENDING
            self.connection.log.debug(
                "Cannot end QUIC stream {id}: {error}", id=self.streamID, error=e
            )

    def _stopReceiving(self) -> None:
        if self._receiveClosed:
            return
        self._receiveClosed = True
        try:
            self.connection.quic.stop_stream(self.streamID, APPLICATION_ERROR)
        except ValueError:
            pass

    def _finishSoon(self, reason: Failure) -> None:
        if self._finishCall is None:
            self._finishCall = self.connection.reactor.callLater(0, self.finish, reason)

    def finish(self, reason: Failure) -> None:
        """
        Report the end of the stream to the protocol, once.
        """
        for call in (self._finishCall, self._deliverCall):
            if call is not None and call.active():
                call.cancel()
        self._finishCall = self._deliverCall = None
        super().finish(reason)

    def release(self) -> None:
        self._inbox, self._inboxEnd = [], None
        self.connection.forget(self)


# -- one QUIC connection -------------------------------------------------------------------------


class _Connection:
    """
    Drives one aioquic C{QuicConnection} on the reactor: feeds it datagrams,
    sends what it produces, runs its timer and a keep-alive PING, and turns
    its events into stream calls.

    Transmission is batched: anything that gives aioquic something to send
    asks for L{flushSoon}, and one C{callLater(0)} sends it all.
    """

    def __init__(
        self,
        reactor: Any,
        quic: QuicConnection,
        sendDatagram: Callable[[bytes, Any], None],
        getHost: Callable[[], Any],
        peerAddress: Any,
        log: Logger,
    ) -> None:
        self.log = log
        self.reactor = reactor
        self.quic = quic
        self.sendDatagram = sendDatagram
        self.getHost = getHost
        self.peerAddress = peerAddress
        self.streams: dict[int, QuicStream] = {}
        self.blocked: set[QuicStream] = set()
        self.peerCertificate: Any = None
        self.established = False
        self.dead = False
        self.closeReason = ""
        self._flushCall: IDelayedCall | None = None
        self._timer: IDelayedCall | None = None
        self._keepAlive: IDelayedCall | None = None
        self._pings = 0
        # Hooks for the owner (server endpoint or client).
        self.onEstablished: Callable[[_Connection], None] = lambda c: None
        self.onTerminated: Callable[[_Connection], None] = lambda c: None
        self.onNewStream: Callable[[_Connection, int, bytes, bool], None] | None = None
        self.onConnectionID: Callable[[bytes, bool], None] = lambda cid, issued: None
        self.onStreamsGone: Callable[[], None] = lambda: None

    # -- input ---------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.dead:
            return
        self.quic.receive_datagram(data, addr, now=self.reactor.seconds())
        self._handleEvents()
        self._checkClosed()
        self.flushSoon()

    def _onTimer(self) -> None:
        self._timer = None
        if self.dead:
            return
        self.quic.handle_timer(now=self.reactor.seconds())
        self.flush()

    def _sendPing(self) -> None:
        self._keepAlive = None
        if self.dead:
            return
        self._pings += 1
        self.quic.send_ping(self._pings)
        self.flush()
        self._keepAlive = self.reactor.callLater(KEEPALIVE_INTERVAL, self._sendPing)

    # -- output ----------------------------------------------------------------

    def flushSoon(self) -> None:
        if self._flushCall is None and not self.dead:
            self._flushCall = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Handle pending events, send every datagram aioquic has ready, re-arm
        the timer, and resume producers whose stream drained.
        """
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        if self.dead:
            return
        self._handleEvents()
        for data, addr in self.quic.datagrams_to_send(now=self.reactor.seconds()):
            self.sendDatagram(data, addr)
        self._handleEvents()
        self._checkClosed()
        if self.dead:
            return
        self._armTimer()
        for stream in list(self.blocked):
            stream.drained()

    def _armTimer(self) -> None:
        when = self.quic.get_timer()
        timer = self._timer
        if when is None:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer = None
            return
        if timer is not None and timer.active():
            if timer.getTime() == when:
                return
            timer.cancel()
        self._timer = self.reactor.callLater(max(0.0, when - self.reactor.seconds()), self._onTimer)

    # -- events ---------------------------------------------------------------------

    def _handleEvents(self) -> None:
        from aioquic.quic import events

        while not self.dead:
            event = self.quic.next_event()
            if event is None:
                return
            if isinstance(event, events.StreamDataReceived):
                self._streamData(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.peerReset(stopSending=False)
            elif isinstance(event, events.StopSendingReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.peerReset(stopSending=True)
            elif isinstance(event, events.HandshakeCompleted):
                self._established()
            elif isinstance(event, events.ConnectionIdIssued):
                self.onConnectionID(event.connection_id, True)
            elif isinstance(event, events.ConnectionIdRetired):
                self.onConnectionID(event.connection_id, False)
            elif isinstance(event, events.ConnectionTerminated):
                reason = event.reason_phrase or "no reason given"
                self.terminated(f"{reason} (error code {event.error_code:#x})")

    def _checkClosed(self) -> None:
        """
        End at once when the peer closed the connection: aioquic reports it
        only after its draining period, during which nothing is sent anyway.
        """
        event = aioquicCompat.peerClose(self.quic, self.log)
        if event is not None and not self.dead:
            # Our own close (a protocol error) still has its CONNECTION_CLOSE
            # to send; when draining after the peer's, aioquic sends nothing.
            for data, addr in self.quic.datagrams_to_send(now=self.reactor.seconds()):
                self.sendDatagram(data, addr)
            reason = getattr(event, "reason_phrase", "") or "closed by the peer"
            code = getattr(event, "error_code", 0)
            self.terminated(f"{reason} (error code {code:#x})")

    def _streamData(self, streamID: int, data: bytes, end: bool) -> None:
        stream = self.streams.get(streamID)
        if stream is not None:
            stream.received(data, end)
        elif self.onNewStream is not None:
            self.onNewStream(self, streamID, data, end)

    def _established(self) -> None:
        if self.established:
            return
        self.established = True
        self.peerCertificate = aioquicCompat.peerCertificate(self.quic, self.log)
        self._keepAlive = self.reactor.callLater(KEEPALIVE_INTERVAL, self._sendPing)
        self.onEstablished(self)

    # -- streams -------------------------------------------------------------------------

    def unacknowledged(self, streamID: int) -> int:
        """
        Bytes written to the stream and not yet acknowledged by the peer.
        """
        return aioquicCompat.unacknowledged(self.quic, streamID, self.log)

    def forget(self, stream: QuicStream) -> None:
        if self.streams.get(stream.streamID) is stream:
            del self.streams[stream.streamID]
        self.blocked.discard(stream)
        if not self.streams and not self.dead:
            self.onStreamsGone()

    def openStream(self) -> QuicStream:
        streamID = self.quic.get_next_available_stream_id()
        stream = self.streams[streamID] = QuicStream(self, streamID)
        return stream

    # -- the end ----------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """
        Send CONNECTION_CLOSE now and end every stream (no draining period).
        """
        if self.dead:
            return
        self.quic.close(error_code=APPLICATION_ERROR, reason_phrase=reason)
        try:
            for data, addr in self.quic.datagrams_to_send(now=self.reactor.seconds()):
                self.sendDatagram(data, addr)
        except Exception as e:
            self.log.debug("Sending the QUIC close failed: {error}", error=e)
        self.terminated(reason, closing=True)

    def terminated(self, reason: str, closing: bool = False) -> None:
        if self.dead:
            return
        self.dead = True
        self.closeReason = reason
        for call in (self._flushCall, self._timer, self._keepAlive):
            if call is not None and call.active():
                call.cancel()
        self._flushCall = self._timer = self._keepAlive = None
        # The owner first (so nothing new lands here), then the streams.
        self.onTerminated(self)
        for stream in list(self.streams.values()):
            if stream.disconnecting:
                why: Failure = Failure(ConnectionDone("QUIC stream closed"))
            else:
                why = Failure(ConnectionLost(f"QUIC connection closed: {reason}"))
            stream.finish(why)
        self.streams.clear()
        self.blocked.clear()


def _newConnection(
    connection: Callable[[QuicConnection], _Connection], log: Logger, **kwargs: Any
) -> _Connection:
    """
    A L{_Connection} over a new aioquic connection built with C{kwargs}: one
    whose receive window follows what each stream's protocol consumed
    (L{RECEIVE_WINDOW}, raised in steps of L{RECEIVE_STEP}; see
    L{nodepass._compat.aioquic.connectionClass}), taking up to
    L{MAX_INCOMING_STREAMS} streams from the peer.
    """
    from nodepass._compat import aioquic as compat

    quic = compat.connectionClass(RECEIVE_WINDOW, RECEIVE_STEP, log)(**kwargs)
    compat.allowIncomingStreams(quic, MAX_INCOMING_STREAMS, log)
    result = connection(quic)
    quic.windows = result.streams  # type: ignore[attr-defined]
    return result


def _growBuffers(port: Any, log: Logger) -> None:
    """
    Ask for L{SOCKET_BUFFER}-byte kernel buffers on a listening UDP port.
    """
    sock = getattr(port, "socket", None)
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError as e:
            log.debug("Cannot size the QUIC socket buffer: {error}", error=str(e))


def _baseConfiguration(isClient: bool, alpn: str) -> QuicConfiguration:
    from aioquic.quic.configuration import QuicConfiguration

    # aioquic reports connection errors through the standard logging module;
    # without a handler of our own they would reach stderr through Python's
    # last-resort handler (an application that configures logging still
    # gets them).  Failures that matter surface here as QuicError.
    quicLogger = logging.getLogger("quic")
    if not quicLogger.handlers:
        quicLogger.addHandler(logging.NullHandler())

    return QuicConfiguration(
        is_client=isClient,
        alpn_protocols=[alpn],
        idle_timeout=IDLE_TIMEOUT,
    )


# -- server ---------------------------------------------------------------------------------------


def _serverKeyAndChain(credentials: Any) -> tuple[Any, list[Any]]:
    """
    The private key and certificate chain (leaf first) of
    L{nodepass.tls.ServerCredentials}, as C{cryptography} objects, after any
    mode-2 reload that is due.
    """
    key, chain = credentials.keyAndChain()
    return key, list(chain)


class _ServerEndpoint(DatagramProtocol):
    """
    The server's UDP socket: routes datagrams to connections by destination
    connection ID, creates a connection for each new client Initial, and
    turns each new client stream into a pool connection.
    """

    noisy = False

    def __init__(
        self,
        reactor: Any,
        poolFactory: IProtocolFactory,
        credentials: Any,
        clientIP: str | None = None,
        *,
        log: Logger,
    ) -> None:
        self.log = log
        self.reactor = reactor
        self.poolFactory = poolFactory
        self.credentials = credentials
        self.clientIP = clientIP
        self.alpn = ALPN
        self.byID: dict[bytes, _Connection] = {}
        self.connections: set[_Connection] = set()
        self.closing = False
        # Client stream IDs already seen: all below `_seenBelow`, plus `_seen`.
        self._seenBelow: dict[_Connection, int] = {}
        self._seen: dict[_Connection, set[int]] = {}

    def _send(self, data: bytes, addr: Any) -> None:
        if self.transport is None:
            return
        try:
            self.transport.write(data, addr)
        except (OSError, MessageLengthError) as e:
            self.log.debug("QUIC datagram to {addr} not sent: {error}", addr=addr, error=e)

    def _getHost(self) -> Any:
        return None if self.transport is None else self.transport.getHost()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        from aioquic.buffer import Buffer  # type: ignore[attr-defined]
        from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
        from aioquic.quic.packet import (
            QuicPacketType,
            encode_quic_version_negotiation,
            pull_quic_header,
        )

        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            return
        connection = self.byID.get(header.destination_cid)
        if connection is None:
            if (
                self.closing
                or header.packet_type != QuicPacketType.INITIAL
                or len(data) < SMALLEST_MAX_DATAGRAM_SIZE
            ):
                return
            configuration = self._configuration()
            if header.version not in configuration.supported_versions:
                self._send(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=configuration.supported_versions,
                    ),
                    addr,
                )
                return
            connection = self._accept(configuration, header.destination_cid, addr)
        connection.peerAddress = addr
        connection.datagramReceived(data, addr)

    def _configuration(self) -> QuicConfiguration:
        configuration = _baseConfiguration(False, self.alpn)
        key, chain = _serverKeyAndChain(self.credentials)
        configuration.private_key = key
        configuration.certificate = chain[0]
        configuration.certificate_chain = chain[1:]
        return configuration

    def _accept(self, configuration: QuicConfiguration, cid: bytes, addr: Any) -> _Connection:
        connection = _newConnection(
            lambda quic: _Connection(self.reactor, quic, self._send, self._getHost, addr, self.log),
            self.log,
            configuration=configuration,
            original_destination_connection_id=cid,
        )
        quic = connection.quic
        ids = {cid, quic.host_cid}

        def onConnectionID(issued: bytes, isIssued: bool) -> None:
            if isIssued:
                ids.add(issued)
                self.byID[issued] = connection
            else:
                ids.discard(issued)
                if self.byID.get(issued) is connection:
                    del self.byID[issued]

        def onTerminated(c: _Connection) -> None:
            for each in ids:
                if self.byID.get(each) is connection:
                    del self.byID[each]
            self.connections.discard(connection)
            self._seen.pop(connection, None)
            self._seenBelow.pop(connection, None)
            self.log.debug(
                "QUIC connection from {peer} ended: {reason}", peer=addr, reason=c.closeReason
            )

        def onEstablished(c: _Connection) -> None:
            host = str(addr[0])
            if self.clientIP is not None and host != self.clientIP:
                # What the Go server does (CloseWithError(0, ...)).
                self.log.debug(
                    "QUIC connection from {peer} refused: not the handshake IP", peer=addr
                )
                c.close("unauthorized IP")

        connection.onConnectionID = onConnectionID
        connection.onTerminated = onTerminated
        connection.onEstablished = onEstablished
        connection.onNewStream = self._newStream
        for each in ids:
            self.byID[each] = connection
        self.connections.add(connection)
        self._seen[connection] = set()
        self._seenBelow[connection] = 0
        return connection

    def _isNew(self, connection: _Connection, streamID: int) -> bool:
        """
        Whether C{streamID} (client-initiated, bidirectional) was never seen
        on C{connection}; records it.
        """
        index = streamID // 4
        below = self._seenBelow[connection]
        seen = self._seen[connection]
        if index < below or index in seen:
            return False
        seen.add(index)
        while below in seen:
            seen.discard(below)
            below += 1
        self._seenBelow[connection] = below
        return True

    def _newStream(self, connection: _Connection, streamID: int, data: bytes, end: bool) -> None:
        if streamID % 4 != 0:
            # Only client-initiated bidirectional streams carry pool
            # connections; a client unidirectional one is stopped, anything
            # else ignored.
            if streamID % 4 == 2:
                try:
                    connection.quic.stop_stream(streamID, APPLICATION_ERROR)
                except ValueError:
                    pass
            return
        if not data and not end:
            return  # nothing yet: wait for the announcing byte
        if not self._isNew(connection, streamID):
            return  # a stream we are done with
        stream = connection.streams[streamID] = QuicStream(connection, streamID)
        if not data:
            # Ended before the announcing byte: end ours too.
            stream.received(b"", True)
            return
        peer = stream.getPeer()
        try:
            protocol = self.poolFactory.buildProtocol(peer)
        except Exception:
            self.log.failure("Pool factory failed on a new QUIC stream")
            protocol = None
        if protocol is None:
            stream.abortConnection()
            return
        try:
            stream.attach(protocol)
        except Exception:
            self.log.failure("Pool protocol failed on a new QUIC stream")
            stream.abortConnection()
            return
        # The first byte only announced the stream; the rest is the pool's.
        if len(data) > 1 or end:
            stream.received(data[1:], end)

    def closeAll(self, reason: str) -> None:
        self.closing = True
        for connection in list(self.connections):
            connection.close(reason)

    def stopProtocol(self) -> None:
        # The socket is gone (stopListening, or an error the reactor acted
        # on): nothing can be sent or received any more.
        self.closing = True
        for connection in list(self.connections):
            connection.terminated("UDP socket closed")


@implementer(IListeningPort)
class QuicListeningPort:
    """
    The server's QUIC pool: a UDP port carrying aioquic connections.
    C{stopListening} closes every connection (the peer gets
    CONNECTION_CLOSE, every pool protocol C{connectionLost}) and the port.
    """

    def __init__(self, endpoint: _ServerEndpoint, port: Any) -> None:
        self.endpoint = endpoint
        self.port = port

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        self.endpoint.closeAll("pool closed")
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)

    def getHost(self) -> Any:
        return self.endpoint._getHost()

    @property
    def connections(self) -> int:
        return len(self.endpoint.connections)


class _RefuseAll(Factory):
    """
    The tunnel TCP port's pool factory for QUIC: the pool is on UDP, so
    every TCP pool connection is refused.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> None:
        return None


# -- client ----------------------------------------------------------------------------------------


def _clientMode(tls: Any) -> int:
    """
    The TLS mode from the C{tls} argument of C{connect}: a L{PoolTLS} (mode
    0 counts as 1: QUIC always runs TLS) or, from older callers, an C{int}
    (1 or 2), an object with a C{mode} attribute, or L{None} (mode 1).
    """
    if isinstance(tls, PoolTLS):
        return tls.mode or 1
    mode = getattr(tls, "mode", tls)
    if mode is None or isinstance(mode, bool):
        return 1
    if isinstance(mode, int) and mode in (1, 2):
        return mode
    raise QuicError(
        f"QUIC needs the TLS mode (1 or 2) as its tls argument, not {tls!r}: "
        f"see nodepass.transports.quic"
    )


def _clientConfiguration(mode: int, serverName: str, alpn: str) -> QuicConfiguration:
    configuration = _baseConfiguration(True, alpn)
    if mode == 1:
        # No verification, no SNI (the fingerprint exchange checks the peer).
        configuration.verify_mode = ssl.CERT_NONE
        configuration.server_name = None
    else:
        configuration.verify_mode = ssl.CERT_REQUIRED
        configuration.server_name = serverName
        paths = ssl.get_default_verify_paths()
        if paths.cafile is not None or paths.capath is not None:
            configuration.load_verify_locations(cafile=paths.cafile, capath=paths.capath)
    return configuration


class _ClientSocket(DatagramProtocol):
    """
    The client's UDP socket, connected to the server's address.
    """

    noisy = False

    def __init__(self, client: _Client) -> None:
        self.client = client

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.client.datagramReceived(data)

    def connectionRefused(self) -> None:
        self.client.refused()

    def stopProtocol(self) -> None:
        # Also when the reactor drops the socket on an error event (an ICMP
        # "port unreachable" on a connected UDP socket makes epoll report
        # EPOLLERR, which Twisted treats as the connection lost).
        self.client.socketClosed()


class _Client:
    """
    The client's one QUIC connection to a server address: opened on first
    use, shared by every pool connection to that address, closed when it
    has had no stream for L{IDLE_TIMEOUT} seconds.
    """

    def __init__(
        self,
        reactor: Any,
        address: PoolAddress,
        mode: int,
        handshakeTimeout: float,
        alpn: str = ALPN,
        *,
        log: Logger,
    ) -> None:
        self.log = log
        self.reactor = reactor
        self.description = f"{address.text} (UDP {address.ip}:{address.port})"
        self.server = (address.ip, address.port)
        self._waiters: list[Deferred[_Connection]] = []
        self._stopped: Deferred[None] | None = None
        self._idle: IDelayedCall | None = None
        self.onDead: Callable[[_Client], None] = lambda c: None

        self.socket = _ClientSocket(self)
        interface = "::" if ":" in address.ip else "0.0.0.0"
        self.port = reactor.listenUDP(
            0, self.socket, interface=interface, maxPacketSize=MAX_DATAGRAM
        )
        _growBuffers(self.port, log)
        self.port.connect(address.ip, address.port)
        self.connection = _newConnection(
            lambda quic: _Connection(
                reactor, quic, self._send, self.port.getHost, self.server, log
            ),
            log,
            configuration=_clientConfiguration(mode, address.serverName, alpn),
        )
        self.connection.onEstablished = self._established
        self.connection.onTerminated = self._terminated
        self.connection.onStreamsGone = self._checkIdle
        self._handshakeTimer: IDelayedCall | None = reactor.callLater(
            handshakeTimeout, self._handshakeExpired
        )
        self.connection.quic.connect(self.server, now=reactor.seconds())
        self.connection.flush()

    def _send(self, data: bytes, addr: Any) -> None:
        if self.port is None:
            return
        try:
            self.port.write(data)
        except (OSError, MessageLengthError) as e:
            self.log.debug(
                "QUIC datagram to {where} not sent: {error}", where=self.description, error=e
            )

    def datagramReceived(self, data: bytes) -> None:
        self.connection.datagramReceived(data, self.server)

    def refused(self) -> None:
        if not self.connection.established:
            self.connection.terminated("connection refused (nothing listens on the UDP port)")

    def socketClosed(self) -> None:
        if self.port is None:
            return  # we closed it
        self.port = None
        self._stopped = succeed(None)
        if not self.connection.established:
            reason = "connection refused (nothing listens on the UDP port)"
        else:
            reason = "UDP socket error"
        self.connection.terminated(reason)

    def _handshakeExpired(self) -> None:
        self._handshakeTimer = None
        if not self.connection.established:
            self.connection.close("handshake timeout")

    def _established(self, connection: _Connection) -> None:
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(connection)
        self._checkIdle()

    @property
    def dead(self) -> bool:
        return self.connection.dead

    def _terminated(self, connection: _Connection) -> None:
        for call in (self._handshakeTimer, self._idle):
            if call is not None and call.active():
                call.cancel()
        self._handshakeTimer = self._idle = None
        reason = connection.closeReason
        if connection.established:
            self.log.debug(
                "QUIC connection to {where} ended: {reason}", where=self.description, reason=reason
            )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(QuicError(f"QUIC connection to {self.description} failed: {reason}"))
        self.onDead(self)
        port, self.port = self.port, None
        if port is not None:
            self._stopped = maybeDeferred(port.stopListening)

    def stopped(self) -> Deferred[None]:
        """
        Fires once the UDP socket is closed.
        """
        d: Deferred[None] = Deferred()
        if self._stopped is None:
            d.callback(None)
        else:
            self._stopped.addBoth(lambda r: d.callback(None))
        return d

    def close(self, reason: str = "closed") -> None:
        self.connection.close(reason)

    # -- streams ---------------------------------------------------------------------------

    def whenEstablished(self) -> Deferred[_Connection]:
        if self.connection.established:
            return succeed(self.connection)
        if self.dead:
            return fail(QuicError(f"QUIC connection to {self.description} is closed"))

        def cancel(d: Deferred[_Connection]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        waiter: Deferred[_Connection] = Deferred(cancel)
        self._waiters.append(waiter)
        return waiter

    def openStream(self, protocol: IProtocol) -> IProtocol:
        """
        Open a stream, write the announcing byte, connect C{protocol}.
        """
        connection = self.connection
        if self.dead or connection.dead:
            raise QuicError(f"QUIC connection to {self.description} is closed")
        stream = connection.openStream()
        connection.quic.send_stream_data(stream.streamID, b"\x00")
        connection.flushSoon()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        try:
            stream.attach(protocol)
        except Exception:
            stream.abortConnection()
            raise
        return protocol

    def _checkIdle(self) -> None:
        """
        Schedule closing the connection if it carries no stream.
        """
        if self.dead or self.connection.streams or self._idle is not None:
            return
        self._idle = self.reactor.callLater(IDLE_TIMEOUT, self._idleExpired)

    def _idleExpired(self) -> None:
        self._idle = None
        if not self.connection.streams:
            self.close("no pool connections")
        else:
            self._checkIdle()


# -- the plugin ------------------------------------------------------------------------------------


@implementer(
    IPlugin,
    ILoggingTransport,
    IPoolTLSTransport,
    IListeningPoolTransport,
    ICredentialTransport,
    IALPNTransport,
    IDisconnectingTransport,
)
class QuicTransport:
    """
    Pool connections are streams of one QUIC connection to the tunnel
    port's UDP twin, always inside TLS 1.3 with ALPN ``np-quic``.

    Unlike the TCP-based transports, the server side is L{listenPool}
    (L{IListeningPoolTransport}) and C{serverFactory} refuses TCP pool
    connections.  It takes a L{PoolTLS} (L{IPoolTLSTransport}) and reads the
    server's credentials and the client's mode there; for older callers it
    also takes, as L{ICredentialTransport} and C{wantsCredentials} say, the
    L{nodepass.tls.ServerCredentials} themselves in L{listenPool} and the TLS
    mode (an C{int}) in L{connect}.

    @ivar log: what its connections log through (by default, a logger
        publishing to the global log publisher; see L{withLogger}).
    """

    name = "quic"
    typeCode = "1"
    halfClose = False
    minimumTLS = 1
    readyAfterHandshake = False
    wantsCredentials = True
    alpn = [ALPN.encode("ascii")]

    def __init__(self, log: Logger | None = None) -> None:
        self.log = log if log is not None else defaultLogger()
        self._clients: dict[tuple[Any, ...], _Client] = {}

    def withLogger(self, log: Logger) -> QuicTransport:
        """
        A transport of its own, with its own client connections, logging through C{log}.
        """
        return QuicTransport(log)

    def serverFactory(
        self, reactor: Any, poolFactory: IProtocolFactory, tls: Any
    ) -> IProtocolFactory:
        """
        The tunnel TCP port carries no QUIC pool: refuse every connection.
        """
        return _RefuseAll()

    def listenPool(
        self,
        reactor: Any,
        address: tuple[str, int],
        poolFactory: IProtocolFactory,
        tls: Any,
        clientIP: str | None = None,
    ) -> IListeningPort:
        """
        Serve the pool with QUIC on the UDP port C{address} (host, port).

        @param poolFactory: builds the pool protocol for each new stream
            (given the client's UDP address).
        @param tls: a L{PoolTLS} carrying the L{nodepass.tls.ServerCredentials}
            to present (read again for each new QUIC connection, so mode-2
            reloads apply), or, from older callers, the credentials themselves.
        @param clientIP: if given, a QUIC connection from another IP is
            closed once established (application error 0, reason
            C{unauthorized IP}), as the Go server does.  (The pool also
            checks each stream's C{getPeer()}.)
        @raise twisted.internet.error.CannotListenError: the port is taken.
        """
        credentials = tls.credentials if isinstance(tls, PoolTLS) else tls
        if credentials is None:
            raise QuicError("the QUIC pool needs server credentials (tls=1 or 2)")
        host, portNumber = address
        endpoint = _ServerEndpoint(reactor, poolFactory, credentials, clientIP, log=self.log)
        port = reactor.listenUDP(portNumber, endpoint, interface=host, maxPacketSize=MAX_DATAGRAM)
        _growBuffers(port, self.log)
        return QuicListeningPort(endpoint, port)

    def connect(
        self, reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        """
        Open one pool connection: a new stream on the shared QUIC connection
        to C{address} (made, or made again, as needed).

        @param tls: a L{PoolTLS} whose mode is C{1} (no verification, no SNI)
            or C{2} (system CAs, server name C{address.serverName}); from
            older callers, the mode itself, or an object with a C{mode}
            attribute.
        """
        try:
            mode = _clientMode(tls)
            ipaddress.ip_address(address.ip)
        except (QuicError, ValueError) as e:
            return fail(QuicError(str(e)))
        key = (reactor, address.ip, address.port, mode, address.serverName if mode == 2 else "")
        client = self._clients.get(key)
        if client is None or client.dead:
            try:
                client = _Client(reactor, address, mode, timeout, log=self.log)
            except Exception as e:
                return fail(QuicError(f"cannot open QUIC to {address.text}: {e}"))
            self._clients[key] = client

            def forget(dead: _Client, key: tuple[Any, ...] = key) -> None:
                if self._clients.get(key) is dead:
                    del self._clients[key]

            client.onDead = forget
        established = client.whenEstablished()
        established.addTimeout(timeout, reactor)

        def opened(connection: _Connection) -> IProtocol:
            assert client is not None
            return client.openStream(protocol)

        def failed(reason: Failure) -> Failure:
            if reason.check(CancelledError, DeferredTimeout):
                return Failure(
                    QuicError(f"QUIC connection to {address.text} not ready after {timeout} s")
                )
            return reason

        result: Deferred[IProtocol] = established.addCallbacks(opened, failed)
        return result

    def disconnectAll(self, address: PoolAddress | None = None) -> Deferred[None]:
        """
        Close the client QUIC connections (sending CONNECTION_CLOSE) to
        C{address}, or all of them; fires once their UDP sockets are closed.
        For the end of a client session (else an unused connection closes
        itself after L{IDLE_TIMEOUT} without streams) or of a test.
        """
        from twisted.internet.defer import gatherResults

        clients = []
        for key, client in list(self._clients.items()):
            if address is None or key[1:3] == (address.ip, address.port):
                clients.append(client)
                del self._clients[key]
        for client in clients:
            client.close("client closing")
        return gatherResults([client.stopped() for client in clients]).addCallback(lambda _: None)


quic = QuicTransport()
