"""
Tests for L{nodepass.master.auth}: API key checks and CORS headers (spec §4.1, §4.3, §5).
"""

from __future__ import annotations

import hmac
import re

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from nodepass.master import auth, store
from nodepass.master.auth import (
    ALLOW_HEADERS,
    ALLOW_METHODS,
    CorsPolicy,
    KeyChecker,
    corsPolicyFromEnvironment,
    generateKey,
    keyDigest,
    parseAllowedOrigins,
)
from nodepass.master.messages import KEY_INVALID, KEY_REQUIRED

KEY = "20c264f3d1816887cfdad1f6933ffc5c"


class KeyTests(SynchronousTestCase):
    def test_generateKeyFormat(self) -> None:
        """
        Keys are 32 lowercase hex characters (16 random bytes), never repeated.
        """
        keys = {generateKey() for _ in range(50)}
        self.assertEqual(len(keys), 50)
        for key in keys:
            self.assertRegex(key, r"\A[0-9a-f]{32}\Z")

    def test_digestIsTheStores(self) -> None:
        """
        The digest is the store's own function, not a copy.
        """
        self.assertIs(keyDigest, store.keyDigest)
        self.assertEqual(KeyChecker.fromKey(KEY).digest, store.keyDigest(KEY))


class KeyCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.checker = KeyChecker(keyDigest(KEY))

    def test_rightKey(self) -> None:
        self.assertTrue(self.checker.check(KEY.encode()))
        self.assertIsNone(self.checker.rejection(KEY.encode()))

    def test_missingOrEmpty(self) -> None:
        """
        A missing or empty header fails with "API key required" (capture 02).
        """
        for value in (None, b""):
            self.assertFalse(self.checker.check(value))
            self.assertEqual(self.checker.rejection(value), KEY_REQUIRED)
        self.assertEqual(KEY_REQUIRED, "Unauthorized: API key required")

    def test_wrongKey(self) -> None:
        """
        Comparison is exact: no trimming, case-sensitive (capture 03).
        """
        for value in (
            b"deadbeef",
            KEY.upper().encode(),
            (KEY + " ").encode(),
            (" " + KEY).encode(),
            KEY[:-1].encode(),
            b"\xff\xfe",
        ):
            self.assertFalse(self.checker.check(value), value)
            self.assertEqual(self.checker.rejection(value), KEY_INVALID)
        self.assertEqual(KEY_INVALID, "Unauthorized: Invalid API key")

    def test_constantTimeComparisonOfDigests(self) -> None:
        """
        The check goes through L{hmac.compare_digest}, on digests.
        """
        calls: list[tuple[str, str]] = []
        real = hmac.compare_digest

        def recording(a: str, b: str) -> bool:
            calls.append((a, b))
            return real(a, b)

        self.patch(hmac, "compare_digest", recording)
        self.assertFalse(self.checker.check(b"deadbeef"))
        self.assertTrue(self.checker.check(KEY.encode()))
        self.assertEqual(
            calls,
            [(keyDigest("deadbeef"), keyDigest(KEY)), (keyDigest(KEY), keyDigest(KEY))],
        )

    def test_regenerateInvalidatesOldKey(self) -> None:
        """
        After L{KeyChecker.regenerate} the old key fails at once and the new
        one works (spec §5, §18 b20, capture 71).
        """
        old = self.checker.digest
        new = self.checker.regenerate()
        self.assertRegex(new, r"\A[0-9a-f]{32}\Z")
        self.assertNotEqual(new, KEY)
        self.assertFalse(self.checker.check(KEY.encode()))
        self.assertEqual(self.checker.rejection(KEY.encode()), KEY_INVALID)
        self.assertTrue(self.checker.check(new.encode()))
        self.assertEqual(self.checker.digest, keyDigest(new))
        self.assertNotEqual(self.checker.digest, old)

    def test_neverLogsOrShowsKey(self) -> None:
        """
        Neither the key nor its digest appears in logs or in C{repr}.
        """
        with capturedLogs() as events:
            new = self.checker.regenerate()
            self.checker.check(b"deadbeef")
            self.checker.check(new.encode())
        self.assertEqual(events, [])
        self.assertNotIn(self.checker.digest, repr(self.checker))
        self.assertNotIn(new, repr(self.checker))

    def test_emptyKeyNeverDisablesAuth(self) -> None:
        """
        No checker can be built from an empty key or a malformed digest (§17 a4).
        """
        self.assertRaises(ValueError, KeyChecker.fromKey, "")
        for digest in ("", "x" * 64, keyDigest(KEY).upper(), keyDigest(KEY)[:-1]):
            self.assertRaises(ValueError, KeyChecker, digest)
            self.assertRaises(ValueError, self.checker.replaceDigest, digest)

    def test_replaceDigest(self) -> None:
        self.checker.replaceDigest(keyDigest("other"))
        self.assertFalse(self.checker.check(KEY.encode()))
        self.assertTrue(self.checker.check(b"other"))


def _request(method: bytes = b"GET", origin: bytes | None = None) -> DummyRequest:
    request = DummyRequest([b"api", b"v1", b"instances"])
    request.method = method
    if origin is not None:
        request.requestHeaders.setRawHeaders(b"origin", [origin])
    return request


def _headers(request: DummyRequest) -> dict[bytes, list[bytes]]:
    return {name.lower(): values for name, values in request.responseHeaders.getAllRawHeaders()}


