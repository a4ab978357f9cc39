"""The built-in WebSocket pool transport (``type=2``, dataplane spec §9.2, §15.7).

Each pool connection is one WebSocket connection to the tunnel port: plain
``ws://`` or, when the tunnel runs TLS, ``wss://``.  The pool's byte stream
travels in binary messages, one message (in one unfragmented frame) per
write; the receiving side joins the payloads back into a stream.  A text
message is a protocol error, and closing is a close handshake with status
1000.  There is no half-close, no compression, no subprotocol and no ping.

The framing is autobahn's.  This module stays import-light (it is loaded by
the plugin scan): autobahn is only imported when a factory or a connection
is actually made.
"""

from __future__ import annotations

import base64
import os
from functools import cache
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
)
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass.errors import NodePassError
from nodepass.log import defaultLogger
from nodepass.transports.interface import (
    ILoggingTransport,
    IPoolTLSTransport,
    IUncheckedPeerTransport,
    PoolAddress,
    creatorOf,
)
from nodepass.transports.substream import Substream

__all__ = ["WebSocketError", "WebSocketTransport", "ws"]

#: The largest message this side sends: a longer write is split (the stream
#: is the same; Go's peers write far smaller chunks anyway).
MAX_SEND = 1 << 20

#: The largest frame and message accepted from the peer.
MAX_RECEIVE = 4 << 20

#: How long a server waits for the client's upgrade request (Go's
#: ``ReadHeaderTimeout``).
HANDSHAKE_TIMEOUT = 10.0

#: How long a closing side waits for the close handshake and the end of the
#: TCP connection before it drops the connection (Go's coder/websocket waits 5 s).
CLOSE_TIMEOUT = 5.0

#: RFC 6455 close status codes used here.
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003


class WebSocketError(NodePassError):
    """
    A WebSocket pool connection could not be opened, or broke the protocol.
    """


class MessageStream(Substream):
    """
    The transport a pool protocol sees on a WebSocket connection: writes
    become binary messages.  Flow control is the TCP (or TLS) connection's:
    a producer registered here is registered there, and pausing this
    transport stops reading that connection (no buffer, so no watermarks,
    of its own).

    @ivar channel: the autobahn protocol carrying the stream.
    """

    def __init__(self, channel: Any, protocol: IProtocol | None = None) -> None:
        super().__init__(protocol)
        self.channel = channel

    # -- Substream ----------------------------------------------------------

    @property
    def log(self) -> Logger:
        return self.channel.factory.poolLog  # type: ignore[no-any-return]

    def describe(self) -> str:
        return "WebSocket connection"

    def carrier(self) -> Any:
        return self.channel.transport

    def send(self, data: bytes) -> None:
        if len(data) <= MAX_SEND:
            self.channel.sendBinary(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), MAX_SEND):
            self.channel.sendBinary(bytes(view[start : start + MAX_SEND]))

    def endOutput(self) -> None:
        """
        Close with status 1000 after the data already written.
        """
        self.channel.closeNormally()

    def reset(self) -> None:
        self.channel.abortTransport()

    # -- IConsumer: what writes to us is paused by the TCP write buffer -----

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.channel.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.channel.transport.unregisterProducer()

    # -- IPushProducer: stop reading the TCP connection ---------------------

    def pauseProducing(self) -> None:
        self.channel.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.channel.transport.resumeProducing()


def _options(factory: Any) -> None:
    """
    The protocol options both ends share: no fragmentation (one write, one
    frame), bounded frames, no autobahn timers (they would run on txaio's
    global loop; ours use the injected reactor), no pings.
    """
    factory.setProtocolOptions(
        autoFragmentSize=0,
        maxFramePayloadSize=MAX_RECEIVE,
        maxMessagePayloadSize=MAX_RECEIVE,
        failByDrop=False,
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        autoPingInterval=0,
        perMessageCompressionAccept=lambda offers: None,
    )


