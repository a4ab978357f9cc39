"""
Tests for L{nodepass.tunnel.verify.Verifier}, the TLS fingerprint exchange (dataplane spec
§8.4), on its own: a L{FakePool} of L{FakePoolConnection}s, signals collected from the
C{send} callable, no session, no sockets.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nodepass.log import defaultLogger
from nodepass.tls import certificateFingerprint, generateSelfSigned
from nodepass.tunnel.control import Signal
from nodepass.tunnel.verify import Verifier, pinProblem
from tests.fakes import FakePool, FakePoolConnection

FP = "sha256:" + ":".join(["E3", "B0", "C4", "42"] * 8)
FP_OTHER = "sha256:" + ":".join(["00", "11", "22", "33"] * 8)


class Harness:
    """
    One verifier: a server (its own fingerprint C{own}) or a client (C{seen}: what it saw
    on each connection, by ID).
    """

    def __init__(
        self,
        ids: tuple[str, ...] = (),
        *,
        role: str = "server",
        own: str | None = None,
        seen: dict[str, str] | None = None,
        pin: str = "",
    ) -> None:
        self.pool = FakePool()
        self.conns: dict[str, FakePoolConnection] = {}
        for ident in ids:
            self.add(ident)
        self.signals: list[Signal] = []
        self.verifiedCalls = 0
        self.failures: list[str] = []
        self.seen = seen or {}
        self.verifier = Verifier(
            self.pool,  # type: ignore[arg-type]
            self.signals.append,
            defaultLogger(),
            role=role,
            ownFingerprint=(lambda: own) if own is not None else None,
            peerFingerprint=self._peerFingerprint if role == "client" else None,
            pin=pin,
            verified=self._verified,
            failed=self.failures.append,
        )

    def _peerFingerprint(self, transport: Any) -> str:
        _, ident = transport
        return self.seen.get(ident, "")

    def _verified(self) -> None:
        self.verifiedCalls += 1

    def add(self, ident: str) -> FakePoolConnection:
        conn = FakePoolConnection(ident)
        self.conns[ident] = conn
        self.pool.park(conn)
        return conn


class SenderTests(SynchronousTestCase):
    def test_serverNamesItsOldestWithItsOwnFingerprint(self) -> None:
        h = Harness(("aaaaaaaa", "bbbbbbbb"), own=FP)
        with capturedLogs() as events:
            h.verifier.start()
        self.assertIn("TLS certificate fingerprint verifying...", [formatEvent(e) for e in events])
        self.assertEqual(h.signals, [Signal("verify", id="aaaaaaaa", fp=FP)])
        self.assertTrue(h.conns["aaaaaaaa"].closed)
        self.assertEqual(list(h.pool.idle), ["bbbbbbbb"])

    def test_clientNamesItsNewestWithWhatItSaw(self) -> None:
        h = Harness(("aaaaaaaa", "bbbbbbbb"), role="client", seen={"bbbbbbbb": FP})
        h.verifier.start()
        self.assertEqual(h.signals, [Signal("verify", id="bbbbbbbb", fp=FP)])
        self.assertTrue(h.conns["bbbbbbbb"].closed)

    def test_peerCertificateOnTheConnectionComesFirst(self) -> None:
        """
        A transport that keeps the peer certificate itself (QUIC) has it on the connection.
        """
        certPEM, _ = generateSelfSigned()
        certificate = x509.load_pem_x509_certificate(certPEM)
        h = Harness(role="client", seen={"aaaaaaaa": FP_OTHER})
        conn = FakePoolConnection("aaaaaaaa")
        conn.peerCertificate = certificate  # type: ignore[attr-defined]
        h.pool.park(conn)
        h.verifier.start()
        self.assertEqual(
            h.signals, [Signal("verify", id="aaaaaaaa", fp=certificateFingerprint(certificate))]
        )

    def test_noCertificate(self) -> None:
        h = Harness(("aaaaaaaa",), role="client")
        with capturedLogs() as events:
            h.verifier.start()
        message = "incomingVerify: no TLS certificate on the pool connection"
        self.assertEqual(h.failures, [message])
        self.assertIn(message, [formatEvent(e) for e in events])
        self.assertEqual(h.signals, [])

    def test_noIdleConnection(self) -> None:
        h = Harness(own=FP)
        h.verifier.start()
        self.assertEqual(h.failures, [])
        h.pool.expire()
        self.assertEqual(len(h.failures), 1)
        self.assertTrue(h.failures[0].startswith("incomingGet"), h.failures)

    def test_avoidsTheIDThePeerNamed(self) -> None:
        """
        The peer's verify arrives while ours waits for an idle connection: the one it names
        goes to the receiver half, ours takes the next.
        """
        h = Harness(role="client", seen={"aaaaaaaa": FP, "bbbbbbbb": FP})
        h.verifier.start()
        h.verifier.received(Signal("verify", id="aaaaaaaa", fp=FP))
        h.add("aaaaaaaa")
        self.assertEqual(h.verifiedCalls, 1)
        self.assertEqual(h.signals, [])
        h.add("bbbbbbbb")
        self.assertEqual(h.signals, [Signal("verify", id="bbbbbbbb", fp=FP)])
        self.assertEqual(h.failures, [])

    def test_neverNamesAConnectionThePeerNamed(self) -> None:
        """
        The peer named an idle connection (in a verify this side refused): this side's own
        verify takes the next one and closes that one.
        """
        h = Harness(("aaaaaaaa", "bbbbbbbb"), own=FP)
        with capturedLogs():
            h.verifier.received(Signal("verify", id="aaaaaaaa"))
        h.verifier.start()
        self.assertEqual(h.signals, [Signal("verify", id="bbbbbbbb", fp=FP)])
        self.assertTrue(h.conns["aaaaaaaa"].closed)
        self.assertTrue(h.conns["bbbbbbbb"].closed)


class ReceiverTests(SynchronousTestCase):
    def test_serverMatch(self) -> None:
        h = Harness(("bbbbbbbb",), own=FP)
        with capturedLogs() as events:
            h.verifier.received(Signal("verify", id="bbbbbbbb", fp=FP))
        self.assertEqual(h.verifiedCalls, 1)
        self.assertIn(
            f"TLS certificate fingerprint verified: {FP}", [formatEvent(e) for e in events]
        )
        self.assertTrue(h.conns["bbbbbbbb"].closed)

    def test_serverMismatch(self) -> None:
        h = Harness(("bbbbbbbb",), own=FP)
        with capturedLogs():
            h.verifier.received(Signal("verify", id="bbbbbbbb", fp=FP_OTHER))
        self.assertEqual(
            h.failures,
            [
                f"outgoingVerify: certificate fingerprint mismatch: server: {FP} - client: {FP_OTHER}"
            ],
        )
        self.assertEqual(h.verifiedCalls, 0)

    def test_clientComparesTheClaimWithWhatItSaw(self) -> None:
        h = Harness(("aaaaaaaa",), role="client", seen={"aaaaaaaa": FP_OTHER})
        with capturedLogs():
            h.verifier.received(Signal("verify", id="aaaaaaaa", fp=FP))
        self.assertEqual(
            h.failures,
            [
                f"outgoingVerify: certificate fingerprint mismatch: server: {FP} - client: {FP_OTHER}"
            ],
        )

    def test_noFingerprint(self) -> None:
        h = Harness(("bbbbbbbb",), own=FP)
        with capturedLogs():
            h.verifier.received(Signal("verify", id="bbbbbbbb"))
        self.assertEqual(h.failures, ["outgoingVerify: no fingerprint in signal"])
        # The named connection stays parked.
        self.assertIn("bbbbbbbb", h.pool.idle)

    def test_namedConnectionNeverArrives(self) -> None:
        h = Harness(own=FP)
        h.verifier.received(Signal("verify", id="0badf00d", fp=FP))
        self.assertEqual(h.failures, [])
        with capturedLogs():
            h.pool.expire()
        self.assertEqual(h.failures, ["outgoingVerify: request timeout"])

    def test_lateConnection(self) -> None:
        h = Harness(own=FP)
        h.verifier.received(Signal("verify", id="bbbbbbbb", fp=FP))
        self.assertEqual(h.verifiedCalls, 0)
        h.add("bbbbbbbb")
        self.assertEqual(h.verifiedCalls, 1)
        self.assertTrue(h.conns["bbbbbbbb"].closed)

    def test_bothNameTheSameID(self) -> None:
        """
        §8.4 race: both peers named the same (only) idle connection; the receiver uses what
        it saw on it for its own verify instead of waiting for it.
        """
        h = Harness(("aaaaaaaa",), role="client", seen={"aaaaaaaa": FP})
        h.verifier.start()
        self.assertEqual(h.signals, [Signal("verify", id="aaaaaaaa", fp=FP)])
        h.verifier.received(Signal("verify", id="aaaaaaaa", fp=FP))
        self.assertEqual(h.verifiedCalls, 1)
        self.assertEqual(h.pool.waiting, [])


class StopTests(SynchronousTestCase):
    def test_failuresAfterStopAreQuiet(self) -> None:
        h = Harness(own=FP)
        h.verifier.start()
        h.verifier.received(Signal("verify", id="0badf00d", fp=FP))
        h.verifier.stop()
        with capturedLogs() as events:
            h.pool.expire()
        self.assertEqual(h.failures, [])
        self.assertEqual([e for e in events if e["log_level"].name == "error"], [])


class PinTests(SynchronousTestCase):
    """
    A client with C{pin=}: every certificate it sees in either half must have that
    fingerprint, whatever the server claims.
    """

    def test_pinnedCertificatePasses(self) -> None:
        h = Harness(
            ("aaaaaaaa", "bbbbbbbb"), role="client", seen={"aaaaaaaa": FP, "bbbbbbbb": FP}, pin=FP
        )
        h.verifier.start()
        h.verifier.received(Signal("verify", id="aaaaaaaa", fp=FP))
        self.assertEqual(h.signals, [Signal("verify", id="bbbbbbbb", fp=FP)])
        self.assertEqual((h.verifiedCalls, h.failures), (1, []))

    def test_senderRefusesAnotherCertificate(self) -> None:
        h = Harness(("aaaaaaaa",), role="client", seen={"aaaaaaaa": FP_OTHER}, pin=FP)
        with capturedLogs() as events:
            h.verifier.start()
        message = f"incomingVerify: certificate pin mismatch: expected {FP} - presented {FP_OTHER}"
        self.assertEqual(h.failures, [message])
        self.assertIn(message, [formatEvent(e) for e in events])
        # Nothing told to the server, and the connection is gone.
        self.assertEqual(h.signals, [])
        self.assertTrue(h.conns["aaaaaaaa"].closed)

    def test_receiverRefusesEvenWhenTheClaimMatches(self) -> None:
        """
        A server presenting another certificate and claiming its fingerprint honestly is
        still refused: the pin, not the claim, decides.
        """
        h = Harness(("aaaaaaaa",), role="client", seen={"aaaaaaaa": FP_OTHER}, pin=FP)
        with capturedLogs():
            h.verifier.received(Signal("verify", id="aaaaaaaa", fp=FP_OTHER))
        self.assertEqual(
            h.failures,
            [f"outgoingVerify: certificate pin mismatch: expected {FP} - presented {FP_OTHER}"],
        )
        self.assertEqual(h.verifiedCalls, 0)

    def test_noCertificateIsAMismatch(self) -> None:
        h = Harness(("aaaaaaaa",), role="client", pin=FP)
        with capturedLogs():
            h.verifier.start()
        self.assertEqual(
            h.failures,
            [f"incomingVerify: certificate pin mismatch: expected {FP} - presented none"],
        )

    def test_pinProblem(self) -> None:
        self.assertIsNone(pinProblem("", FP_OTHER))
        self.assertIsNone(pinProblem(FP, FP))
        self.assertEqual(
            pinProblem(FP, FP_OTHER),
            f"certificate pin mismatch: expected {FP} - presented {FP_OTHER}",
        )
