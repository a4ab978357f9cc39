"""
L{nodepass._compat.aioquic}: each aioquic internal the QUIC transport relies on, pinned
against the installed aioquic (a release that renames one fails here), and the fallbacks
(switch off, untested release, a name missing), each logged once.  Two aioquic connections
talk in memory: no sockets.
"""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nodepass._compat import aioquic as compat
from nodepass.tls import ServerCredentials

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 10101)
ALPN = "np-test"
WINDOW = 1 << 16
STEP = WINDOW // 4


class Consumed:
    def __init__(self) -> None:
        self.consumed = 0


def capture() -> tuple[Logger, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return Logger(observer=cast(ILogObserver, events.append)), events


@contextmanager
def freshLogs() -> Iterator[None]:
    """
    Each fallback logs once per process: forget what was logged, before and after.
    """
    saved = set(compat._logged)
    compat._logged.clear()
    try:
        yield
    finally:
        compat._logged.clear()
        compat._logged.update(saved)


class Pair:
    """
    A client and a server C{QuicConnection}, handshaken in memory.
    """

    def __init__(self, serverClass: type[QuicConnection] = QuicConnection) -> None:
        self.credentials = ServerCredentials.selfSigned()
        key, chain = self.credentials.keyAndChain()
        server = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
        server.private_key = key
        server.certificate = chain[0]
        client = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
        client.verify_mode = ssl.CERT_NONE
        self.now = 1.0
        self.client = QuicConnection(configuration=client)
        self.client.connect(SERVER, now=self.now)
        first = self.client.datagrams_to_send(now=self.now)
        cid = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8).destination_cid
        self.server = serverClass(configuration=server, original_destination_connection_id=cid)
        for data, _ in first:
            self.server.receive_datagram(data, CLIENT, now=self.now)
        self.pump()
        self.serverEvents: list[Any] = []

    def pump(self) -> None:
        """
        Exchange datagrams until neither side has any to send.
        """
        for _ in range(1000):
            self.now += 0.001
            moved = False
            for data, _ in self.client.datagrams_to_send(now=self.now):
                self.server.receive_datagram(data, CLIENT, now=self.now)
                moved = True
            for data, _ in self.server.datagrams_to_send(now=self.now):
                self.client.receive_datagram(data, SERVER, now=self.now)
                moved = True
            if not moved:
                return
        raise AssertionError("the connections never went quiet")

    def serverStream(self) -> Any:
        return self.server._streams[0]


class PinnedTests(SynchronousTestCase):
    """
    The internals, as the installed aioquic has them.
    """

    def test_installedReleaseIsTested(self) -> None:
        """
        The installed aioquic is one whose internals were read: the override is in use.
        """
        self.assertIsNone(compat.unsupported())
        self.assertIn(compat._release(), compat.TESTED)

    def test_writeStreamLimits(self) -> None:
        """
        C{QuicConnection._write_stream_limits(builder, space, stream)} exists, and the
        stream fields it works with.
        """
        method = QuicConnection._write_stream_limits
        self.assertEqual(
            list(inspect.signature(method).parameters), ["self", "builder", "space", "stream"]
        )
        pair = Pair()
        pair.client.send_stream_data(0, b"x")
        pair.pump()
        stream = pair.serverStream()
        self.assertEqual(stream.stream_id, 0)
        self.assertGreater(stream.max_stream_data_local, 0)
        self.assertEqual(stream.max_stream_data_local_sent, stream.max_stream_data_local)
        self.assertEqual(stream.receiver.highest_offset, 1)

    def test_unacknowledged(self) -> None:
        """
        C{_streams[id].sender._buffer} holds what was written until the peer acknowledges it.
        """
        pair = Pair()
        log, logged = capture()
        pair.client.send_stream_data(0, b"y" * 5000)
        self.assertEqual(compat.unacknowledged(pair.client, 0, log), 5000)
        pair.pump()
        self.assertEqual(compat.unacknowledged(pair.client, 0, log), 0)
        self.assertEqual(compat.unacknowledged(pair.client, 4, log), 0)
        self.assertEqual(logged, [])

    def test_peerClose(self) -> None:
        """
        C{_close_event} is the peer's CONNECTION_CLOSE as soon as it arrives, before
        aioquic's draining period ends.
        """
        pair = Pair()
        log, logged = capture()
        self.assertIsNone(compat.peerClose(pair.server, log))
        pair.client.close(error_code=0, reason_phrase="bye")
        for data, _ in pair.client.datagrams_to_send(now=pair.now):
            pair.server.receive_datagram(data, CLIENT, now=pair.now)
        event = compat.peerClose(pair.server, log)
        self.assertIsInstance(event, events.ConnectionTerminated)
        self.assertEqual((event.error_code, event.reason_phrase), (0, "bye"))
        self.assertEqual(logged, [])

    def test_peerCertificate(self) -> None:
        """
        C{tls._peer_certificate} is the server's leaf on the client; the server has none.
        """
        pair = Pair()
        log, logged = capture()
        certificate = compat.peerCertificate(pair.client, log)
        self.assertEqual(certificate, pair.credentials.certificate)
        self.assertIsNone(compat.peerCertificate(pair.server, log))
        self.assertEqual(logged, [])

    def test_incomingStreams(self) -> None:
        """
        Raising C{_local_max_streams_bidi} before the handshake lets the peer open that
        many streams (the client learns it from the transport parameters).
        """
        log, logged = capture()
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
        limit = quic._local_max_streams_bidi
        self.assertEqual((limit.value, limit.sent), (128, 128))
        compat.allowIncomingStreams(quic, 1 << 16, log)
        self.assertEqual((limit.value, limit.sent), (1 << 16, 1 << 16))
        compat.allowIncomingStreams(quic, 10, log)
        self.assertEqual(limit.value, 1 << 16)
        self.assertEqual(logged, [])


