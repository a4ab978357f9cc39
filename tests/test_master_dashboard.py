"""
Tests for the dashboard side of L{nodepass.master.app} and for L{nodepass.master.sessions}:
the redirect from C{/}, the page's files and their security headers, signing in and out
with the session cookie, the cookie authenticating API calls, CSRF refusals, the end of
every session when the key is regenerated, and the bound on failed sign-ins.

In memory (L{StubTreq} over a real registry on a L{Clock}), like C{tests.test_master_app}.
"""

from __future__ import annotations

import json
import os
import re
from http.cookies import SimpleCookie
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nodepass.master.app import DASHBOARD_DIRECTORY, DASHBOARD_FILES, DASHBOARD_HEADERS
from nodepass.master.metrics import MasterMetrics
from nodepass.master.sessions import (
    CSRF_REFUSED,
    FAILURE_LIMIT,
    FAILURE_WINDOW,
    NO_SESSION,
    SESSION_LIFETIME,
    TOO_MANY_SIGN_INS,
    SessionStore,
    SignInLimiter,
)
from tests.test_master_app import (
    BASE,
    KEY,
    NEW_KEY,
    PSEUDO_ENCODED,
    SERVER,
    Answer,
    AppTestCase,
    corsHeaders,
)

P = "/api/v1"
SESSION = "/dashboard/session"
TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
}
KEY_INVALID = "Unauthorized: Invalid API key"
KEY_REQUIRED = "Unauthorized: API key required"


class DashboardTestCase(AppTestCase):
    """
    A master API serving the dashboard from a directory of small stand-in files.
    """

    def setUp(self) -> None:
        super().setUp()
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        for name in DASHBOARD_FILES:
            with open(os.path.join(self.directory, name), "w") as f:
                f.write(f"/* {name} */\n")
        self.reads: list[str] = []
        self.api = self.serveDashboard()

    def serveDashboard(self, **options: Any) -> Any:
        def readFile(path: str) -> Deferred[bytes]:
            self.reads.append(os.path.basename(path))
            with open(path, "rb") as f:
                return succeed(f.read())

        arguments: dict[str, Any] = {
            "dashboardDirectory": self.directory,
            "readFile": readFile,
            "sessions": SessionStore(self.clock),
        }
        arguments.update(options)
        self.api = self.serve(**arguments)
        return self.api

    def signIn(self, key: str = KEY) -> tuple[str, str]:
        """
        Sign in from another browser (a client of its own: the stub keeps cookies); return
        the cookie's value and the CSRF token.
        """
        browser = StubTreq(self.api.resource())
        d = browser.post(BASE + P + SESSION, data=json.dumps({"key": key}).encode())
        browser.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(treq.content(response))
        answer = Answer(response.code, response.headers, body)
        self.assertEqual(answer.code, 200, answer.body)
        return cookieOf(answer).value, answer.json()["csrf"]

    def withCookie(
        self,
        method: str,
        path: str,
        token: str,
        csrf: str | None = None,
        body: str | None = None,
    ) -> Answer:
        headers = {"Cookie": f"np_session={token}"}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return self.call(method, path, body, headers)

    def unfollowed(self, method: str, path: str) -> Answer:
        """
        One request to the absolute C{path}, without following a redirect.
        """
        d = self.stub.request(method, BASE + path, allow_redirects=False)
        self.pump()
        response = self.successResultOf(d)
        body = self.successResultOf(treq.content(response))
        return Answer(response.code, response.headers, body)

    def assertError(self, answer: Answer, code: int, message: str) -> None:
        """
        C{{"error": message}} with C{code} (dashboard routes carry no CORS headers, so
        this does not look for them).
        """
        self.assertEqual(answer.code, code, answer.body)
        self.assertEqual(answer.header("Content-Type"), [b"application/json"])
        self.assertEqual(answer.body, b'{"error":' + json.dumps(message).encode() + b"}\n")

    def assertSecurityHeaders(self, answer: Answer) -> None:
        for name, value in DASHBOARD_HEADERS.items():
            self.assertEqual(answer.header(name.decode()), [value], name)


def cookieOf(answer: Answer) -> Any:
    lines = answer.header("Set-Cookie")
    assert lines is not None and len(lines) == 1, lines
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(lines[0].decode("ascii"))
    return cookie["np_session"]