@cache
def _classes() -> tuple[type[Any], type[Any], type[Any], type[Any]]:
    """
    The autobahn-based classes, built on first use so that importing this
    module does not import autobahn.
    """
    from autobahn.twisted.websocket import (
        WebSocketClientFactory,
        WebSocketClientProtocol,
        WebSocketServerFactory,
        WebSocketServerProtocol,
    )
    from autobahn.websocket.protocol import WebSocketProtocol

    OPEN = WebSocketProtocol.STATE_OPEN
    CLOSED = WebSocketProtocol.STATE_CLOSED

    class ChannelMixin:
        """
        What the server and client channels share: carry one pool protocol
        in binary messages.  They log through their factory's C{poolLog}
        (autobahn's own C{log} is its txaio logger).
        """

        factory: Any
        transport: Any
        state: Any
        stream: MessageStream | None = None
        failure: Failure | None = None
        _closeTimer: IDelayedCall | None = None

        if TYPE_CHECKING:
            # Provided by autobahn's protocol classes (declared for mypy only:
            # defined here, they would hide autobahn's).
            def sendMessage(self, payload: bytes, isBinary: bool = False) -> None: ...
            def sendClose(self, code: int | None = None, reason: str | None = None) -> None: ...

        @property
        def closed(self) -> bool:
            return bool(self.state == CLOSED)

        def sendBinary(self, data: bytes) -> None:
            if self.state == OPEN:
                self.sendMessage(data, isBinary=True)

        def closeNormally(self) -> None:
            if self.state == OPEN:
                self.sendClose(CLOSE_NORMAL)
            elif self.state != CLOSED:
                self._closeSoon()

        def _closeSoon(self) -> None:
            """
            Drop the connection if the close handshake and the TCP close do
            not complete in time.
            """
            if self._closeTimer is None:
                self._closeTimer = self.factory.reactor.callLater(CLOSE_TIMEOUT, self._closeExpired)

        def _closeExpired(self) -> None:
            self._closeTimer = None
            self.factory.poolLog.debug(
                "WebSocket close handshake not done in time: dropping the connection"
            )
            self.abortTransport()

        def abortTransport(self) -> None:
            """
            Drop the TCP (or TLS) connection at once.  (autobahn's
            C{dropConnection} would log a warning for every deliberate
            abort.)
            """
            transport = self.transport
            if transport is not None:
                transport.abortConnection()

        def attach(self, pool: IProtocol) -> bool:
            """
            Connect C{pool} to the stream; C{False} (and the connection
            dropped) when it raised.
            """
            self.stream = MessageStream(self, pool)
            try:
                pool.makeConnection(self.stream)
            except Exception:
                # autobahn calls onOpen from a Deferred callback: an error
                # would surface only as "Unhandled error in Deferred".
                self.factory.poolLog.failure("Pool protocol failed on a new WebSocket connection")
                self.stream.protocol = None
                self.abortTransport()
                return False
            return True

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            if self.failure is not None:
                return
            if not isBinary:
                self.protocolError("text message on a binary stream")
                return
            if self.stream is not None:
                self.stream.deliver(payload)

        def protocolError(self, reason: str) -> None:
            self.factory.poolLog.debug("WebSocket pool connection failed: {reason}", reason=reason)
            self.failure = Failure(WebSocketError(reason))
            if self.stream is not None:
                self.stream.disconnecting = True
            if self.state == OPEN:
                self.sendCloseFrame(CLOSE_UNSUPPORTED_DATA, reason.encode("utf-8"))
            else:
                self.abortTransport()

        def sendCloseFrame(
            self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
        ) -> None:
            # Whoever starts the close handshake (us, the peer, or autobahn
            # on a protocol violation), the TCP connection should end soon
            # after: do not wait for it forever.
            super().sendCloseFrame(code, reasonUtf8, isReply)  # type: ignore[misc]
            self._closeSoon()

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            if self._closeTimer is not None:
                if self._closeTimer.active():
                    self._closeTimer.cancel()
                self._closeTimer = None
            stream = self.stream
            if stream is None or stream.closed:
                return
            if self.failure is not None:
                why = self.failure
            elif wasClean and code == CLOSE_NORMAL:
                why = Failure(ConnectionDone("WebSocket closed with status 1000"))
            elif wasClean:
                why = Failure(ConnectionLost(f"WebSocket closed with status {code}: {reason}"))
            else:
                why = Failure(ConnectionLost(f"WebSocket connection lost: {reason}"))
            stream.finish(why)

    class ServerChannel(ChannelMixin, WebSocketServerProtocol):  # type: ignore[misc]
        """
        One accepted pool connection: once the upgrade is done, a pool
        protocol from the factory's C{poolFactory} writes into it.
        """

        _handshakeTimer: IDelayedCall | None = None

        def connectionMade(self) -> None:
            super().connectionMade()
            self._handshakeTimer = self.factory.reactor.callLater(
                HANDSHAKE_TIMEOUT, self._handshakeExpired
            )

        def _handshakeExpired(self) -> None:
            self._handshakeTimer = None
            self.factory.poolLog.debug("WebSocket upgrade request not received in time")
            self.abortTransport()

        def _stopHandshakeTimer(self) -> None:
            if self._handshakeTimer is not None:
                if self._handshakeTimer.active():
                    self._handshakeTimer.cancel()
                self._handshakeTimer = None

        def onConnect(self, request: Any) -> None:
            # Any path, any Origin, no subprotocol.
            return None

        def onOpen(self) -> None:
            self._stopHandshakeTimer()
            try:
                pool = self.factory.poolFactory.buildProtocol(self.transport.getPeer())
            except Exception:
                self.factory.poolLog.failure("Pool factory failed on a new WebSocket connection")
                pool = None
            if pool is None:
                self.closeNormally()
                return
            self.attach(pool)

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            self._stopHandshakeTimer()
            super().onClose(wasClean, code, reason)

    class ClientChannel(ChannelMixin, WebSocketClientProtocol):  # type: ignore[misc]
        """
        One dialled pool connection: sends the upgrade request the Go client
        sends, then hands the stream to the dial's protocol.
        """

        def startHandshake(self) -> None:
            # autobahn's own request always writes "Host: host:port"; the Go
            # client (npws, coder/websocket) sends the bare tunnel host.
            # processHandshake checks the answer against websocket_key.
            key = base64.b64encode(os.urandom(16))
            self.websocket_key = key
            request = (
                f"GET / HTTP/1.1\r\n"
                f"Host: {self.factory.hostHeader}\r\n"
                f"Upgrade: websocket\r\n"
                f"Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key.decode('ascii')}\r\n"
                f"Sec-WebSocket-Version: 13\r\n"
                f"\r\n"
            ).encode("ascii")
            self.http_request_data = request
            self.sendData(request)

        def connectionMade(self) -> None:
            self.factory.dial.channel = self
            super().connectionMade()

        def onOpen(self) -> None:
            self.factory.dial.opened(self)

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            super().onClose(wasClean, code, reason)
            self.factory.dial.closed(reason)

    class ServerFactory(WebSocketServerFactory):  # type: ignore[misc]
        protocol = ServerChannel
        noisy = False

        def __init__(self, reactor: Any, poolFactory: IProtocolFactory, poolLog: Logger) -> None:
            super().__init__(server=None, reactor=reactor)
            self.poolFactory = poolFactory
            self.poolLog = poolLog
            self.setProtocolOptions(webStatus=False, requireMaskedClientFrames=True)
            _options(self)

    class ClientFactory(WebSocketClientFactory):  # type: ignore[misc]
        protocol = ClientChannel
        noisy = False

        def __init__(self, reactor: Any, url: str, hostHeader: str, dial: _Dial) -> None:
            super().__init__(url, reactor=reactor)
            self.hostHeader = hostHeader
            self.dial = dial
            self.poolLog = dial.log
            self.setProtocolOptions(maskClientFrames=True, perMessageCompressionOffers=[])
            _options(self)

    return ServerFactory, ClientFactory, ServerChannel, ClientChannel


