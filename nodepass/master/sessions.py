"""
Dashboard sessions: the cookie that lets the built-in dashboard call the API without
keeping the API key anywhere a script or a URL could leak it.

Sign-in (C{POST P/v1/dashboard/session} with C{{"key": "..."}}) checks the key with the
registry's L{KeyChecker}.  On success L{SessionStore.open} makes a L{Session}: a random
token (the cookie's value, HttpOnly, SameSite=Strict, Path=C{P/v1}, Secure over TLS) and a
random CSRF token the page reads from the answer and sends back in C{X-CSRF-Token} on every
change it makes with the cookie.  Sessions live in memory only (a master restart signs
everybody out), expire after L{SESSION_LIFETIME} seconds, and are bounded in number
(L{MAX_SESSIONS}: the oldest goes first).

A session remembers the digest of the key it was opened with; once the key is regenerated
the digests differ and L{SessionStore.find} drops it, so a new key ends every session on
the very next request.

Failed sign-ins are bounded per client address (L{SignInLimiter}): after
L{FAILURE_LIMIT} failures within L{FAILURE_WINDOW} seconds, sign-ins from that address are
refused with 429 and C{Retry-After} until the window has passed.  Nothing here logs a key or
a token.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections import OrderedDict
from typing import Final

import attrs
from twisted.internet.interfaces import IReactorTime

__all__ = [
    "COOKIE_NAME",
    "CSRF_HEADER",
    "CSRF_REFUSED",
    "FAILURE_LIMIT",
    "FAILURE_WINDOW",
    "MAX_SESSIONS",
    "NO_SESSION",
    "SESSION_LIFETIME",
    "TOO_MANY_SIGN_INS",
    "Session",
    "SessionStore",
    "SignInLimiter",
]

#: The session cookie's name.
COOKIE_NAME: Final = b"np_session"

#: The request header that carries the CSRF token of a cookie-authenticated change.
CSRF_HEADER: Final = b"X-CSRF-Token"

#: Seconds a session lasts from sign-in.
SESSION_LIFETIME: Final = 8 * 3600.0

#: Most sessions kept at once; opening one more ends the oldest.
MAX_SESSIONS: Final = 64

#: Failed sign-ins allowed per address within L{FAILURE_WINDOW} seconds.
FAILURE_LIMIT: Final = 5

#: Seconds over which failed sign-ins are counted.
FAILURE_WINDOW: Final = 60.0

#: Most addresses whose failures are remembered (the oldest are forgotten first).
MAX_TRACKED_ADDRESSES: Final = 1024

#: 403: a change made with the session cookie lacks the right C{X-CSRF-Token}.
CSRF_REFUSED: Final = "Forbidden: missing or invalid CSRF token"

#: 401: C{GET}/C{DELETE P/v1/dashboard/session} without a live session.
NO_SESSION: Final = "Unauthorized: no session"

#: 429: too many failed sign-ins from this address.
TOO_MANY_SIGN_INS: Final = "Too many failed sign-ins; try again later"

_TOKEN_BYTES: Final = 32


@attrs.frozen
class Session:
    """
    One signed-in browser.

    @ivar token: the cookie's value.
    @ivar csrf: the token changes must carry in L{CSRF_HEADER}.
    @ivar digest: the digest of the API key it was opened with.
    @ivar expires: when it ends, on the store's clock.
    """

    token: str = attrs.field(repr=False)
    csrf: str = attrs.field(repr=False)
    digest: str = attrs.field(repr=False)
    expires: float

    def allows(self, csrfHeader: bytes | None) -> bool:
        """
        Whether a change carrying this C{X-CSRF-Token} value may proceed.
        """
        if not csrfHeader:
            return False
        return hmac.compare_digest(csrfHeader, self.csrf.encode("ascii"))


class SignInLimiter:
    """
    Counts failed sign-ins per address over a fixed window.

    @param clock: the time source.
    @param limit: failures allowed within C{window} seconds.
    @param window: seconds, from an address's first failure, over which failures count.
    @param maxAddresses: most addresses remembered at once.
    """

    def __init__(
        self,
        clock: IReactorTime,
        limit: int = FAILURE_LIMIT,
        window: float = FAILURE_WINDOW,
        maxAddresses: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._maxAddresses = maxAddresses
        #: address -> (start of its window, failures in it)
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retryAfter(self, address: str) -> int | None:
        """
        Seconds before C{address} may try again, or C{None} if it may try now.
        """
        entry = self._current(address)
        if entry is None or entry[1] < self._limit:
            return None
        return max(1, math.ceil(entry[0] + self._window - self._clock.seconds()))

    def failed(self, address: str) -> None:
        """
        Count one failed sign-in from C{address}.
        """
        entry = self._current(address)
        start, count = entry if entry is not None else (self._clock.seconds(), 0)
        self._failures[address] = (start, count + 1)
        self._failures.move_to_end(address)
        while len(self._failures) > self._maxAddresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """
        Forget C{address}'s failures.
        """
        self._failures.pop(address, None)

    def _current(self, address: str) -> tuple[float, int] | None:
        entry = self._failures.get(address)
        if entry is not None and self._clock.seconds() >= entry[0] + self._window:
            del self._failures[address]
            return None
        return entry


class SessionStore:
    """
    The open sessions, in memory.

    @param clock: the time source.
    @param lifetime: seconds a session lasts.
    @param maxSessions: most sessions at once.
    @param limiter: bounds failed sign-ins (by default L{SignInLimiter} on C{clock}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        lifetime: float = SESSION_LIFETIME,
        maxSessions: int = MAX_SESSIONS,
        limiter: SignInLimiter | None = None,
    ) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self._maxSessions = maxSessions
        self.limiter = limiter if limiter is not None else SignInLimiter(clock)
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, digest: str) -> Session:
        """
        A new session for a browser that presented the key whose digest is C{digest}.
        """
        self._prune()
        session = Session(
            token=secrets.token_urlsafe(_TOKEN_BYTES),
            csrf=secrets.token_urlsafe(_TOKEN_BYTES),
            digest=digest,
            expires=self._clock.seconds() + self.lifetime,
        )
        self._sessions[session.token] = session
        while len(self._sessions) > self._maxSessions:
            self._sessions.popitem(last=False)
        return session

    def find(self, token: bytes | str | None, digest: str) -> Session | None:
        """
        The live session whose cookie value is C{token}, if it was opened with the current
        key (whose digest is C{digest}); an expired one, or one of an older key, is dropped.
        """
        if not token:
            return None
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                return None
        session = self._sessions.get(token)
        if session is None:
            return None
        if self._clock.seconds() >= session.expires or not hmac.compare_digest(
            session.digest, digest
        ):
            del self._sessions[token]
            return None
        return session

    def close(self, token: str) -> None:
        """
        End the session whose cookie value is C{token} (sign-out).
        """
        self._sessions.pop(token, None)

    def _prune(self) -> None:
        now = self._clock.seconds()
        for token in [t for t, s in self._sessions.items() if now >= s.expires]:
            del self._sessions[token]
