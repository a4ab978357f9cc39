"""The TLS fingerprint exchange of tunnel modes 1 and 2 (dataplane spec §8.4).

Both peers run both halves at once.  The I{sender} names an idle pool
connection in a ``verify`` signal with a fingerprint (the server its own
leaf certificate's, the client the one it saw on that connection), then
closes it.  The I{receiver} takes the named connection out of its pool and
compares: the server its own fingerprint with the claim, the client the
claim with what it saw on that connection.  A match releases user traffic on
the entry side; a mismatch or a timeout ends the session.

A client with ``pin=`` also holds every server certificate it sees in either
half to that fingerprint (L{pinProblem}): a certificate that does not match
ends the session before any user byte goes through, whatever the server
claims.  Only the certificate the server presents in its TLS handshake is
used, so this works against a Go server too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from nodepass.errors import NodePassError
from nodepass.tunnel.control import Signal
from nodepass.tunnel.pool import Pool, PoolConnection


class VerifyError(NodePassError):
    """
    A half of the exchange failed; the message is the log line.
    """


def pinProblem(pin: str, presented: str) -> str | None:
    """
    L{None} when the certificate fingerprint C{presented} matches C{pin} (or
    no pin is set), else the error line naming both.
    """
    if not pin or presented == pin:
        return None
    return f"certificate pin mismatch: expected {pin} - presented {presented or 'none'}"


class Verifier:
    """
    Both halves of the exchange for one session.

    @param send: queues a signal on the control channel.
    @param role: ``"server"`` or ``"client"``: which end of the idle list
        the sender takes (oldest or newest), so that both peers never name
        the same connection at once.
    @param ownFingerprint: the server's own leaf fingerprint (server only).
    @param peerFingerprint: reads the peer leaf fingerprint seen on a pool
        connection's transport (client only).
    @param pin: the fingerprint the server's certificate must have (client
        only; C{""}: any, as the exchange itself decides).
    @param verified: called once the peer's fingerprint matched.
    @param failed: called with the error message when a half fails (after
        the error line), unless L{stop} came first.
    """

    def __init__(
        self,
        pool: Pool,
        send: Callable[[Signal], None],
        log: Logger,
        *,
        role: str,
        ownFingerprint: Callable[[], str | None] | None = None,
        peerFingerprint: Callable[[Any], str | None] | None = None,
        pin: str = "",
        verified: Callable[[], None],
        failed: Callable[[str], None],
    ) -> None:
        self.pool = pool
        self.send = send
        self.log = log
        self.role = role
        self._ownFingerprint = ownFingerprint
        self._peerFingerprint = peerFingerprint
        self.pin = pin
        self._verified = verified
        self._failed = failed
        self.stopped = False
        #: IDs the peer named in its own ``verify`` signals.
        self._namedByPeer: set[str] = set()
        #: What this side saw on the connection it named, by ID.
        self._sentVerify: dict[str, str] = {}

    def start(self) -> None:
        """
        Run the sender half.
        """
        self.log.info("TLS certificate fingerprint verifying...")
        Deferred.fromCoroutine(self._sendVerify()).addErrback(self._verifyFailed)

    def received(self, signal: Signal) -> None:
        """
        Run the receiver half for the peer's ``verify`` signal.
        """
        Deferred.fromCoroutine(self._receiveVerify(signal)).addErrback(self._verifyFailed)

    def stop(self) -> None:
        """
        The session is over: failures from now on are not reported.
        """
        self.stopped = True

    async def _sendVerify(self) -> None:
        # Both peers verify at once; the server names its oldest idle
        # connection and the client its newest, so that they never pick the
        # same one (each would then miss it, spec §8.4).
        conn = await self.pool.incomingGet(newest=self.role == "client")
        # Avoid the ID the peer is verifying with, if it named one already.
        if conn.ident in self._namedByPeer:
            spare = await self.pool.incomingGet()
            conn.close()
            conn = spare
        if self._ownFingerprint is not None:
            fingerprint = self._ownFingerprint()
        else:
            fingerprint = self.fingerprintOf(conn)
            problem = pinProblem(self.pin, fingerprint)
            if problem is not None:
                conn.close()
                raise VerifyError(f"incomingVerify: {problem}")
        if not fingerprint:
            raise VerifyError("incomingVerify: no TLS certificate on the pool connection")
        self.log.debug("TLS verify signal: cid {id} -> peer", id=conn.ident)
        self._sentVerify[conn.ident] = fingerprint
        self.send(Signal("verify", id=conn.ident, fp=fingerprint))
        conn.close()

    async def _receiveVerify(self, signal: Signal) -> None:
        self._namedByPeer.add(signal.id)
        if not signal.fp:
            raise VerifyError("outgoingVerify: no fingerprint in signal")
        seen = self._sentVerify.get(signal.id)
        if seen is None:
            try:
                conn = await self.pool.outgoingGet(signal.id)
            except Exception:
                raise VerifyError("outgoingVerify: request timeout") from None
            seen = self.fingerprintOf(conn)
            conn.close()
        # else: both peers named the same connection at once; we already
        # took it out for our own verify and noted what we saw on it.
        if self._ownFingerprint is not None:
            mine, theirs = self._ownFingerprint(), signal.fp
        else:
            problem = pinProblem(self.pin, seen)
            if problem is not None:
                raise VerifyError(f"outgoingVerify: {problem}")
            mine, theirs = signal.fp, seen
        if mine != theirs:
            raise VerifyError(
                f"outgoingVerify: certificate fingerprint mismatch: server: {mine} - client: {theirs}"
            )
        self.log.info("TLS certificate fingerprint verified: {fp}", fp=signal.fp)
        self._verified()

    def fingerprintOf(self, conn: PoolConnection) -> str:
        """
        The fingerprint of the server certificate seen on C{conn} (client).
        """
        certificate = getattr(conn, "peerCertificate", None)
        if certificate is not None:
            from nodepass.tls import certificateFingerprint

            return certificateFingerprint(certificate)  # type: ignore[arg-type]
        if self._peerFingerprint is None:
            return ""
        return self._peerFingerprint(conn.transport) or ""

    def _verifyFailed(self, reason: Failure) -> None:
        if self.stopped:
            return
        message = reason.getErrorMessage()
        # Not "message": Twisted's legacy log bridge claims that key.
        self.log.error("{reason}", reason=message)
        self._failed(message)