class _Dial:
    """
    One client connection attempt: TCP (and TLS) connect, then the upgrade,
    all within C{timeout}; fires C{result} with the pool protocol.
    """

    def __init__(self, reactor: Any, protocol: IProtocol, description: str, log: Logger) -> None:
        self.log = log
        self.reactor = reactor
        self.protocol = protocol
        self.description = description
        self.connecting: Deferred[Any] | None = None
        self.channel: Any = None
        self.result: Deferred[IProtocol] = Deferred(self._cancel)

    def start(self, endpoint: Any, factory: Any, timeout: float) -> Deferred[IProtocol]:
        self.result.addTimeout(timeout, self.reactor, onTimeoutCancel=self._timedOut)
        connecting = self.connecting = endpoint.connect(factory)
        connecting.addCallbacks(self._connected, self._failed)
        return self.result

    def _connected(self, connection: Any) -> None:
        self.connecting = None

    def _failed(self, failure: Failure) -> None:
        self.connecting = None
        if not self.result.called:
            self.result.errback(failure)
        elif not failure.check(CancelledError):
            self.log.failure("WebSocket dial to {where} failed", failure, where=self.description)

    def opened(self, channel: Any) -> None:
        if self.result.called:
            channel.abortTransport()
            return
        if channel.attach(self.protocol):
            self.result.callback(self.protocol)
        else:
            self.result.errback(WebSocketError(f"pool protocol failed on {self.description}"))

    def closed(self, reason: str | None) -> None:
        if not self.result.called:
            self.result.errback(
                WebSocketError(f"WebSocket upgrade to {self.description} failed: {reason}")
            )

    def _cancel(self, result: Deferred[IProtocol]) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.channel is not None:
            self.channel.abortTransport()

    def _timedOut(self, result: Any, timeout: float | None) -> Failure:
        return Failure(
            WebSocketError(
                f"WebSocket pool connection to {self.description} not open after {timeout} s"
            )
        )


