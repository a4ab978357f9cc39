"""
API key authentication and CORS headers for the master API (spec §4.1, §4.3, §5).

API key
=======

The key is 16 bytes from a CSPRNG shown as 32 lowercase hexadecimal
characters (L{generateKey}), exactly as the Go master makes it.  Clients send
it in the C{X-API-Key} header; nothing else is accepted (no query parameter,
no C{Authorization}).  L{KeyChecker} keeps only the SHA-256 digest of the key
(L{keyDigest}, the same digest the store persists) and compares digests with
L{hmac.compare_digest} (spec §17 a1, a2).  There is no way to build a checker
that accepts everything: an empty stored key never disables authentication
(§17 a4).  L{KeyChecker.regenerate} swaps the key at once, so the old one
fails on the very next request (§18 b20).  Nothing in this module logs a key
or a digest.

CORS
====

L{CorsPolicy} sets the CORS headers on every response of a registered route.
The default policy is Go's (§4.3)::

    Access-Control-Allow-Origin: *
    Access-Control-Allow-Methods: GET, PATCH, POST, PUT, DELETE, OPTIONS
    Access-Control-Allow-Headers: Content-Type, Authorization, X-API-Key, Cache-Control

Operators can restrict the allowed origins (§17 a23) with the environment
variable C{NP_CORS_ORIGINS}, parsed by L{parseAllowedOrigins}:

  - unset, empty or C{*}: the default, compatible policy above;
  - a comma-separated list of origins, for example
    C{NP_CORS_ORIGINS=https://dash.example.com,http://10.0.0.5:3000}: a
    response carries C{Access-Control-Allow-Origin} only when the request's
    C{Origin} header is one of them, and then echoes that origin; every
    response also carries C{Vary: Origin} so caches keep the answers apart.
    The methods and headers lines stay as above.

Each origin is C{scheme://host[:port]} with scheme C{http} or C{https}, no
path, query, fragment or user info (one trailing C{/} is tolerated).  Scheme
and host are compared case-insensitively.  C{null} is refused, and so is
C{*} mixed with other origins.  A bad value raises L{ValueError} naming it,
so the master refuses to start rather than guess.

Preflight requests (any C{OPTIONS}, spec §4.1) are answered 200 with an empty
body and no authentication; L{CorsPolicy.isPreflight} tells the app which
requests those are.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

from nodepass.master.messages import KEY_INVALID, KEY_REQUIRED
from nodepass.master.store import keyDigest

__all__ = [
    "ALLOW_HEADERS",
    "ALLOW_METHODS",
    "API_KEY_HEADER",
    "CORS_ORIGINS_ENV",
    "CorsPolicy",
    "KeyChecker",
    "corsPolicyFromEnvironment",
    "generateKey",
    "keyDigest",
    "parseAllowedOrigins",
]

#: The only request header that carries the API key (spec §5).
API_KEY_HEADER: Final = b"X-API-Key"

#: Number of random bytes in a key; shown as twice as many hex characters (spec §5).
KEY_BYTES: Final = 16

#: The environment variable that restricts CORS origins.
CORS_ORIGINS_ENV: Final = "NP_CORS_ORIGINS"

#: C{Access-Control-Allow-Methods} value (spec §4.3).
ALLOW_METHODS: Final = b"GET, PATCH, POST, PUT, DELETE, OPTIONS"

#: C{Access-Control-Allow-Headers} value (spec §4.3).
ALLOW_HEADERS: Final = b"Content-Type, Authorization, X-API-Key, Cache-Control"

_ALLOW_ORIGIN: Final = b"Access-Control-Allow-Origin"


def generateKey() -> str:
    """
    A new API key: 16 bytes from L{secrets}, as 32 lowercase hex characters
    (Go's C{generateAPIKey}).
    """
    return secrets.token_hex(KEY_BYTES)


class KeyChecker:
    """
    Checks C{X-API-Key} header values against the digest of the current key.

    Holds the digest only, never the key.  L{check} runs
    L{hmac.compare_digest} on digests, so its time does not depend on how much
    of a guess matches.
    """

    __slots__ = ("_digest",)

    def __init__(self, digest: str) -> None:
        """
        @param digest: the L{keyDigest} of the current key, as the store keeps
            it (64 lowercase hex characters).
        @raise ValueError: if C{digest} is not such a digest; an empty or
            malformed digest must never turn authentication off (§17 a4).
        """
        self._digest = _validDigest(digest)

    @classmethod
    def fromKey(cls, key: str) -> KeyChecker:
        """
        A checker for a plaintext key (for example one just generated).

        @raise ValueError: if C{key} is empty.
        """
        if not key:
            raise ValueError("the API key must not be empty")
        return cls(keyDigest(key))

    @property
    def digest(self) -> str:
        """
        The digest of the current key, for the store.
        """
        return self._digest

    def __repr__(self) -> str:
        return "<KeyChecker>"

    def rejection(self, headerValue: bytes | None) -> str | None:
        """
        Why a request carrying this C{X-API-Key} value must get 401, or
        C{None} if it is authenticated.

        @return: L{KEY_REQUIRED} for a missing or empty header, L{KEY_INVALID}
            for a wrong one, C{None} for the right key.
        """
        if not headerValue:
            return KEY_REQUIRED
        return None if self.check(headerValue) else KEY_INVALID

    def check(self, headerValue: bytes | None) -> bool:
        """
        Whether C{headerValue} (the raw C{X-API-Key} header, or C{None} if
        absent) is the current key.  Exact and case-sensitive, no trimming.
        """
        if not headerValue:
            return False
        try:
            candidate = headerValue.decode("utf-8")
        except UnicodeDecodeError:
            # A key is ASCII hex, so this can never be the key; the early
            # exit reveals nothing about the stored key.
            return False
        return hmac.compare_digest(keyDigest(candidate), self._digest)

    def regenerate(self) -> str:
        """
        Replace the key with a new one and return the new plaintext key.

        The old key fails from the next L{check} on (§5, §18 b20).  The
        caller persists L{digest} and hands the key to the one response that
        may carry it; it must not log it.
        """
        key = generateKey()
        self._digest = keyDigest(key)
        return key

    def replaceDigest(self, digest: str) -> None:
        """
        Switch to another stored digest (for example after an offline reset
        was loaded).

        @raise ValueError: if C{digest} is not a digest.
        """
        self._digest = _validDigest(digest)


_HEX: Final = frozenset("0123456789abcdef")


def _validDigest(digest: str) -> str:
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise ValueError("the API key digest must be 64 lowercase hex characters")
    return digest


def _normaliseOrigin(text: str) -> str:
    """
    The canonical form of one configured origin.

    @raise ValueError: if C{text} is not C{http(s)://host[:port]}.
    """
    original = text
    if text.endswith("/"):
        text = text[:-1]
    problem = f"invalid origin {original!r} in {CORS_ORIGINS_ENV}: expected scheme://host[:port]"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ValueError(problem) from e
    scheme = parts.scheme.lower()
    if (
        scheme not in ("http", "https")
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or "?" in text
        or "#" in text
        or parts.username is not None
        or parts.password is not None
    ):
        raise ValueError(problem)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


def parseAllowedOrigins(value: str | None) -> tuple[str, ...] | None:
    """
    Parse the C{NP_CORS_ORIGINS} setting.

    @param value: the raw setting, or C{None} if unset.
    @return: C{None} for the default policy (unset, blank or C{*}), or the
        normalised origins in order, without duplicates.
    @raise ValueError: for a malformed origin, C{null}, C{*} mixed with
        origins, or a list with no origin in it.
    """
    if value is None or not value.strip():
        return None
    entries = [entry.strip() for entry in value.split(",")]
    entries = [entry for entry in entries if entry]
    if entries == ["*"]:
        return None
    if not entries:
        raise ValueError(f"{CORS_ORIGINS_ENV} lists no origin: {value!r}")
    origins: list[str] = []
    for entry in entries:
        if entry == "*":
            raise ValueError(f"{CORS_ORIGINS_ENV}: '*' cannot be combined with other origins")
        if entry.lower() == "null":
            raise ValueError(f"{CORS_ORIGINS_ENV}: the 'null' origin cannot be allowed")
        origin = _normaliseOrigin(entry)
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


class CorsPolicy:
    """
    Sets the CORS response headers of spec §4.3, optionally restricted to a
    list of origins.
    """

    __slots__ = ("_allowed",)

    def __init__(self, allowedOrigins: tuple[str, ...] | None = None) -> None:
        """
        @param allowedOrigins: C{None} for the default policy
            (C{Access-Control-Allow-Origin: *}); otherwise the allowed
            origins, as L{parseAllowedOrigins} returns them (entries are
            normalised again here, so hand-written ones work too).
        @raise ValueError: for a malformed origin.
        """
        if allowedOrigins is None:
            self._allowed: frozenset[str] | None = None
        else:
            self._allowed = frozenset(_normaliseOrigin(o) for o in allowedOrigins)

    @property
    def restricted(self) -> bool:
        """
        Whether only configured origins are allowed.
        """
        return self._allowed is not None

    def allows(self, origin: str) -> bool:
        """
        Whether a request with this C{Origin} value gets it echoed back.
        """
        if self._allowed is None:
            return True
        try:
            return _normaliseOrigin(origin) in self._allowed
        except ValueError:
            return False

    def apply(self, request: IRequest) -> None:
        """
        Set the CORS headers on C{request}'s response.

        Default policy: exactly the three headers of §4.3.  Restricted policy:
        the methods and headers lines, C{Vary: Origin}, and
        C{Access-Control-Allow-Origin: <origin>} only if the request's
        C{Origin} is allowed.
        """
        request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS)
        request.setHeader(b"Access-Control-Allow-Headers", ALLOW_HEADERS)
        if self._allowed is None:
            request.setHeader(_ALLOW_ORIGIN, b"*")
            return
        _addVaryOrigin(request)
        raw = request.getHeader(b"origin")
        if raw is None:
            return
        try:
            origin = raw.decode("ascii")
        except UnicodeDecodeError:
            return
        if self.allows(origin):
            request.setHeader(_ALLOW_ORIGIN, raw)

    @staticmethod
    def isPreflight(request: IRequest) -> bool:
        """
        Whether C{request} is answered as a preflight: 200, empty body, no
        authentication.  Like Go, that is every C{OPTIONS} request, with or
        without C{Origin} and C{Access-Control-Request-Method} (§4.1).
        """
        return bytes(request.method).upper() == b"OPTIONS"


def _addVaryOrigin(request: IRequest) -> None:
    headers = request.responseHeaders
    existing = headers.getRawHeaders(b"vary") or []
    tokens = [t.strip().lower() for line in existing for t in line.split(b",")]
    if b"origin" in tokens or b"*" in tokens:
        return
    if existing:
        headers.setRawHeaders(b"vary", [b", ".join([*existing, b"Origin"])])
    else:
        headers.setRawHeaders(b"vary", [b"Origin"])


def corsPolicyFromEnvironment(environ: Mapping[str, str]) -> CorsPolicy:
    """
    The CORS policy that C{environ} (usually C{os.environ}) selects through
    C{NP_CORS_ORIGINS}.

    @raise ValueError: if the setting is malformed.
    """
    return CorsPolicy(parseAllowedOrigins(environ.get(CORS_ORIGINS_ENV)))