class RedirectTests(DashboardTestCase):
    def test_rootRedirects(self) -> None:
        for method in ("GET", "HEAD"):
            answer = self.unfollowed(method, "/")
            self.assertEqual(answer.code, 302)
            self.assertEqual(answer.header("Location"), [b"/api/v1/dashboard/"])
            self.assertEqual(answer.body, b"")

    def test_otherMethodsAtTheRootAreUnknown(self) -> None:
        for method in ("POST", "PUT", "DELETE"):
            self.assertNotFoundPage(self.fetch(method, "/", headers={}))

    def test_dashboardWithoutSlash(self) -> None:
        answer = self.unfollowed("GET", P + "/dashboard")
        self.assertEqual(answer.code, 302)
        self.assertEqual(answer.header("Location"), [b"/api/v1/dashboard/"])
        self.assertSecurityHeaders(answer)

    def test_prefixIsEncoded(self) -> None:
        self.serveDashboard(prefix="/my panel")
        answer = self.unfollowed("GET", "/")
        self.assertEqual(answer.header("Location"), [b"/my%20panel/v1/dashboard/"])

    def test_noDashboardNoRedirect(self) -> None:
        self.serve()
        self.assertNotFoundPage(self.fetch("GET", "/", headers={}))
        self.assertNotFoundPage(self.call("GET", "/dashboard/", headers={}))
        self.assertNotFoundPage(self.call("POST", SESSION, json.dumps({"key": KEY}), {}))


class FileTests(DashboardTestCase):
    def test_files(self) -> None:
        for name in DASHBOARD_FILES:
            answer = self.call("GET", f"/dashboard/{name}", headers={})
            self.assertEqual((answer.code, answer.body), (200, f"/* {name} */\n".encode()))
            self.assertEqual(answer.header("Content-Type"), [TYPES[os.path.splitext(name)[1]]])
            self.assertEqual(answer.header("Cache-Control"), [b"no-cache"])
            self.assertSecurityHeaders(answer)
            self.assertEqual(corsHeaders(answer.headers), {})

    def test_indexAtTheDirectory(self) -> None:
        answer = self.call("GET", "/dashboard/", headers={})
        self.assertEqual(answer.body, b"/* index.html */\n")
        self.assertEqual(answer.header("Content-Type"), [b"text/html; charset=utf-8"])
        self.assertSecurityHeaders(answer)

    def test_readOnce(self) -> None:
        for _ in range(3):
            self.call("GET", "/dashboard/app.js", headers={})
        self.assertEqual(self.reads, ["app.js"])

    def test_unknownFiles(self) -> None:
        with open(os.path.join(self.directory, "secret.txt"), "w") as f:
            f.write("not a dashboard file\n")
        for name in ("secret.txt", "x/app.js", "%2E%2E%2Fapp.js", "APP.JS", "app.js/"):
            self.assertNotFoundPage(self.call("GET", f"/dashboard/{name}", headers={}))

    def test_methods(self) -> None:
        self.assertEqual(self.call("HEAD", "/dashboard/app.css", headers={}).code, 200)
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            answer = self.call(method, "/dashboard/app.css", headers={})
            self.assertError(answer, 405, "Method not allowed")

    def test_contentSecurityPolicy(self) -> None:
        policy = DASHBOARD_HEADERS[b"Content-Security-Policy"].decode()
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        self.assertEqual(directives["default-src"], "'self'")
        self.assertEqual(directives["script-src"], "'self'")
        self.assertEqual(directives["frame-ancestors"], "'none'")
        self.assertNotIn("unsafe-inline", policy)
        self.assertNotIn("unsafe-eval", policy)