class WindowTests(SynchronousTestCase):
    """
    The override: a stream's receive window follows what its protocol consumed.
    """

    def test_pausedReaderHoldsOneWindow(self) -> None:
        """
        With nothing consumed, the window never grows past the first one, however much
        the peer sends; aioquic's own class doubles it.
        """
        for cls, grows in (
            (compat.connectionClass(WINDOW, STEP, Logger()), False),
            (QuicConnection, True),
        ):
            pair = Pair(cls)
            pair.server.windows = {0: Consumed()}  # type: ignore[attr-defined]
            first = None
            for _ in range(8):
                pair.client.send_stream_data(0, b"z" * (1 << 18))
                pair.pump()
                stream = pair.serverStream()
                first = first or stream.max_stream_data_local
            received = stream.receiver.highest_offset
            if grows:
                self.assertGreater(stream.max_stream_data_local, first)
            else:
                self.assertEqual(stream.max_stream_data_local, first)
                self.assertLessEqual(received, first)

    def test_windowFollowsConsumption(self) -> None:
        """
        Once the protocol consumed data, the window is what it consumed plus the window,
        announced in steps.
        """
        pair = Pair(compat.connectionClass(WINDOW, STEP, Logger()))
        consumed = Consumed()
        pair.server.windows = {0: consumed}  # type: ignore[attr-defined]
        pair.client.send_stream_data(0, b"z" * 1000)
        pair.pump()
        stream = pair.serverStream()
        first = stream.max_stream_data_local
        consumed.consumed = first + STEP - WINDOW - 1
        pair.server.send_ping(1)
        pair.pump()
        self.assertEqual(stream.max_stream_data_local, first)
        consumed.consumed += 1
        pair.server.send_ping(2)
        pair.pump()
        self.assertEqual(stream.max_stream_data_local, consumed.consumed + WINDOW)
        self.assertEqual(stream.max_stream_data_local_sent, stream.max_stream_data_local)
        # The client was told: it may send up to there.
        self.assertEqual(pair.client._streams[0].max_stream_data_remote, consumed.consumed + WINDOW)


class FallbackTests(SynchronousTestCase):
    def test_configure(self) -> None:
        self.addCleanup(setattr, compat, "enabled", compat.enabled)
        compat.configure({"NP_AIOQUIC_WINDOW": "0"})
        self.assertFalse(compat.enabled)
        compat.configure({})
        self.assertTrue(compat.enabled)
        compat.configure({"NP_AIOQUIC_WINDOW": "1"})
        self.assertTrue(compat.enabled)

    def test_switchedOff(self) -> None:
        """
        Switched off: aioquic's own class, said once.
        """
        self.addCleanup(setattr, compat, "enabled", True)
        compat.enabled = False
        log, logged = capture()
        with freshLogs():
            self.assertIs(compat.connectionClass(WINDOW, STEP, log), QuicConnection)
            self.assertIs(compat.connectionClass(WINDOW, STEP, log), QuicConnection)
        self.assertEqual(len(logged), 1)
        self.assertIn("NP_AIOQUIC_WINDOW=0", formatEvent(logged[0]))
        self.assertEqual(logged[0]["log_level"], LogLevel.warn)

    def test_untestedRelease(self) -> None:
        """
        An aioquic release not in L{compat.TESTED}: aioquic's own class, and why, once.
        """
        self.addCleanup(compat.unsupported.cache_clear)
        self.addCleanup(setattr, compat, "TESTED", compat.TESTED)
        compat.TESTED = ((0, 1),)
        compat.unsupported.cache_clear()
        log, logged = capture()
        with freshLogs():
            self.assertIs(compat.connectionClass(WINDOW, STEP, log), QuicConnection)
            compat.connectionClass(WINDOW, STEP, log)
        self.assertEqual(len(logged), 1)
        self.assertIn("is not a tested release", formatEvent(logged[0]))

    def test_missingNames(self) -> None:
        """
        Without the internals, each accessor answers what aioquic's public side allows,
        and says so once.
        """

        class Bare:
            tls = object()

        bare: Any = Bare()
        log, logged = capture()
        with freshLogs():
            for _ in range(2):
                self.assertEqual(compat.unacknowledged(bare, 0, log), 0)
                self.assertIsNone(compat.peerClose(bare, log))
                self.assertIsNone(compat.peerCertificate(bare, log))
                compat.allowIncomingStreams(bare, 10, log)
        messages = [formatEvent(event) for event in logged]
        self.assertEqual(len(messages), 4, messages)
        for name in ("_streams", "_close_event", "_peer_certificate", "_local_max_streams_bidi"):
            self.assertTrue(any(name in message for message in messages), name)