def hostHeader(address: PoolAddress) -> str:
    """
    The C{Host} header a Go client sends: the tunnel host from the URL
    without the port, whatever the port (npws passes the host part of the
    tunnel address as coder/websocket's C{DialOptions.Host}, which becomes
    the request's C{Host}).  Like Go's, an IPv6 literal goes out bare, without
    brackets.
    """
    return address.host


@implementer(IPlugin, ILoggingTransport, IPoolTLSTransport, IUncheckedPeerTransport)
class WebSocketTransport:
    """
    Pool connections are WebSocket connections to the tunnel port (inside
    TLS when the tunnel runs TLS), carrying the stream in binary messages.
    The server takes them from any address (L{IUncheckedPeerTransport}, as
    the reference does for WebSocket).  C{tls} is a L{PoolTLS
    <nodepass.transports.interface.PoolTLS>} or, from older callers, a
    pyOpenSSL creator or L{None}.

    @ivar log: what its connections log through (by default, a logger
        publishing to the global log publisher; see L{withLogger}).
    """

    name = "ws"
    typeCode = "2"
    halfClose = False
    minimumTLS = 0
    readyAfterHandshake = False

    def __init__(self, log: Logger | None = None) -> None:
        self.log = log if log is not None else defaultLogger()

    def withLogger(self, log: Logger) -> WebSocketTransport:
        """
        A transport of its own, logging through C{log}.
        """
        return WebSocketTransport(log)

    def serverFactory(
        self, reactor: Any, poolFactory: IProtocolFactory, tls: Any
    ) -> IProtocolFactory:
        ServerFactory = _classes()[0]
        factory: IProtocolFactory = ServerFactory(reactor, poolFactory, self.log)
        creator = creatorOf(tls)
        if creator is None:
            return factory
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return TLSMemoryBIOFactory(creator, False, factory, clock=reactor)

    def connect(
        self, reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint

        ClientFactory = _classes()[1]
        creator = creatorOf(tls)
        scheme = "ws" if creator is None else "wss"
        url = f"{scheme}://{address.text}/"
        dial = _Dial(reactor, protocol, url, self.log)
        factory: IProtocolFactory = ClientFactory(reactor, url, hostHeader(address), dial)
        if creator is not None:
            # What wrapClientTLS does, but with TLS's write timer on our reactor.
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(creator, True, factory, clock=reactor)
        kind = TCP6ClientEndpoint if ":" in address.ip else TCP4ClientEndpoint
        endpoint = kind(reactor, address.ip, address.port, timeout)
        return dial.start(endpoint, factory, timeout)


ws = WebSocketTransport()