class PackagedPageTests(SynchronousTestCase):
    """
    The files the master really serves: one page, scripts as modules from this origin only.
    """

    def read(self, name: str) -> str:
        with open(os.path.join(DASHBOARD_DIRECTORY, name), encoding="utf-8") as f:
            return f.read()

    def test_everyFileIsThere(self) -> None:
        for name in DASHBOARD_FILES:
            self.assertTrue(os.path.isfile(os.path.join(DASHBOARD_DIRECTORY, name)), name)

    def test_noInlineScriptOrStyle(self) -> None:
        page = self.read("index.html")
        self.assertIn('<script type="module" src="app.js"></script>', page)
        self.assertEqual(page.count("<script"), 1)
        self.assertNotIn("style=", page)
        self.assertIsNone(re.search(r"\son[a-z]+=", page))  # no onclick= and the like
        for name in DASHBOARD_FILES:
            text = self.read(name)
            self.assertIsNone(re.search(r"(src|href)=\"(https?:)?//", text), name)
            self.assertNotIn("import(", text, name)

    def test_neverStoresTheKey(self) -> None:
        for name in ("app.js", "logic.js", "chart.js"):
            text = self.read(name)
            self.assertNotIn("localStorage", text, name)
            self.assertNotIn("sessionStorage", text, name)
            self.assertNotIn("X-API-Key", text, name)


class SignInTests(DashboardTestCase):
    def test_rightKey(self) -> None:
        answer = self.call("POST", SESSION, json.dumps({"key": KEY}), headers={})
        self.assertEqual(answer.code, 200, answer.body)
        self.assertSecurityHeaders(answer)
        self.assertEqual(answer.header("Cache-Control"), [b"no-store"])
        value = answer.json()
        self.assertEqual(set(value), {"csrf", "expires"})
        self.assertEqual(value["expires"], int(SESSION_LIFETIME))
        self.assertGreaterEqual(len(value["csrf"]), 40)
        self.assertNotIn(KEY.encode(), answer.body)
        cookie = cookieOf(answer)
        self.assertGreaterEqual(len(cookie.value), 40)
        self.assertNotEqual(cookie.value, value["csrf"])
        self.assertNotIn(KEY, answer.header("Set-Cookie")[0].decode())  # type: ignore[index]
        self.assertEqual(cookie["path"], "/api/v1")
        self.assertEqual(cookie["max-age"], str(int(SESSION_LIFETIME)))
        self.assertTrue(cookie["httponly"])
        self.assertEqual(cookie["samesite"], "Strict")
        self.assertFalse(cookie["secure"])

    def test_secureOverTLS(self) -> None:
        self.serveDashboard(secureCookies=True)
        answer = self.call("POST", SESSION, json.dumps({"key": KEY}), headers={})
        self.assertTrue(cookieOf(answer)["secure"])

    def test_pathFollowsThePrefix(self) -> None:
        self.serveDashboard(prefix="/admin")
        answer = self.fetch("POST", "/admin/v1" + SESSION, json.dumps({"key": KEY}), {})
        self.assertEqual(cookieOf(answer)["path"], "/admin/v1")

    def test_wrongKey(self) -> None:
        answer = self.call("POST", SESSION, json.dumps({"key": "0" * 32}), headers={})
        self.assertError(answer, 401, KEY_INVALID)
        self.assertIsNone(answer.header("Set-Cookie"))
        self.assertEqual(len(self.api.sessions), 0)

    def test_noKey(self) -> None:
        for body in ("{}", '{"key":""}', '{"key":5}', ""):
            answer = self.call("POST", SESSION, body, headers={})
            self.assertError(answer, 401, KEY_REQUIRED)
            self.assertIsNone(answer.header("Set-Cookie"))

    def test_badBody(self) -> None:
        self.assertError(self.call("POST", SESSION, "[1]", headers={}), 400, "Invalid request body")

    def test_theKeyHeaderIsNotASignIn(self) -> None:
        answer = self.call("POST", SESSION, "{}")  # X-API-Key only
        self.assertError(answer, 401, KEY_REQUIRED)

    def test_sessionState(self) -> None:
        # (Before signing in: the stub client keeps the cookies it is given.)
        self.assertError(self.call("GET", SESSION, headers={}), 401, NO_SESSION)
        token, csrf = self.signIn()
        answer = self.withCookie("GET", SESSION, token)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json()["csrf"], csrf)
        self.assertError(self.withCookie("GET", SESSION, "forged"), 401, NO_SESSION)

    def test_notReady(self) -> None:
        self.api.ready = False
        answer = self.call("POST", SESSION, json.dumps({"key": KEY}), headers={})
        self.assertError(answer, 503, "Master is starting")

    def test_methods(self) -> None:
        for method in ("PUT", "PATCH"):
            self.assertError(self.call(method, SESSION, headers={}), 405, "Method not allowed")

    def test_signingInAgainEndsThePreviousSession(self) -> None:
        first, _ = self.signIn()
        answer = self.withCookie("POST", SESSION, first, body=json.dumps({"key": KEY}))
        second = cookieOf(answer).value
        self.assertNotEqual(first, second)
        self.assertEqual(self.withCookie("GET", "/instances", first).code, 401)
        self.assertEqual(self.withCookie("GET", "/instances", second).code, 200)


