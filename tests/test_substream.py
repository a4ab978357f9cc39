"""
L{nodepass.transports.substream.Substream}: what the WebSocket, HTTP/2 and QUIC stream
facades share (watermarks, producers, the end of a stream, addresses), checked on a minimal
subclass whose carrier is a buffer and a L{Clock}.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nodepass.transports.substream import HIGH_WATER, LOW_WATER, Substream


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost.append(reason)


class Producer:
    """
    Records what a consumer asks of it; a pull producer writes C{chunk} when asked.
    """

    def __init__(self, consumer: Substream | None = None, chunk: bytes = b"") -> None:
        self.calls: list[str] = []
        self.consumer = consumer
        self.chunk = chunk

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")
        if self.consumer is not None and self.chunk:
            self.consumer.write(self.chunk)

    def stopProducing(self) -> None:
        self.calls.append("stop")


class Buffered(Substream):
    """
    A stream whose carrier keeps what is written until L{sent} says it went out.
    """

    def __init__(self, protocol: Any = None, carrier: Any = None) -> None:
        super().__init__(protocol)
        self.events: list[dict[str, Any]] = []
        self._log = Logger(observer=cast(ILogObserver, self.events.append))
        self._clock = Clock()
        self._carrier = carrier
        self.buffer = bytearray()
        self.calls: list[str] = []
        self.blocked: list[bool] = []

    @property
    def log(self) -> Logger:
        return self._log

    @property
    def clock(self) -> Clock:
        return self._clock

    def carrier(self) -> Any:
        return self._carrier

    def describe(self) -> str:
        return "test stream"

    def send(self, data: bytes) -> None:
        self.buffer += data

    def pending(self) -> int:
        return len(self.buffer)

    def endOutput(self) -> None:
        self.calls.append("endOutput")

    def reset(self) -> None:
        self.calls.append("reset")
        self.finish(Failure(ConnectionAborted()))

    def release(self) -> None:
        self.calls.append("release")

    def writeBlocked(self, blocked: bool) -> None:
        self.blocked.append(blocked)

    def pauseProducing(self) -> None:
        self.calls.append("pauseProducing")

    def resumeProducing(self) -> None:
        self.calls.append("resumeProducing")

    def sent(self, count: int) -> None:
        del self.buffer[:count]
        self.drained()


class TransportTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        stream = Buffered()
        self.assertTrue(verifyObject(ITransport, stream))
        self.assertTrue(verifyObject(IConsumer, stream))
        self.assertTrue(verifyObject(IPushProducer, stream))

    def test_watermarks(self) -> None:
        """
        One pair of marks, for every stream: 1 MiB, and a quarter of it.
        """
        self.assertEqual((HIGH_WATER, LOW_WATER), (1 << 20, 256 << 10))

    def test_write(self) -> None:
        """
        Writes reach the carrier in order; empty writes and writes once closing are dropped.
        """
        stream = Buffered()
        stream.write(b"one ")
        stream.writeSequence([b"two ", b"three"])
        stream.write(b"")
        self.assertEqual(bytes(stream.buffer), b"one two three")
        stream.loseConnection()
        stream.write(b"late")
        self.assertEqual(bytes(stream.buffer), b"one two three")

    def test_loseConnectionOnce(self) -> None:
        """
        C{loseConnection} ends the output once; with no half-close, C{loseWriteConnection}
        and C{stopProducing} do the same.
        """
        for close in ("loseConnection", "loseWriteConnection", "stopProducing"):
            stream = Buffered()
            getattr(stream, close)()
            stream.loseConnection()
            self.assertTrue(stream.disconnecting)
            self.assertTrue(stream.connected)
            self.assertEqual(stream.calls, ["endOutput"], close)

    def test_abort(self) -> None:
        """
        C{abortConnection} resets the stream, even while closing; once over, it does nothing.
        """
        protocol = Recorder()
        stream = Buffered(protocol)
        stream.loseConnection()
        stream.abortConnection()
        stream.abortConnection()
        self.assertEqual(stream.calls, ["endOutput", "reset", "release"])
        self.assertEqual(len(protocol.lost), 1)
        protocol.lost[0].trap(ConnectionAborted)

    def test_addresses(self) -> None:
        """
        Addresses and the peer certificate are the carrier's; a carrier without TLS has none.
        """
        carrier = StringTransport(
            hostAddress=IPv4Address("TCP", "10.0.0.1", 1),
            peerAddress=IPv4Address("TCP", "10.0.0.2", 2),
        )
        stream = Buffered(carrier=carrier)
        self.assertEqual(stream.getHost(), carrier.getHost())
        self.assertEqual(stream.getPeer(), carrier.getPeer())
        self.assertIsNone(stream.getPeerCertificate())

        class TLSCarrier:
            def getPeerCertificate(self) -> str:
                return "certificate"

        self.assertEqual(Buffered(carrier=TLSCarrier()).getPeerCertificate(), "certificate")


class StreamingProducerTests(SynchronousTestCase):
    def test_pausedAboveHighResumedAtLow(self) -> None:
        """
        A streaming producer is paused once more than L{HIGH_WATER} is pending (not at
        exactly that much) and resumed once it is L{LOW_WATER} or less (not one byte above).
        """
        stream = Buffered()
        producer = Producer()
        stream.registerProducer(producer, True)
        stream.write(b"x" * HIGH_WATER)
        self.assertEqual(producer.calls, [])
        stream.write(b"x")
        self.assertEqual(producer.calls, ["pause"])
        self.assertTrue(stream.producerPaused)
        stream.write(b"x" * 1000)
        self.assertEqual(producer.calls, ["pause"])
        stream.sent(stream.pending() - LOW_WATER - 1)
        self.assertEqual(producer.calls, ["pause"])
        stream.sent(1)
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertFalse(stream.producerPaused)
        self.assertEqual(stream.blocked, [True, False])

    def test_registeredAboveHigh(self) -> None:
        """
        A producer registered while too much is pending is paused at once.
        """
        stream = Buffered()
        stream.write(b"x" * (HIGH_WATER + 1))
        producer = Producer()
        stream.registerProducer(producer, True)
        self.assertEqual(producer.calls, ["pause"])

    def test_oneProducer(self) -> None:
        stream = Buffered()
        stream.registerProducer(Producer(), True)
        self.assertRaises(RuntimeError, stream.registerProducer, Producer(), True)

    def test_unregister(self) -> None:
        """
        Unregistering a paused producer clears the pause; a new one starts unpaused.
        """
        stream = Buffered()
        producer = Producer()
        stream.registerProducer(producer, True)
        stream.write(b"x" * (HIGH_WATER + 1))
        stream.unregisterProducer()
        self.assertIsNone(stream.producer)
        self.assertFalse(stream.producerPaused)
        self.assertEqual(stream.blocked, [True, False])
        stream.sent(stream.pending())
        self.assertEqual(producer.calls, ["pause"])

    def test_registerOnClosed(self) -> None:
        """
        A producer registered on a stream that is over is stopped at once.
        """
        stream = Buffered()
        stream.finish(Failure(ConnectionDone()))
        producer = Producer()
        stream.registerProducer(producer, True)
        self.assertEqual(producer.calls, ["stop"])
        self.assertIsNone(stream.producer)


class PullProducerTests(SynchronousTestCase):
    def test_askedTurnByTurn(self) -> None:
        """
        A pull producer is asked at registration, then on a later reactor turn (one call
        pending, never from inside C{write}) for as long as the stream stays at or below
        L{LOW_WATER}; once drained again, the asking starts again.
        """
        chunk = b"x" * 4096
        stream = Buffered()
        producer = Producer(stream, chunk)
        stream.registerProducer(producer, False)
        self.assertEqual(producer.calls, ["resume"])
        self.assertEqual(bytes(stream.buffer), chunk)
        self.assertEqual(len(stream.clock.getDelayedCalls()), 1)
        # (A Clock also runs the calls that the calls it runs schedule at delay 0.)
        stream.clock.advance(0)
        self.assertEqual(stream.pending(), LOW_WATER + len(chunk))
        self.assertEqual(len(producer.calls), stream.pending() // len(chunk))
        self.assertEqual(stream.clock.getDelayedCalls(), [])
        # The last write left it above LOW_WATER: held until the stream drains.
        self.assertTrue(stream.producerPaused)
        asked = len(producer.calls)
        stream.sent(stream.pending())
        self.assertEqual(len(producer.calls), asked + 1)
        stream.clock.advance(0)
        self.assertEqual(len(producer.calls), 2 * asked)

    def test_waitsAboveHigh(self) -> None:
        """
        Above L{HIGH_WATER} it is not asked; once back to L{LOW_WATER}, it is.
        """
        stream = Buffered()
        producer = Producer(stream, b"x" * (HIGH_WATER + 1))
        stream.registerProducer(producer, False)
        stream.clock.advance(0)
        self.assertEqual(producer.calls, ["resume"])
        self.assertTrue(stream.producerPaused)
        stream.sent(stream.pending() - LOW_WATER)
        self.assertEqual(producer.calls, ["resume", "resume"])

    def test_heldAboveLow(self) -> None:
        """
        A pull producer whose write leaves more than L{LOW_WATER} pending is held (the
        carrier hears of it) until the stream drains back to L{LOW_WATER}.
        """
        stream = Buffered()
        producer = Producer(stream, b"x" * (LOW_WATER + 1))
        stream.registerProducer(producer, False)
        stream.clock.advance(0)
        self.assertEqual(producer.calls, ["resume"])
        self.assertTrue(stream.producerPaused)
        self.assertEqual(stream.blocked, [True])
        stream.sent(1)
        self.assertEqual(producer.calls, ["resume", "resume"])
        # Asked again, it wrote as much again: held again.
        self.assertEqual(stream.blocked, [True, False, True])

    def test_unregisterCancelsTheAsk(self) -> None:
        stream = Buffered()
        producer = Producer(stream, b"chunk")
        stream.registerProducer(producer, False)
        stream.unregisterProducer()
        stream.clock.advance(0)
        self.assertEqual(producer.calls, ["resume"])
        self.assertEqual(stream.clock.getDelayedCalls(), [])


class EndTests(SynchronousTestCase):
    def test_finishOnce(self) -> None:
        """
        The end is reported once: the stream lets go of the carrier, the producer is
        stopped, then the protocol hears of it.
        """
        protocol = Recorder()
        stream = Buffered(protocol)
        producer = Producer()
        stream.registerProducer(producer, True)
        reason = Failure(ConnectionDone("over"))
        stream.finish(reason)
        stream.finish(Failure(ConnectionDone("again")))
        self.assertEqual(protocol.lost, [reason])
        self.assertEqual(producer.calls, ["stop"])
        self.assertEqual(stream.calls, ["release"])
        self.assertTrue(stream.closed)
        self.assertTrue(stream.disconnecting)
        self.assertFalse(stream.connected)
        self.assertIsNone(stream.producer)
        self.assertIsNone(stream.protocol)

    def test_failuresLogged(self) -> None:
        """
        A producer or protocol raising at the end is logged, not raised into the carrier.
        """

        class Broken(Recorder):
            def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
                raise ValueError("protocol")

        class BrokenProducer(Producer):
            def stopProducing(self) -> None:
                raise KeyError("producer")

        stream = Buffered(Broken())
        stream.registerProducer(BrokenProducer(), True)
        stream.finish(Failure(ConnectionDone()))
        self.assertEqual(len(self.flushLoggedErrors(ValueError, KeyError)), 0)
        failures = [event["log_failure"] for event in stream.events if "log_failure" in event]
        self.assertEqual(
            sorted(type(failure.value).__name__ for failure in failures), ["KeyError", "ValueError"]
        )
        self.assertTrue(all(event["log_level"] == LogLevel.critical for event in stream.events))


class DeliverTests(SynchronousTestCase):
    def test_deliver(self) -> None:
        protocol = Recorder()
        stream = Buffered(protocol)
        stream.deliver(b"ab")
        stream.deliver(b"")
        stream.deliver(b"c")
        self.assertEqual(bytes(protocol.received), b"abc")
        stream.finish(Failure(ConnectionDone()))
        stream.deliver(b"late")
        self.assertEqual(bytes(protocol.received), b"abc")

    def test_protocolRaises(self) -> None:
        """
        A protocol raising on data is logged and its stream aborted.
        """

        class Broken(Recorder):
            def dataReceived(self, data: bytes) -> None:
                raise ValueError("bad data")

        protocol = Broken()
        stream = Buffered(protocol)
        stream.deliver(b"x")
        self.assertEqual(stream.calls, ["reset", "release"])
        self.assertEqual(len(protocol.lost), 1)
        [event] = [event for event in stream.events if "log_failure" in event]
        self.assertIsInstance(event["log_failure"].value, ValueError)
        self.assertEqual(event["stream"], "test stream")
