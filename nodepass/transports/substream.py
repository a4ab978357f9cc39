"""One stream of a multiplexed carrier, as the transport a pool protocol sees.

The WebSocket, HTTP/2 and QUIC pool transports carry each pool connection in
something that is not a TCP connection of its own: a WebSocket's binary
messages, an HTTP/2 stream, a QUIC stream.  The pool (and the relay on top
of it) wants a Twisted transport all the same: C{write}, C{loseConnection},
C{abortConnection}, C{getPeer}/C{getHost}, a registered producer paused when
too much is waiting, and C{pauseProducing} to stop reading.
L{Substream} is what those three facades share; each transport subclasses it
and supplies how bytes go out and how the stream ends on its carrier.

What the base decides, once for all three:

* B{Watermarks.}  A producer registered on a stream is paused once more than
  L{HIGH_WATER} bytes written to it are still pending (L{Substream.pending}:
  waiting for the peer's window on HTTP/2, unacknowledged on QUIC) and
  resumed once they fall to L{LOW_WATER} or less.  A pull producer
  (C{streaming=False}) is asked for more at registration, then on a later
  reactor turn whenever the stream is at or below L{LOW_WATER} (never from
  inside C{write}, so it cannot recurse).
* B{No half-close.}  C{loseWriteConnection} closes the whole stream (none
  of the three carriers ends one direction of a pool stream alone).
* B{The end.}  L{Substream.finish} reports it once: the producer is stopped
  (as Twisted's own transports do when they lose their connection), then the
  protocol's C{connectionLost} is called; an exception from either is
  logged, never raised into the carrier.
* B{Data.}  L{Substream.deliver} hands received bytes to the protocol; an
  exception there is logged and the stream aborted.
* B{Addresses and certificate.}  By default those of the carrier connection
  underneath (L{Substream.carrier}): the peer's address, and the peer's
  certificate when the carrier runs TLS.

This module imports nothing heavy: it is loaded with the plugin scan.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["HIGH_WATER", "LOW_WATER", "Substream"]

#: Bytes written to a stream and still pending above which its producer is paused.
HIGH_WATER = 1 << 20

#: Pending bytes at or below which a paused producer is resumed.
LOW_WATER = HIGH_WATER // 4


@implementer(ITransport, IConsumer, IPushProducer)
class Substream:
    """
    The transport of one pool protocol on one stream of a carrier.

    Subclasses implement L{send} (bytes out), L{endOutput} (our orderly
    close), L{reset} (an abort), and L{pauseProducing}/L{resumeProducing}
    (holding received data); they override L{pending} when they buffer what
    is written, L{carrier} when there is a carrier connection to take
    addresses from, L{clock} when a pull producer may be registered, and
    L{writeBlocked} to hear of their producer's pauses.

    @ivar protocol: the pool protocol on top (L{None} once the end is reported).
    @ivar disconnecting: C{True} once closing started (or the stream is over):
        C{write} then drops what it is given.
    @ivar closed: C{True} once L{finish} reported the end.
    @ivar producer: the producer registered on this stream, if any.
    """

    def __init__(self, protocol: IProtocol | None = None) -> None:
        self.protocol = protocol
        self.disconnecting = False
        self.closed = False
        self.producer: Any = None
        self._streaming = False
        self._producerPaused = False
        self._askCall: IDelayedCall | None = None

    # -- what subclasses provide --------------------------------------------

    @property
    def log(self) -> Logger:
        """
        What failures of the protocol and producer are logged through.
        """
        raise NotImplementedError

    def describe(self) -> str:
        """
        This stream in a log line (e.g. C{HTTP/2 stream 5}).
        """
        return type(self).__name__

    def carrier(self) -> Any:
        """
        The connection underneath, whose addresses and TLS this stream
        reports; L{None} when there is none.
        """
        return None

    @property
    def clock(self) -> Any:
        """
        The reactor, for asking a pull producer for more on a later turn.
        """
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        """
        Put C{data} on the carrier (or into this stream's own buffer).
        """
        raise NotImplementedError

    def endOutput(self) -> None:
        """
        Close in order once what was written has gone out (called once, by
        L{loseConnection}); L{finish} follows, now or later.
        """
        raise NotImplementedError

    def reset(self) -> None:
        """
        End the stream at once, dropping what waits (called once, by
        L{abortConnection}); L{finish} follows, now or later.
        """
        raise NotImplementedError

    def pending(self) -> int:
        """
        Bytes written and not yet gone, as the watermarks count them.
        """
        return 0

    def writeBlocked(self, blocked: bool) -> None:
        """
        The producer was just paused (C{blocked}) or resumed by the
        watermarks.
        """

    # -- ITransport ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return not self.closed

    def write(self, data: bytes) -> None:
        if not data or self.disconnecting:
            return
        self.send(data)
        if self.producer is not None:
            self._grew()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        End the stream after the data already written.
        """
        if self.disconnecting:
            return
        self.disconnecting = True
        self.endOutput()

    def loseWriteConnection(self) -> None:
        """
        A pool stream has no half-close: close it all.
        """
        self.loseConnection()

    def abortConnection(self) -> None:
        """
        End the stream at once, dropping unsent data.
        """
        if self.closed:
            return
        self.disconnecting = True
        self.reset()

    def getPeer(self) -> Any:
        return self.carrier().getPeer()

    def getHost(self) -> Any:
        return self.carrier().getHost()

    def getPeerCertificate(self) -> Any:
        """
        The peer's certificate when the carrier runs TLS, else L{None}.
        """
        getPeerCertificate = getattr(self.carrier(), "getPeerCertificate", None)
        return None if getPeerCertificate is None else getPeerCertificate()

    # -- IConsumer: the watermarks ------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"producer {self.producer!r} already registered on {self!r}")
        if self.closed:
            producer.stopProducing()
            return
        self.producer = producer
        self._streaming = streaming
        self._producerPaused = False
        if not streaming:
            producer.resumeProducing()
        self.checkWatermarks()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._cancelAsk()
        if self._producerPaused:
            self._producerPaused = False
            self.writeBlocked(False)

    def checkWatermarks(self) -> None:
        """
        Pause the producer above L{HIGH_WATER}, resume it at L{LOW_WATER} or
        below: for when L{pending} may have gone either way.
        """
        if self.producer is None or self.closed:
            return
        if self._producerPaused:
            self.drained()
        else:
            self._grew()

    def drained(self) -> None:
        """
        Some of what was pending went out: resume the producer once it is at
        L{LOW_WATER} or below (a pull producer: ask it for more soon).
        """
        producer = self.producer
        if producer is None or self.closed:
            return
        if self._producerPaused:
            if self.pending() <= LOW_WATER:
                self._producerPaused = False
                self.writeBlocked(False)
                producer.resumeProducing()
        elif not self._streaming and self.pending() <= LOW_WATER:
            self._askSoon()

    def _grew(self) -> None:
        """
        More is pending: pause a streaming producer above L{HIGH_WATER}; ask
        a pull producer for more soon while at L{LOW_WATER} or below, else
        hold it until L{drained}.
        """
        if self._producerPaused:
            return
        pending = self.pending()
        if self._streaming:
            if pending > HIGH_WATER:
                self._producerPaused = True
                self.writeBlocked(True)
                self.producer.pauseProducing()
        elif pending <= LOW_WATER:
            self._askSoon()
        else:
            self._producerPaused = True
            self.writeBlocked(True)

    def _askSoon(self) -> None:
        if self._askCall is None:
            self._askCall = self.clock.callLater(0, self._ask)

    def _ask(self) -> None:
        """
        A pull producer's turn: ask it for more if the stream is still low.
        """
        self._askCall = None
        producer = self.producer
        if producer is None or self.closed or self._streaming or self._producerPaused:
            return
        if self.pending() <= LOW_WATER:
            producer.resumeProducing()

    def _cancelAsk(self) -> None:
        if self._askCall is not None:
            if self._askCall.active():
                self._askCall.cancel()
            self._askCall = None

    @property
    def producerPaused(self) -> bool:
        """
        Whether the watermarks hold the producer until the stream is back to
        L{LOW_WATER}: a streaming one went above L{HIGH_WATER}, a pull one
        above L{LOW_WATER}.
        """
        return self._producerPaused

    # -- IPushProducer ------------------------------------------------------

    def pauseProducing(self) -> None:
        raise NotImplementedError

    def resumeProducing(self) -> None:
        raise NotImplementedError

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- delivering -----------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        """
        Hand received C{data} to the protocol; if it raises, log that and
        abort the stream.
        """
        protocol = self.protocol
        if protocol is None or self.closed or not data:
            return
        try:
            protocol.dataReceived(data)
        except Exception:
            self.log.failure("Pool protocol failed on data from {stream}", stream=self.describe())
            self.abortConnection()

    def release(self) -> None:
        """
        The stream is over: drop what it holds on the carrier (called once,
        by L{finish}, before the producer and the protocol hear of it).
        """

    def finish(self, reason: Failure) -> None:
        """
        Report the end of the stream, once: stop the producer, then tell the
        protocol C{connectionLost(reason)}.
        """
        if self.closed:
            return
        self.closed = True
        self.disconnecting = True
        self._cancelAsk()
        self.release()
        producer, self.producer = self.producer, None
        self._producerPaused = False
        if producer is not None:
            # As Twisted's own transports do when they lose their connection.
            try:
                producer.stopProducing()
            except Exception:
                self.log.failure(
                    "Producer failed to stop on the end of {stream}", stream=self.describe()
                )
        protocol, self.protocol = self.protocol, None
        if protocol is None:
            return
        try:
            protocol.connectionLost(reason)
        except Exception:
            self.log.failure("Pool protocol failed at the end of {stream}", stream=self.describe())