class CookieAuthenticationTests(DashboardTestCase):
    def test_readsWithTheCookie(self) -> None:
        token, _ = self.signIn()
        listed = self.assertJSON(self.withCookie("GET", "/instances", token), 200)
        self.assertEqual([i["id"] for i in listed], ["********"])
        self.assertEqual(listed[0]["url"], "")  # the key is shown to key holders only
        self.assertJSON(self.withCookie("GET", "/info", token), 200)

    def test_eventStreamWithTheCookie(self) -> None:
        token, _ = self.signIn()
        d = self.stub.get(self.url("/events"), headers={"Cookie": f"np_session={token}"})
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["text/event-stream"])

    def url(self, path: str) -> str:
        return "http://127.0.0.1:9090" + P + path

    def test_changeNeedsTheCSRFToken(self) -> None:
        token, csrf = self.signIn()
        body = json.dumps({"url": SERVER})
        for given in (None, "", "wrong", csrf + "x"):
            answer = self.withCookie("POST", "/instances", token, given, body)
            self.assertError(answer, 403, CSRF_REFUSED)
        self.assertEqual(self.store.puts, [])
        created = self.assertJSON(self.withCookie("POST", "/instances", token, csrf, body), 201)
        id = created["id"]
        patch = json.dumps({"alias": "web"})
        for method, path, data in (
            ("PATCH", f"/instances/{id}", patch),
            ("PUT", f"/instances/{id}", json.dumps({"url": SERVER + "&x=1"})),
            ("DELETE", f"/instances/{id}", None),
            ("POST", "/info", json.dumps({"alias": "edge"})),
        ):
            self.assertError(self.withCookie(method, path, token, None, data), 403, CSRF_REFUSED)
        self.assertEqual(self.get(id)["alias"], "")
        answer = self.withCookie("PATCH", f"/instances/{id}", token, csrf, patch)
        self.assertEqual(self.assertJSON(answer, 200)["alias"], "web")
        self.assertEmpty(self.withCookie("DELETE", f"/instances/{id}", token, csrf), 204)

    def test_theKeyHeaderIsJudgedAlone(self) -> None:
        token, _ = self.signIn()
        headers = {"Cookie": f"np_session={token}", "X-API-Key": "wrong"}
        self.assertError(self.call("GET", "/instances", headers=headers), 401, KEY_INVALID)
        headers["X-API-Key"] = KEY
        answer = self.call("POST", "/instances", json.dumps({"url": SERVER}), headers)
        self.assertEqual(answer.code, 201)  # no CSRF token needed with the key

    def test_metricsWithTheCookie(self) -> None:
        """
        The master page links to C{P/v1/metrics}, which the cookie opens (below its path).
        """
        metrics = MasterMetrics(
            self.registry.instanceObjects,
            self.registry.restartCount,
            lambda: self.hub.subscriberCount,
            "9.9.9",
        )
        self.serveDashboard(metrics=metrics)
        token, _ = self.signIn()
        answer = self.withCookie("GET", "/metrics", token)
        self.assertEqual(answer.code, 200)
        self.assertIn(b"nodepass_build_info", answer.body)
        self.assertEqual(self.withCookie("GET", "/metrics", "forged").code, 401)

    def test_noCookieNoChange(self) -> None:
        self.assertError(self.call("GET", "/instances", headers={}), 401, KEY_REQUIRED)
        answer = self.withCookie("GET", "/instances", "forged")
        self.assertError(answer, 401, KEY_REQUIRED)

    def test_preflightIsUnchanged(self) -> None:
        self.assertEmpty(self.call("OPTIONS", "/instances", headers={}), 200)


