"""
TLS for pool connections over the standard library's C{ssl} module (a memory-BIO
C{SSLObject}), in place of Twisted's L{TLSMemoryBIOProtocol} over pyOpenSSL.

Why: a pool connection is a bulk byte pipe, and most of what the Twisted layer costs there is
per-call Python work around the crypto, not the crypto itself.  Twisted cuts every write into
16 KiB pieces and reads the send BIO after each (a new cffi buffer and a copy per record),
aggregates small writes until the next reactor iteration, pulls every received record out
with its own call (ending each burst on a raised C{WantReadError}), and queues the ciphertext
behind the TCP transport's buffer, whose size pauses and resumes the relay's producer on every
chunk.  Here a write is one C{SSLObject.write} call, whatever its size, and one read of the
outgoing BIO; a received chunk becomes one delivered string however many records it holds;
ciphertext goes straight to the socket when nothing is queued ahead of it
(L{nodepass._compat.fasttls.sender}).  A lone small write (a request, an echo) goes out at
once, where Twisted's layer waits for the next reactor turn; small writes that follow one
another within L{_BURST} (datagrams read in one turn) are sent together at the end of the
turn, as one record.  The wire is the same TLS 1.3 (same certificates, same checks), so either
end may run either implementation, and the Go reference is a peer as before.

What stays as in Twisted's layer, on purpose:
  - the transport's interfaces are copied onto the protocol and unknown attributes pass down to
    the TCP transport (so C{loseWriteConnection} shuts the socket under TLS, as before, once
    any coalesced small writes are out);
  - writes made before the handshake completes are kept and sent after it, pausing a registered
    producer meanwhile;
  - C{loseConnection} sends a close_notify once buffered writes are out and no producer is
    registered, then closes the TCP connection when the peer's close_notify arrives (or aborts
    at once before the handshake completes); a close_notify from the peer is answered and ends
    the connection;
  - a TLS failure (handshake, verification, a bad record) ends the connection and is the
    reason the wrapped protocol's C{connectionLost} gets; an EOF that violates TLS is reported
    as L{ConnectionLost};
  - the wrapped protocol learns of the handshake through L{IHandshakeListener}.

C{getPeerCertificate()} returns the peer's leaf as a C{cryptography} certificate (L{None}
before the handshake); L{nodepass.tls.certificateFingerprint} accepts it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "FastTLSClientEndpoint",
    "FastTLSFactory",
    "FastTLSProtocol",
    "IStdlibTLS",
    "StdlibTLS",
]

#: The most plaintext one TLS record carries; each C{SSLObject.read} returns one record.
_RECORD = 16384

#: Writes smaller than this (in bytes) that follow one another within L{_BURST} seconds are
#: coalesced until the end of the reactor turn: one record and one send for a burst of small
#: writes (datagrams), while a lone small write (a request, an echo) still goes out at once.
_SMALL = 16384
_BURST = 0.0001


@frozen
class StdlibTLS:
    """
    What one new connection needs: the context, the server name a client checks and sends as
    SNI (L{None}: none), and the certificate this end presents (a server's; for
    L{nodepass.tls.localFingerprint}).
    """

    context: ssl.SSLContext
    serverHostname: str | None = None
    certificate: x509.Certificate | None = None


class IStdlibTLS(Interface):
    """
    A TLS configuration that the standard library's C{ssl} module can serve: provided by the
    connection creators of L{nodepass.tls} that have a stdlib equivalent.
    """

    def stdlibTLS() -> StdlibTLS:
        """
        The context for a new connection (a server's: of the certificate current now).
        """


@implementer(IPushProducer)
class _Membrane:
    """
    The producer registered with the TCP transport on behalf of the wrapped protocol's: pauses
    and resumes from the transport and from this layer are merged, so the real producer sees
    each change once.
    """

    def __init__(self, producer: IPushProducer) -> None:
        self.producer = producer
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.producer.stopProducing()


def _isEOF(error: BaseException) -> bool:
    return isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError)


class FastTLSProtocol(ProtocolWrapper):
    """
    TLS over the connection's transport through an C{ssl.SSLObject}; the transport of the
    wrapped protocol.  Made by L{FastTLSFactory}.
    """

    factory: FastTLSFactory
    _tls: ssl.SSLObject | None = None
    _handshakeDone = False
    _lost = False
    _aborted = False
    _reason: Failure | None = None
    _producer: _Membrane | None = None
    _peerCertificate: x509.Certificate | None = None
    _certificate: x509.Certificate | None = None
    #: Small writes waiting for the end of this reactor turn (L{None}: no burst going on).
    _batch: list[bytes] | None = None
    _batchSize = 0
    _endOfTurn: IDelayedCall | None = None
    _lastSmall = float("-inf")

    def __init__(self, factory: FastTLSFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._pending: list[bytes] = []
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._send: Callable[[bytes], object] = self._queue

    # -- the connection --------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self._send = self.factory.sender(transport)
        refused: Failure | None = None
        try:
            settings = self.factory.source.stdlibTLS()
            self._certificate = settings.certificate
            self._tls = settings.context.wrap_bio(
                self._incoming,
                self._outgoing,
                server_side=not self.factory.isClient,
                server_hostname=settings.serverHostname if self.factory.isClient else None,
            )
        except (ValueError, ssl.SSLError):
            # A server name the ssl module refuses, say: this connection cannot start.
            refused = Failure()
        super().makeConnection(transport)
        if refused is not None:
            self._closedTLS(refused)
            return
        self._handshake()

    def _queue(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def _flush(self) -> None:
        """
        Hand what TLS wrote to its outgoing BIO to the socket.
        """
        if self._outgoing.pending:
            self._send(self._outgoing.read())

    def _handshake(self) -> None:
        if self._aborted or self._lost:
            return
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError:
            self._failed(Failure())
            return
        self._handshakeDone = True
        self._flush()
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()
        if self._pending and not self._lost:
            self._unbuffer()

    def dataReceived(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self._handshakeDone:
            self._handshake()
            if not self._handshakeDone:
                return
        self._receive()

    def _receive(self, final: bool = False) -> None:
        """
        Decrypt everything the incoming BIO holds and deliver it as one string.  C{final}: the
        BIO is at its end; read at least once, to learn whether the end was a clean one.
        """
        tls = self._tls
        assert tls is not None
        incoming = self._incoming
        parts = []
        closed = False
        error: Failure | None = None
        while final or incoming.pending or tls.pending():
            final = False
            try:
                chunk = tls.read(_RECORD)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = True
                break
            except ssl.SSLError:
                error = Failure()
                break
            if not chunk:
                # read() answers b"" once the peer's close_notify is in.
                closed = True
                break
            parts.append(chunk)
        if parts and not self._aborted and not self._lost:
            self.wrappedProtocol.dataReceived(parts[0] if len(parts) == 1 else b"".join(parts))
        if error is not None:
            self._failed(error)
        elif closed:
            self._shutdownTLS()
            self._closedTLS(None)
        else:
            # Reading may have produced TLS messages of its own to send (key updates).
            self._flush()

    def _shutdownTLS(self) -> None:
        """
        Send our close_notify (or answer the peer's); close the TCP connection once both have
        been sent.
        """
        tls = self._tls
        if tls is None:
            return
        self._sendBatch()
        try:
            tls.unwrap()
        except ssl.SSLError:
            # SSLWantReadError: ours is out, the peer's has not come yet.  Others: mid-handshake.
            done = False
        else:
            done = True
        self._flush()
        if done:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _closedTLS(self, reason: Failure | None) -> None:
        """
        The TLS connection is over (cleanly: C{reason} is L{None}, the TCP transport's reason
        will be reported).  Nothing more is read or written through TLS.
        """
        if reason is not None and reason.value is not None and _isEOF(reason.value):
            reason = Failure(ConnectionLost())
        if self._reason is None:
            self._reason = reason
        self._lost = True
        self._dropBatch()
        self._flush()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _failed(self, reason: Failure) -> None:
        self._closedTLS(reason)

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:
        if not self._lost:
            # Whatever arrived before the end still counts.
            self._incoming.write_eof()
            if self._handshakeDone and self._tls is not None:
                self._receive(final=True)
            self._lost = True
        reason = self._reason or reason
        self._reason = None
        self.connected = False
        self._pending = []
        self._dropBatch()
        super().connectionLost(reason)

    # -- the wrapped protocol's transport --------------------------------------------------

    def write(self, data: bytes) -> None:
        # After loseConnection, writes only go on while a producer is registered (as Twisted).
        if self.disconnecting and self._producer is None:
            return
        self._write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def _write(self, data: bytes) -> None:
        if self._lost or not data:
            return
        if not self._handshakeDone:
            self._pending.append(data)
            if self._producer is not None:
                self._producer.pauseProducing()
            return
        clock = self.factory.clock
        if clock is not None and len(data) < _SMALL:
            now = clock.seconds()
            burst = now - self._lastSmall < _BURST
            self._lastSmall = now
            if self._batch is not None:
                self._batch.append(data)
                self._batchSize += len(data)
                if self._batchSize >= _SMALL:
                    self._sendBatch()
                return
            if burst:
                self._batch = [data]
                self._batchSize = len(data)
                self._endOfTurn = clock.callLater(0, self._turnOver)
                return
        elif self._batch:
            self._sendBatch()
        self._encrypt(data)

    def _encrypt(self, data: bytes) -> None:
        assert self._tls is not None
        try:
            self._tls.write(data)
        except ssl.SSLError:
            self._failed(Failure())
            return
        self._flush()

    def _sendBatch(self) -> None:
        """
        Send the small writes of this turn so far, as one string (the burst goes on).
        """
        batch = self._batch
        if batch and not self._lost:
            self._batch = []
            self._batchSize = 0
            self._encrypt(batch[0] if len(batch) == 1 else b"".join(batch))

    def _turnOver(self) -> None:
        self._endOfTurn = None
        self._sendBatch()
        self._batch = None

    def _dropBatch(self) -> None:
        if self._endOfTurn is not None and self._endOfTurn.active():
            self._endOfTurn.cancel()
        self._endOfTurn = None
        self._batch = None

    def _unbuffer(self) -> None:
        pending, self._pending = self._pending, []
        for data in pending:
            self._write(data)
        if self._producer is not None:
            self._producer.resumeProducing()
        elif self.disconnecting:
            self._shutdownTLS()

    def loseConnection(self) -> None:
        if self.disconnecting or not self.connected:
            return
        if not self._handshakeDone and not self._pending:
            # Nothing to say yet and no way to say goodbye before the handshake is done.
            self.abortConnection()
            return
        self.disconnecting = True
        if not self._pending and self._producer is None:
            self._shutdownTLS()

    def loseWriteConnection(self) -> None:
        """
        Shut the TCP connection's sending side (under TLS, as Twisted's layer does), after
        any small writes still waiting for the end of the turn.
        """
        self._sendBatch()
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def abortConnection(self) -> None:
        self._aborted = True
        self.disconnecting = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._lost:
            producer.stopProducing()
            return
        if not streaming:
            # The TCP transport pulls from it directly: writes reach the socket's buffer
            # synchronously once the handshake is done.
            self.transport.registerProducer(producer, False)  # type: ignore[union-attr]
            self._producer = _Membrane(producer)
            return
        membrane = _Membrane(producer)
        self.transport.registerProducer(membrane, True)  # type: ignore[union-attr]
        self._producer = membrane
        if self._pending:
            membrane.pauseProducing()

    def unregisterProducer(self) -> None:
        if self._producer is None:
            return
        self._producer = None
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        if self.disconnecting and not self._pending:
            self._shutdownTLS()

    # -- TLS details -----------------------------------------------------------------------

    def getPeerCertificate(self) -> x509.Certificate | None:
        """
        The peer's leaf certificate, or L{None} before the handshake (or without one).
        """
        if self._peerCertificate is None and self._handshakeDone and self._tls is not None:
            try:
                der = self._tls.getpeercert(binary_form=True)
            except ValueError:
                return None
            if der:
                from cryptography.x509 import load_der_x509_certificate

                self._peerCertificate = load_der_x509_certificate(der)
        return self._peerCertificate

    def getHostCertificate(self) -> x509.Certificate | None:
        """
        The certificate this end presents (a server's), or L{None}.
        """
        return self._certificate

    def getHandle(self) -> ssl.SSLObject | None:
        """
        The C{ssl.SSLObject} of this connection (version, cipher, ALPN).
        """
        return self._tls

    @property
    def negotiatedProtocol(self) -> bytes | None:
        if self._tls is None:
            return None
        selected = self._tls.selected_alpn_protocol()
        return selected.encode("ascii") if selected else None


class FastTLSFactory(WrappingFactory):  # type: ignore[type-arg]
    """
    Wraps C{wrappedFactory}'s connections in L{FastTLSProtocol}: the client or server end of
    TLS as configured by C{source}.

    @param sender: how ciphertext is written to a TCP transport (by default its C{write}).
    @param clock: the reactor's clock, for coalescing bursts of small writes; without one,
        every write is sent on its own.
    """

    protocol = FastTLSProtocol
    noisy = False

    def __init__(
        self,
        source: IStdlibTLS,
        isClient: bool,
        wrappedFactory: IProtocolFactory,
        sender: Callable[[Any], Callable[[bytes], object]] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(wrappedFactory)
        self.source = source
        self.isClient = isClient
        self.sender = sender if sender is not None else _plainSender
        self.clock = clock

    def logPrefix(self) -> str:
        wrapped = self.wrappedFactory
        prefix = getattr(wrapped, "logPrefix", None)
        name = prefix() if prefix is not None else wrapped.__class__.__name__
        return f"{name} (TLS)"


def _plainSender(transport: Any) -> Callable[[bytes], object]:
    return transport.write  # type: ignore[no-any-return]


@implementer(IStreamClientEndpoint)
class FastTLSClientEndpoint:
    """
    The client end of TLS over the connections C{endpoint} makes: what
    C{wrapClientTLS(creator, endpoint)} is for Twisted's TLS layer.
    """

    def __init__(
        self,
        source: IStdlibTLS,
        endpoint: IStreamClientEndpoint,
        sender: Callable[[Any], Callable[[bytes], object]] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._source = source
        self._endpoint = endpoint
        self._sender = sender
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = FastTLSFactory(self._source, True, protocolFactory, self._sender, self._clock)
        connecting: Deferred[Any] = self._endpoint.connect(factory)
        return connecting.addCallback(lambda wrapper: wrapper.wrappedProtocol)