DEFAULT_HEADERS = {
    b"access-control-allow-origin": [b"*"],
    b"access-control-allow-methods": [b"GET, PATCH, POST, PUT, DELETE, OPTIONS"],
    b"access-control-allow-headers": [b"Content-Type, Authorization, X-API-Key, Cache-Control"],
}


class CorsPolicyTests(SynchronousTestCase):
    def test_defaultHeadersExactly(self) -> None:
        """
        The default policy sets exactly Go's three headers (§4.3, captures 02, 60).
        """
        for origin in (None, b"http://example.com"):
            request = _request(origin=origin)
            CorsPolicy().apply(request)
            self.assertEqual(_headers(request), DEFAULT_HEADERS)
        self.assertEqual(ALLOW_METHODS, DEFAULT_HEADERS[b"access-control-allow-methods"][0])
        self.assertEqual(ALLOW_HEADERS, DEFAULT_HEADERS[b"access-control-allow-headers"][0])
        self.assertFalse(CorsPolicy().restricted)

    def test_restrictedAllowedOriginEchoed(self) -> None:
        policy = CorsPolicy(("https://dash.example.com", "http://10.0.0.5:3000"))
        self.assertTrue(policy.restricted)
        for origin in (b"https://dash.example.com", b"http://10.0.0.5:3000"):
            request = _request(origin=origin)
            policy.apply(request)
            expected = dict(DEFAULT_HEADERS)
            expected[b"access-control-allow-origin"] = [origin]
            expected[b"vary"] = [b"Origin"]
            self.assertEqual(_headers(request), expected)

    def test_restrictedOtherOriginNotAllowed(self) -> None:
        """
        A foreign or missing Origin gets no Allow-Origin header, but still C{Vary: Origin}.
        """
        policy = CorsPolicy(("https://dash.example.com",))
        for origin in (
            None,
            b"https://evil.example.com",
            b"http://dash.example.com",
            b"https://dash.example.com:8443",
            b"null",
            b"\xff",
        ):
            request = _request(origin=origin)
            policy.apply(request)
            headers = _headers(request)
            self.assertNotIn(b"access-control-allow-origin", headers, origin)
            self.assertEqual(headers[b"vary"], [b"Origin"])
            self.assertEqual(
                headers[b"access-control-allow-methods"],
                DEFAULT_HEADERS[b"access-control-allow-methods"],
            )

    def test_originCaseInsensitive(self) -> None:
        policy = CorsPolicy(("HTTPS://Dash.Example.COM/",))
        request = _request(origin=b"https://dash.example.com")
        policy.apply(request)
        self.assertEqual(
            _headers(request)[b"access-control-allow-origin"], [b"https://dash.example.com"]
        )

    def test_varyMerged(self) -> None:
        """
        An existing Vary header is extended, not replaced, and never doubled.
        """
        policy = CorsPolicy(("https://a.example",))
        request = _request(origin=b"https://a.example")
        request.setHeader(b"Vary", b"Accept-Encoding")
        policy.apply(request)
        policy.apply(request)
        self.assertEqual(_headers(request)[b"vary"], [b"Accept-Encoding, Origin"])

    def test_isPreflight(self) -> None:
        """
        Every OPTIONS request is a preflight, with or without Origin (captures 60, 61).
        """
        self.assertTrue(CorsPolicy.isPreflight(_request(b"OPTIONS")))
        self.assertTrue(CorsPolicy().isPreflight(_request(b"OPTIONS", b"http://example.com")))
        for method in (b"GET", b"POST", b"PATCH", b"DELETE", b"HEAD"):
            self.assertFalse(CorsPolicy.isPreflight(_request(method)))


class AllowedOriginsTests(SynchronousTestCase):
    def test_defaultValues(self) -> None:
        for value in (None, "", "   ", "*", " * ", "*,"):
            self.assertIsNone(parseAllowedOrigins(value), value)

    def test_list(self) -> None:
        self.assertEqual(
            parseAllowedOrigins(
                " https://Dash.Example.com/ ,http://10.0.0.5:3000,,https://dash.example.com,"
                "http://[::1]:8080"
            ),
            ("https://dash.example.com", "http://10.0.0.5:3000", "http://[::1]:8080"),
        )

    def test_invalid(self) -> None:
        for value in (
            "null",
            "*,https://a.example",
            "ftp://a.example",
            "https://a.example/path",
            "https://a.example?x=1",
            "https://a.example#x",
            "a.example",
            "https://user@a.example",
            "https://",
            "https://a.example:99999",
            ",,",
        ):
            with self.assertRaises(ValueError, msg=value) as caught:
                parseAllowedOrigins(value)
            self.assertIn("NP_CORS_ORIGINS", str(caught.exception))

    def test_fromEnvironment(self) -> None:
        self.assertFalse(corsPolicyFromEnvironment({}).restricted)
        policy = corsPolicyFromEnvironment({"NP_CORS_ORIGINS": "https://a.example"})
        self.assertTrue(policy.restricted)
        self.assertTrue(policy.allows("https://a.example"))
        self.assertFalse(policy.allows("https://b.example"))
        self.assertRaises(ValueError, corsPolicyFromEnvironment, {"NP_CORS_ORIGINS": "nope"})

    def test_documented(self) -> None:
        """
        The module docstring documents the setting.
        """
        assert auth.__doc__ is not None
        self.assertTrue(re.search(r"NP_CORS_ORIGINS", auth.__doc__))