class SignOutTests(DashboardTestCase):
    def test_signOut(self) -> None:
        token, csrf = self.signIn()
        self.assertError(self.withCookie("DELETE", SESSION, token), 403, CSRF_REFUSED)
        self.assertEqual(self.withCookie("GET", "/instances", token).code, 200)
        answer = self.withCookie("DELETE", SESSION, token, csrf)
        self.assertEqual(answer.code, 204)
        cleared = cookieOf(answer)
        self.assertEqual((cleared.value, cleared["max-age"]), ("", "0"))
        self.assertEqual(cleared["path"], "/api/v1")
        self.assertError(self.withCookie("GET", "/instances", token), 401, KEY_REQUIRED)
        self.assertError(self.withCookie("GET", SESSION, token), 401, NO_SESSION)

    def test_signOutWithoutSession(self) -> None:
        self.assertEqual(self.call("DELETE", SESSION, headers={}).code, 204)

    def test_expiry(self) -> None:
        token, _ = self.signIn()
        self.clock.advance(SESSION_LIFETIME - 1)
        answer = self.withCookie("GET", SESSION, token)
        self.assertEqual(answer.json()["expires"], 1)
        self.clock.advance(1)
        self.assertError(self.withCookie("GET", "/instances", token), 401, KEY_REQUIRED)
        self.assertEqual(len(self.api.sessions), 0)

    def test_regenerationEndsEverySession(self) -> None:
        first, _ = self.signIn()
        second, _ = self.signIn()
        answer = self.call("PATCH", f"/instances/{PSEUDO_ENCODED}", '{"action":"restart"}')
        self.assertEqual(answer.json()["url"], NEW_KEY)
        for token in (first, second):
            self.assertError(self.withCookie("GET", "/instances", token), 401, KEY_REQUIRED)
        self.assertError(self.withCookie("GET", SESSION, second), 401, NO_SESSION)
        self.assertError(self.call("POST", SESSION, json.dumps({"key": KEY}), {}), 401, KEY_INVALID)
        token, _ = self.signIn(NEW_KEY)
        self.assertEqual(self.withCookie("GET", "/instances", token).code, 200)


class FailedSignInTests(DashboardTestCase):
    def test_bounded(self) -> None:
        wrong = json.dumps({"key": "f" * 32})
        for _ in range(FAILURE_LIMIT):
            self.assertEqual(self.call("POST", SESSION, wrong, headers={}).code, 401)
        answer = self.call("POST", SESSION, json.dumps({"key": KEY}), headers={})
        self.assertError(answer, 429, TOO_MANY_SIGN_INS)
        self.assertEqual(answer.header("Retry-After"), [b"%d" % FAILURE_WINDOW])
        self.assertIsNone(answer.header("Set-Cookie"))
        self.clock.advance(FAILURE_WINDOW - 10)
        answer = self.call("POST", SESSION, wrong, headers={})
        self.assertEqual(answer.header("Retry-After"), [b"10"])
        self.clock.advance(10)
        self.signIn()

    def test_successForgets(self) -> None:
        wrong = json.dumps({"key": "f" * 32})
        for _ in range(FAILURE_LIMIT - 1):
            self.call("POST", SESSION, wrong, headers={})
        self.signIn()
        for _ in range(FAILURE_LIMIT - 1):
            self.assertEqual(self.call("POST", SESSION, wrong, headers={}).code, 401)


class SessionStoreTests(SynchronousTestCase):
    def test_boundedInNumber(self) -> None:
        store = SessionStore(Clock(), maxSessions=2)
        first, second, third = (store.open("d" * 64) for _ in range(3))
        self.assertIsNone(store.find(first.token, "d" * 64))
        self.assertIs(store.find(second.token, "d" * 64), second)
        self.assertIs(store.find(third.token, "d" * 64), third)

    def test_otherKeyDrops(self) -> None:
        store = SessionStore(Clock())
        session = store.open("a" * 64)
        self.assertIsNone(store.find(session.token, "b" * 64))
        self.assertIsNone(store.find(session.token, "a" * 64))  # dropped for good

    def test_tokensAreUnreadableInRepr(self) -> None:
        session = SessionStore(Clock()).open("a" * 64)
        self.assertNotIn(session.token, repr(session))
        self.assertNotIn(session.csrf, repr(session))

    def test_limiterForgetsOldestAddresses(self) -> None:
        limiter = SignInLimiter(Clock(), limit=1, maxAddresses=2)
        for address in ("a", "b", "c"):
            limiter.failed(address)
        self.assertIsNone(limiter.retryAfter("a"))
        self.assertIsNotNone(limiter.retryAfter("c"))
