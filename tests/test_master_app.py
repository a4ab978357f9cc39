"""
Tests for L{nodepass.master.app}: the master's HTTP face (master spec §2-§10, §17, §18).

Requests go through L{StubTreq} (in memory, synchronous) to L{MasterAPI.resource} over a real
L{Registry} (the real SQLite store driven synchronously, the recording fake supervisor of
C{tests.test_master_registry}) and a real L{EventHub}, all on a L{Clock}.  Raw HTTP bytes go
through an L{HTTPChannel} on a L{StringTransport} where the exact wire format matters (the
body cap of L{LimitedRequest}).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import treq
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel

from nodepass.master.app import (
    MAX_BODY,
    REQUEST_DEADLINE,
    LimitedRequest,
    MasterAPI,
    MasterInfo,
)
from nodepass.master.auth import CorsPolicy, KeyChecker
from nodepass.master.events import RETRY_BLOCK, EventHub
from nodepass.master.openapi import DOCS_STATIC_FILES
from nodepass.master.registry import PUT_RESTART_DELAY, MasterSettings, Registry
from nodepass.master.store import StoredInstance, SyncStore
from nodepass.master.supervisor import Event, Status
from nodepass.master.sysinfo import SYSTEM_FIELDS, goArch, goOS
from nodepass.master.tcping import ProbeResult
from nodepass.stats import Checkpoint
from nodepass.throttle import FailureThrottle
from tests.test_master_openapi import INFO_INTEGERS, INFO_STRINGS
from tests.test_master_registry import (
    CLIENT,
    CLIENT_CONFIG,
    FIELDS,
    SERVER,
    SERVER_CONFIG,
    SERVER_URL,
    FakeSupervisor,
    SyncFacade,
)

PREFIX = "/api"
P = "/api/v1"
BASE = "http://127.0.0.1:9090"
PSEUDO = "********"
PSEUDO_ENCODED = "%2A%2A%2A%2A%2A%2A%2A%2A"
KEY = "5f0c2a9e4b7d41c8a3e6f1029d8b7c6e"
NEW_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
SETTINGS = MasterSettings(log="info", tls="1")
CLIENT_URL = "client://srv:10101/127.0.0.1:8080?log=info"
TOO_LONG = "x" * 257
ALIAS_TOO_LONG = "Instance alias exceeds maximum length 256"
ID_REQUIRED = "Instance ID is required"
VALID_BODY = json.dumps({"url": SERVER}).encode()

#: The system part of C{/info}, as a L{nodepass.master.sysinfo.collect} would give it.
SYSTEM = {name: 1000 + n for n, name in enumerate(SYSTEM_FIELDS)} | {"cpu": 7}

#: Every key of C{/info} (§8.8).
INFO_KEYS = INFO_STRINGS | INFO_INTEGERS

#: The CORS lines of every registered route under the default policy (§4.3).
CORS = {
    b"Access-Control-Allow-Origin": [b"*"],
    b"Access-Control-Allow-Methods": [b"GET, PATCH, POST, PUT, DELETE, OPTIONS"],
    b"Access-Control-Allow-Headers": [b"Content-Type, Authorization, X-API-Key, Cache-Control"],
}

#: The protected routes; C{{id}} stands for an existing instance's id (L{protectedRoutes}).
PROTECTED = (
    "/instances",
    "/instances/{id}",
    f"/instances/{PSEUDO}",
    "/instances/unknownid",
    "/events",
    "/info",
    "/tcping",
)
METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")

UNKNOWN_PATHS = (
    "/",
    "/api",
    "/api/v1",
    "/api/v1/",
    "/api/v1/nope",
    "/api/v2/instances",
    "/api/v2/info",
    "/api/v1/Instances",
    "/api/v1/INFO",
    "/api/v1/instancesx",
    "/api/v1/info/",
    "/api/v1/docs/",
    "/api/v1/docs/static/swagger-ui.css",
)


@attrs.frozen
class Answer:
    """
    One response as the client saw it.
    """

    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> list[bytes] | None:
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return None if values is None else list(values)

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.frozen
class RawExchange:
    """
    One request over a raw channel: the response bytes, whether the L{LimitedRequest}
    flagged its body as too large, and the most body bytes it held at once.
    """

    response: bytes
    tooLarge: bool
    kept: int


class FakeTCPing:
    """
    Answers every probe at once and remembers the targets.
    """

    def __init__(self) -> None:
        self.targets: list[str] = []

    def probe(self, target: str) -> Deferred[ProbeResult]:
        self.targets.append(target)
        return succeed({"target": target, "connected": True, "latency": 3, "error": None})


class CountingFacade(SyncFacade):
    """
    The synchronous store facade, counting the instance writes.
    """

    def __init__(self, core: SyncStore) -> None:
        super().__init__(core)
        self.puts: list[StoredInstance] = []

    def put(self, record: StoredInstance) -> Deferred[None]:
        self.puts.append(record)
        return super().put(record)


class WatchedHub(EventHub):
    """
    A real hub that also remembers what was published (kind and instance id).
    """

    def __init__(self, clock: Clock, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        super().__init__(clock, snapshot)
        self.published: list[tuple[str, str | None]] = []
        self.shutdowns = 0

    def publish(self, eventType: str, instance: Mapping[str, Any] | None, logs: str = "") -> None:
        self.published.append((eventType, None if instance is None else instance["id"]))
        super().publish(eventType, instance, logs)

    def shutdown(self) -> None:
        self.shutdowns += 1
        super().shutdown()


class BrokenRegistry:
    """
    Authenticates the key, then fails to list (as a Deferred, or by raising).
    """

    keyChecker = KeyChecker.fromKey(KEY)

    def __init__(self, raising: bool) -> None:
        self.raising = raising

    def list(self, key: str = "") -> Deferred[Any]:
        if self.raising:
            raise ValueError("broken")
        return fail(ValueError("broken"))


def checkpoint(**traffic: int) -> Checkpoint:
    """
    A CHECK_POINT with the given traffic counters (the others 0).
    """
    values = {"tcprx": 0, "tcptx": 0, "udprx": 0, "udptx": 0} | traffic
    return Checkpoint(mode=1, ping=2, pool=3, tcps=4, udps=5, **values)


def protectedRoutes(id: str) -> list[str]:
    """
    L{PROTECTED} with C{id} as the existing instance.
    """
    return [path.format(id=id) for path in PROTECTED]


def corsHeaders(headers: Headers) -> dict[bytes, list[bytes]]:
    """
    The C{Access-Control-*} response headers.
    """
    return {
        name: list(values)
        for name, values in headers.getAllRawHeaders()
        if name.lower().startswith(b"access-control-")
    }


def sseEvents(body: bytes) -> list[dict[str, Any]]:
    """
    The JSON payloads of the C{event: instance} blocks of an SSE body, checking the framing.
    """
    events = []
    for block in body.split(b"\n\n"):
        if not block or block == RETRY_BLOCK.strip():
            continue
        name, data = block.split(b"\n")
        assert name == b"event: instance", block
        assert data.startswith(b"data: "), block
        events.append(json.loads(data[len(b"data: ") :]))
    return events


class AppTestCase(SynchronousTestCase):
    """
    A loaded registry behind a ready L{MasterAPI}, and helpers to talk to it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        core = SyncStore(self.mktemp())
        core.open()
        self.addCleanup(core.close)
        self.store = CountingFacade(core)
        self.hub = WatchedHub(self.clock, lambda: self.registry.snapshot())
        keys = iter([KEY, NEW_KEY])
        self.registry = Registry(
            self.clock, self.store, FakeSupervisor, self.hub, SETTINGS, newKey=lambda: next(keys)
        )
        self.supervisor: FakeSupervisor = self.registry.supervisor  # type: ignore[assignment]
        loaded = self.successResultOf(self.registry.load(autoStart=False))
        self.assertEqual(loaded.createdKey, KEY)
        self.tcping = FakeTCPing()
        self.api = self.serve()

    def serve(self, **options: Any) -> MasterAPI:
        """
        Serve a new ready L{MasterAPI} over the registry; C{options} override its arguments.
        """
        arguments: dict[str, Any] = {
            "registry": self.registry,
            "hub": self.hub,
            "tcping": self.tcping,
            "systemInfo": lambda: succeed(dict(SYSTEM)),
            "info": MasterInfo(SETTINGS, "0.0.0.0", self.clock),
            "prefix": PREFIX,
        }
        arguments.update(options)
        api = MasterAPI(**arguments)
        api.ready = True
        self.stub: Any = StubTreq(api.resource())
        return api

    # -- requests ------------------------------------------------------------------------------

    def send(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Deferred[Answer]:
        """
        Start a request; C{headers} default to the right API key.
        """
        if headers is None:
            headers = {"X-API-Key": KEY}
        if isinstance(body, str):
            body = body.encode("utf-8")
        d = self.stub.request(method, BASE + path, headers=dict(headers), data=body)

        def read(response: Any) -> Deferred[Answer]:
            content: Deferred[bytes] = treq.content(response)
            return content.addCallback(lambda data: Answer(response.code, response.headers, data))

        result: Deferred[Answer] = d.addCallback(read)
        return result

    def pump(self) -> None:
        self.stub.flush()

    def finish(self, d: Deferred[Answer]) -> Answer:
        self.pump()
        return self.successResultOf(d)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """
        One request to C{P + path}.
        """
        return self.fetch(method, P + path, body, headers)

    def fetch(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """
        One request to the absolute C{path}.
        """
        return self.finish(self.send(method, path, body, headers))

    def create(self, url: str = SERVER, alias: str = "") -> dict[str, Any]:
        answer = self.call("POST", "/instances", json.dumps({"url": url, "alias": alias}))
        self.assertEqual(answer.code, 201, answer.body)
        created: dict[str, Any] = answer.json()
        return created

    def get(self, id: str) -> dict[str, Any]:
        answer = self.call("GET", f"/instances/{id}")
        self.assertEqual(answer.code, 200, answer.body)
        value: dict[str, Any] = answer.json()
        return value

    # -- assertions ----------------------------------------------------------------------------

    def assertCors(self, answer: Answer) -> None:
        """
        Exactly the three CORS lines of §4.3, and no other C{Access-Control-*} header.
        """
        self.assertEqual(corsHeaders(answer.headers), CORS)

    def assertJSON(self, answer: Answer, code: int, value: Any = None) -> Any:
        """
        A JSON answer (§4.2): the status, C{Content-Type: application/json} exactly, one value
        and a newline, the CORS headers, no C{Allow}; C{value} if given.
        """
        self.assertEqual(answer.code, code, answer.body)
        self.assertEqual(answer.header("Content-Type"), [b"application/json"])
        self.assertTrue(answer.body.endswith(b"\n"), answer.body)
        self.assertEqual(answer.body.count(b"\n"), 1, answer.body)
        self.assertEqual(answer.header("Allow"), None)
        self.assertCors(answer)
        decoded = answer.json()
        if value is not None:
            self.assertEqual(decoded, value)
        return decoded

    def assertError(self, answer: Answer, code: int, message: str) -> None:
        """
        C{{"error": message}} with C{code}, byte for byte as Go writes it.
        """
        self.assertJSON(answer, code)
        expected = b'{"error":' + json.dumps(message).encode() + b"}\n"
        self.assertEqual(answer.body, expected)

    def assertNotFoundPage(self, answer: Answer) -> None:
        """
        Go's mux 404 (§3): plain text, no CORS.
        """
        self.assertEqual(answer.code, 404)
        self.assertEqual(answer.body, b"404 page not found\n")
        self.assertEqual(answer.header("Content-Type"), [b"text/plain; charset=utf-8"])
        self.assertEqual(corsHeaders(answer.headers), {})

    def assertEmpty(self, answer: Answer, code: int) -> None:
        """
        An answer with no body and no C{Content-Type} (OPTIONS, DELETE).
        """
        self.assertEqual(answer.code, code)
        self.assertEqual(answer.body, b"")
        self.assertEqual(answer.header("Content-Type"), None)
        self.assertCors(answer)

    def assertUnchanged(self, id: str, before: dict[str, Any], writes: int) -> None:
        """
        Nothing about instance C{id} changed: same object, no store write, no event.
        """
        self.assertEqual(self.get(id), before)
        self.assertEqual(len(self.store.puts), writes)
        self.assertEqual(self.hub.published, [])


class ProcessingOrderTests(AppTestCase):
    """
    §4.1: CORS, then OPTIONS, then the key, then the handler (400, 404, 405).
    """

    def setUp(self) -> None:
        super().setUp()
        self.instanceId = self.create()["id"]

    def test_optionsOnEveryRoute(self) -> None:
        """
        OPTIONS answers 200 with an empty body and the CORS headers on every registered
        route, known id or not, without a key.
        """
        paths = [
            *protectedRoutes(self.instanceId),
            "/instances/",
            f"/instances/{PSEUDO_ENCODED}",
            "/openapi.json",
        ]
        for path in [*paths, "/docs"]:
            for headers in ({}, {"X-API-Key": "wrong"}):
                answer = self.call("OPTIONS", path, headers=headers)
                self.assertEmpty(answer, 200)

    def test_keyRequired(self) -> None:
        """
        A missing or empty C{X-API-Key} gets 401 C{Unauthorized: API key required} on every
        protected route, whatever the method (so before any 405).
        """
        for path in protectedRoutes(self.instanceId):
            for method in METHODS:
                for headers in ({}, {"X-API-Key": ""}):
                    answer = self.call(method, path, "{}", headers)
                    self.assertError(answer, 401, "Unauthorized: API key required")

    def test_keyInvalid(self) -> None:
        """
        A wrong key, including the right one in another case or cut short, gets 401
        C{Unauthorized: Invalid API key}; no other header or parameter authenticates (§5).
        """
        wrong = [KEY.upper(), KEY[:-1], KEY + "0", "0" * 32, "é"]
        # Hundreds of wrong keys from one address: leave the throttle out of this test
        # (ThrottleTests covers it).
        self.api.badKeys = FailureThrottle(
            self.clock, Logger(), "x", slowAfter=10**6, blockAfter=10**6
        )
        for path in protectedRoutes(self.instanceId):
            for method in METHODS:
                for key in wrong:
                    answer = self.call(method, path, "{}", {"X-API-Key": key})
                    self.assertError(answer, 401, "Unauthorized: Invalid API key")
        for headers in ({"Authorization": KEY}, {"Authorization": f"Bearer {KEY}"}):
            self.assertError(
                self.call("GET", "/info", headers=headers), 401, "Unauthorized: API key required"
            )
        answer = self.call("GET", f"/info?X-API-Key={KEY}", headers={})
        self.assertError(answer, 401, "Unauthorized: API key required")
        self.assertEqual(self.supervisor.calls, [("start", self.instanceId, SERVER_URL)])

    def test_authBeforeMethod(self) -> None:
        """
        An unauthenticated C{DELETE P/info} is 401, not 405; with the key it is 405.
        """
        self.assertError(
            self.call("DELETE", "/info", headers={}), 401, "Unauthorized: API key required"
        )
        self.assertError(self.call("DELETE", "/info"), 405, "Method not allowed")

    def test_instanceIdRequired(self) -> None:
        """
        C{P/instances/} is the single-instance route with an empty id: 400, whatever the
        method.
        """
        for method in METHODS:
            answer = self.call(method, "/instances/", "{}")
            self.assertError(answer, 400, "Instance ID is required")

    def test_unknownBeforeMethod(self) -> None:
        """
        An unknown id is 404 even for a method the route does not handle.
        """
        for method in (*METHODS, "HEAD"):
            answer = self.call(method, "/instances/nope", '{"url": "client://a:1/b:2"}')
            self.assertEqual(answer.code, 404)
            if method != "HEAD":
                self.assertError(answer, 404, "Instance not found")

    def test_methodNotAllowed(self) -> None:
        """
        An existing id with an unsupported method is 405 C{Method not allowed}, no C{Allow}
        (the Go capture 43); so are the other routes' unsupported methods.
        """
        cases = [
            ("POST", f"/instances/{self.instanceId}"),
            ("POST", f"/instances/{PSEUDO}"),
            ("DELETE", "/instances"),
            ("PUT", "/instances"),
            ("PATCH", "/instances"),
            ("PUT", "/info"),
            ("PATCH", "/info"),
            ("DELETE", "/info"),
            ("POST", "/tcping"),
            ("PUT", "/tcping?target=127.0.0.1:80"),
            ("POST", "/events"),
            ("DELETE", "/events"),
        ]
        for method, path in cases:
            self.assertError(self.call(method, path, '{"x": 1}'), 405, "Method not allowed")
        self.assertEqual(self.tcping.targets, [])
        self.assertEqual(self.hub.subscriberCount, 0)

    def test_headIsNotGet(self) -> None:
        """
        HEAD is not GET: C{HEAD P/info} is 405 with the JSON headers (the Go capture 67).
        """
        answer = self.call("HEAD", "/info")
        self.assertEqual((answer.code, answer.body), (405, b""))
        self.assertEqual(answer.header("Content-Type"), [b"application/json"])
        self.assertCors(answer)

    def test_percentEncodedId(self) -> None:
        """
        The id is percent-decoded (§3): C{%2A...} is the pseudo-instance, and an encoded id
        of a real instance finds it.
        """
        pseudo = self.get(PSEUDO)
        self.assertEqual(self.get(PSEUDO_ENCODED), pseudo)
        self.assertEqual(pseudo["id"], PSEUDO)
        encoded = "".join(f"%{ord(c):02X}" for c in self.instanceId)
        self.assertEqual(self.get(encoded)["id"], self.instanceId)
        answer = self.call("DELETE", f"/instances/{PSEUDO_ENCODED}")
        self.assertError(answer, 403, "Forbidden: API Key")

    def test_slashInId(self) -> None:
        """
        Everything after C{P/instances/} is the id, slashes included: C{abc/def} (and an
        existing id with a suffix) is not found.
        """
        for path in (
            "/instances/abc/def",
            f"/instances/{self.instanceId}/",
            f"/instances/{self.instanceId}/x",
        ):
            self.assertError(self.call("GET", path), 404, "Instance not found")
        self.assertError(self.call("GET", "/instances/abc%2Fdef"), 404, "Instance not found")


class UnknownPathTests(AppTestCase):
    """
    §3: every other path gets Go's mux 404, without CORS and without authentication.
    """

    def test_unknownPaths(self) -> None:
        for path in UNKNOWN_PATHS:
            for method in ("GET", "POST", "OPTIONS", "DELETE"):
                for headers in ({}, {"X-API-Key": KEY}):
                    self.assertNotFoundPage(self.fetch(method, path, "{}", headers))

    def test_otherPrefix(self) -> None:
        """
        Every route lives under C{prefix + "/v1"} (§2).
        """
        self.serve(prefix="/admin")
        self.assertJSON(self.fetch("GET", "/admin/v1/info"), 200)
        self.assertEmpty(self.fetch("OPTIONS", "/admin/v1/instances", headers={}), 200)
        self.assertNotFoundPage(self.fetch("GET", "/api/v1/info"))
        self.assertNotFoundPage(self.fetch("GET", "/admin/info"))


class ServerHeaderTests(AppTestCase):
    """
    Every answer names the software C{NodePass}, never the Twisted version (issue 10).
    """

    def assertServer(self, answer: Answer) -> None:
        self.assertEqual(answer.header("Server"), [b"NodePass"], (answer.code, answer.body))

    def test_everyKindOfAnswer(self) -> None:
        instanceId = self.create()["id"]
        answers = [
            self.fetch("GET", "/"),
            *(self.fetch("GET", path) for path in UNKNOWN_PATHS),
            self.call("GET", "/info", headers={}),
            self.call("GET", "/info", headers={"X-API-Key": "wrong"}),
            self.call("OPTIONS", "/instances", headers={}),
            self.call("GET", "/instances"),
            self.call("GET", f"/instances/{instanceId}"),
            self.call("GET", "/instances/ffffffff"),
            self.call("PUT", "/info"),
            self.call("DELETE", f"/instances/{instanceId}"),
            self.call("GET", "/openapi.json", headers={}),
            self.call("GET", "/docs", headers={}),
            self.call("POST", "/instances", "{"),
        ]
        for answer in answers:
            self.assertServer(answer)

    def test_eventStream(self) -> None:
        d = self.stub.get(BASE + P + "/events", headers={"X-API-Key": KEY})
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders("Server"), ["NodePass"])


class PublicRouteTests(AppTestCase):
    """
    §3, §8.10: C{P/openapi.json} and C{P/docs} need no key and answer every method.
    """

    def test_openapi(self) -> None:
        for method in METHODS:
            for headers in ({}, {"X-API-Key": "wrong"}):
                answer = self.call(method, "/openapi.json", "{}", headers)
                document = self.assertJSON(answer, 200)
                self.assertRegex(document["openapi"], r"^3\.1\.\d+$")
                self.assertEqual(document["servers"][0]["url"], P)
                self.assertEqual(document["info"]["version"], "v1")

    def test_openapiFollowsPrefix(self) -> None:
        self.serve(prefix="/a/b")
        document = self.assertJSON(self.fetch("GET", "/a/b/v1/openapi.json", headers={}), 200)
        self.assertEqual(document["servers"][0]["url"], "/a/b/v1")

    def test_docsWithoutAssets(self) -> None:
        """
        Without local Swagger UI assets, C{P/docs} is a plain HTML page that loads nothing
        from C{P/docs/static/}, and the asset paths are unknown.
        """
        for method in ("GET", "POST", "DELETE"):
            answer = self.call(method, "/docs", headers={})
            self.assertEqual(answer.code, 200)
            self.assertEqual(answer.header("Content-Type"), [b"text/html; charset=utf-8"])
            self.assertIn(b"NodePass API", answer.body)
            self.assertNotIn(b"/docs/static/", answer.body)
            self.assertCors(answer)
        for name in DOCS_STATIC_FILES:
            self.assertNotFoundPage(self.call("GET", f"/docs/static/{name}", headers={}))

    def assetDirectory(self) -> str:
        directory: str = self.mktemp()
        os.mkdir(directory)
        for name in DOCS_STATIC_FILES:
            with open(os.path.join(directory, name), "w") as f:
                f.write(f"/* {name} */\n")
        with open(os.path.join(directory, "secret.txt"), "w") as f:
            f.write("not an asset\n")
        return directory

    def test_docsWithAssets(self) -> None:
        """
        With a static directory, the page loads the assets from C{P/docs/static/}, and only
        the two known files are served from there, with their own content types.
        """
        directory = self.assetDirectory()
        self.serve(staticDirectory=directory)
        page = self.call("GET", "/docs", headers={})
        self.assertIn(b"NodePass API", page.body)
        types = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8"}
        for name in DOCS_STATIC_FILES:
            self.assertIn(f"{P}/docs/static/{name}".encode(), page.body)
            answer = self.call("GET", f"/docs/static/{name}", headers={})
            self.assertEqual((answer.code, answer.body), (200, f"/* {name} */\n".encode()))
            self.assertEqual(answer.header("Content-Type"), [types[os.path.splitext(name)[1]]])
            self.assertCors(answer)
        # Read once, then served from memory.
        os.remove(os.path.join(directory, DOCS_STATIC_FILES[0]))
        self.assertEqual(
            self.call("GET", f"/docs/static/{DOCS_STATIC_FILES[0]}", headers={}).code, 200
        )
        for name in ("secret.txt", "other.css", "", "%2E%2E%2Fswagger-ui.css", "x/swagger-ui.css"):
            self.assertNotFoundPage(self.call("GET", f"/docs/static/{name}", headers={}))

    def test_assetMethods(self) -> None:
        """
        An asset answers OPTIONS like every route, and any method but GET and HEAD with the
        JSON 405 of §4.2 (no HTML page, no C{Allow}).
        """
        self.serve(staticDirectory=self.assetDirectory())
        path = f"/docs/static/{DOCS_STATIC_FILES[0]}"
        self.assertEmpty(self.call("OPTIONS", path, headers={}), 200)
        self.assertEqual(self.call("HEAD", path, headers={}).code, 200)
        for method in METHODS[1:]:
            answer = self.call(method, path, headers={})
            self.assertError(answer, 405, "Method not allowed")


class InstanceCollectionTests(AppTestCase):
    """
    C{GET} and C{POST P/instances} (§8.1, §8.2).
    """

    def test_listInitial(self) -> None:
        """
        A fresh master lists only the pseudo-instance, showing in C{url} the key the caller
        authenticated with, as Go does (§5, §6.1; issue 10: front-ends read it there).
        """
        (pseudo,) = self.assertJSON(self.call("GET", "/instances"), 200)
        self.assertEqual(list(pseudo), FIELDS)
        self.assertEqual(
            {k: pseudo[k] for k in ("id", "alias", "type", "status", "url", "restart")},
            {"id": PSEUDO, "alias": "", "type": "", "status": "", "url": KEY, "restart": False},
        )
        self.assertRegex(pseudo["config"], r"^[0-9a-f]{16}$")
        self.assertEqual(pseudo["meta"], {"peer": {"sid": "", "type": "", "alias": ""}, "tags": {}})

    def test_create(self) -> None:
        """
        POST answers 201 with the new instance (fields in the §6.1 order); the instance is
        then listed after the pseudo-instance, found by id, and started.
        """
        answer = self.call("POST", "/instances", f'{{"url": "{SERVER}", "alias": "edge"}}')
        created = self.assertJSON(answer, 201)
        self.assertEqual(list(created), FIELDS)
        self.assertRegex(created["id"], r"^[0-9a-f]{8}$")
        expected = {
            "alias": "edge",
            "type": "server",
            "status": "stopped",
            "url": SERVER_URL,
            "config": SERVER_CONFIG,
            "restart": True,
            "meta": {"peer": {"sid": "", "type": "", "alias": ""}, "tags": {}},
        }
        self.assertEqual({k: created[k] for k in expected}, expected)
        for name in FIELDS[-9:]:
            self.assertIs(created[name], 0)
        running = created | {"status": "running"}
        listed = self.assertJSON(self.call("GET", "/instances"), 200)
        self.assertEqual([i["id"] for i in listed], [PSEUDO, created["id"]])
        self.assertEqual(listed[1], running)
        self.assertEqual(self.get(created["id"]), running)
        self.assertEqual(self.supervisor.calls, [("start", created["id"], SERVER_URL)])
        self.assertEqual(self.hub.published[0], ("create", created["id"]))

    def test_createClient(self) -> None:
        created = self.create(CLIENT)
        self.assertEqual((created["type"], created["url"]), ("client", CLIENT_URL))
        self.assertEqual(created["config"], CLIENT_CONFIG)

    def assertRejected(self, body: bytes | str, message: str) -> None:
        before = self.store.puts[:]
        self.assertError(self.call("POST", "/instances", body), 400, message)
        self.assertEqual(self.store.puts, before)
        self.assertEqual(len(self.call("GET", "/instances").json()), 1)
        self.assertEqual(self.supervisor.calls, [])

    def test_invalidBody(self) -> None:
        """
        A body that does not decode, has no C{url}, or has a field of the wrong type is 400
        C{Invalid request body}.
        """
        bodies = [
            b"",
            b"{",
            b"not json",
            b"[]",
            b'"url"',
            b"null",
            b"{}",
            b'{"url": ""}',
            b'{"url": null}',
            b'{"url": 5}',
            b'{"url": ["server://0.0.0.0:1/a:2"]}',
            f'{{"url": "{SERVER}", "alias": 5}}'.encode(),
            b'{"alias": "x"}',
        ]
        for body in bodies:
            self.assertRejected(body, "Invalid request body")

    def test_invalidURL(self) -> None:
        """
        A URL that does not parse is C{Invalid URL format}; another scheme is C{Invalid URL
        scheme} (§7).
        """
        for url in ("server://0.0.0.0:badport/127.0.0.1:8080", "server://h:1/a:2%zz"):
            self.assertRejected(json.dumps({"url": url}), "Invalid URL format")
        for url in ("http://0.0.0.0:10101/127.0.0.1:8080", "master://0.0.0.0:9090"):
            self.assertRejected(json.dumps({"url": url}), "Invalid URL scheme")

    def test_aliasLength(self) -> None:
        """
        The alias is at most 256 bytes of UTF-8 (§8.2 SHOULD, Go's bug a18).
        """
        self.assertRejected(json.dumps({"url": SERVER, "alias": TOO_LONG}), ALIAS_TOO_LONG)
        self.assertRejected(json.dumps({"url": SERVER, "alias": "é" * 129}), ALIAS_TOO_LONG)
        self.assertEqual(self.create(alias="é" * 128)["alias"], "é" * 128)

    def test_goDecoding(self) -> None:
        """
        As Go decodes (§4.2): only the first JSON value counts, field names match in any
        case, unknown fields (C{restart} included) are ignored, the content type is ignored.
        """
        bodies = [
            f'{{"url": "{SERVER}", "alias": "a"}} trailing garbage {{',
            f'{{"URL": "{SERVER}", "Alias": "a"}}',
            f'{{"url": "{SERVER}", "alias": "a", "restart": false, "id": "{PSEUDO}", "x": [1]}}',
            f'  \n{{"uRl": "{SERVER}", "ALIAS": "a"}}\n{{"url": "{CLIENT}"}}',
        ]
        for body in bodies:
            answer = self.call(
                "POST", "/instances", body, {"X-API-Key": KEY, "Content-Type": "text/plain"}
            )
            created = self.assertJSON(answer, 201)
            self.assertEqual(
                (created["alias"], created["url"], created["restart"]), ("a", SERVER_URL, True)
            )
            self.assertNotEqual(created["id"], PSEUDO)
        self.assertEqual(len(self.call("GET", "/instances").json()), 1 + len(bodies))


class InstancePatchTests(AppTestCase):
    """
    C{PATCH P/instances/{id}} (§8.4, §6.3): validated as a whole, applied atomically.
    """

    def setUp(self) -> None:
        super().setUp()
        self.instanceId = self.create(alias="before")["id"]
        self.supervisor.calls.clear()
        self.hub.published.clear()
        self.current = self.get(self.instanceId)
        self.writes = len(self.store.puts)

    def patchInstance(self, body: bytes | str, id: str | None = None) -> Answer:
        return self.call("PATCH", f"/instances/{id or self.instanceId}", body)

    def patched(self, body: Any) -> dict[str, Any]:
        answer = self.patchInstance(json.dumps(body))
        value: dict[str, Any] = self.assertJSON(answer, 200)
        self.assertEqual(list(value), FIELDS)
        return value

    def assertRejected(self, body: bytes | str, message: str) -> None:
        self.assertError(self.patchInstance(body), 400, message)
        self.assertUnchanged(self.instanceId, self.current, self.writes)
        self.assertEqual(self.supervisor.calls, [])

    def test_emptyBody(self) -> None:
        """
        An empty body (or C{{}}) answers the current instance and changes nothing.
        """
        for body in (b"", b"  \n", b"{}"):
            self.assertJSON(self.patchInstance(body), 200, self.current)
        self.assertUnchanged(self.instanceId, self.current, self.writes)

    def test_malformed(self) -> None:
        """
        A malformed non-empty body, or a field of the wrong type, is 400 (§8.4 DEVIATION).
        """
        bodies = [
            "{",
            "[]",
            "null",
            "nonsense",
            '{"alias": 5}',
            '{"action": true}',
            '{"restart": "yes"}',
            '{"meta": []}',
            '{"meta": {"tags": []}}',
            '{"meta": {"tags": {"a": 1}}}',
            '{"meta": {"peer": "x"}}',
            '{"meta": {"peer": {"sid": 5}}}',
        ]
        for body in bodies:
            self.assertRejected(body, "Invalid request body")

    def test_unknownAndEmptyId(self) -> None:
        self.assertError(self.patchInstance('{"alias": "x"}', "nope"), 404, "Instance not found")
        self.assertError(self.call("PATCH", "/instances/", '{"alias": "x"}'), 400, ID_REQUIRED)
        self.assertUnchanged(self.instanceId, self.current, self.writes)

    def test_actions(self) -> None:
        """
        stop, start and restart reach the supervisor; the answer shows the status from
        before the action, GET the one after.
        """
        url = self.current["url"]
        steps = [
            ("stop", "running", "stopped", ("stop", self.instanceId)),
            ("stop", "stopped", "stopped", None),
            ("start", "stopped", "running", ("start", self.instanceId, url)),
            ("start", "running", "running", None),
            ("restart", "running", "running", ("restart", self.instanceId, url)),
        ]
        for action, answered, after, call in steps:
            self.supervisor.calls.clear()
            self.assertEqual(self.patched({"action": action})["status"], answered)
            self.assertEqual(self.get(self.instanceId)["status"], after)
            self.assertEqual(self.supervisor.calls, [call] if call else [])
        self.assertEqual(len(self.store.puts), self.writes)

    def test_reset(self) -> None:
        """
        C{reset} zeroes the traffic, persists it and announces one update.
        """
        self.registry.checkpointReceived(self.instanceId, checkpoint(tcprx=100, udptx=7))
        self.assertEqual(self.get(self.instanceId)["tcprx"], 100)
        self.hub.published.clear()
        value = self.patched({"action": "reset"})
        self.assertEqual([value[n] for n in ("tcprx", "tcptx", "udprx", "udptx")], [0] * 4)
        self.assertEqual(self.get(self.instanceId)["tcprx"], 0)
        self.assertEqual(self.hub.published, [("update", self.instanceId)])
        self.assertEqual(len(self.store.puts), self.writes + 1)
        # No start or stop: only the instance's own counters are zeroed.
        self.assertEqual(self.supervisor.calls, [("resetCounters", self.instanceId)])

    def test_status(self) -> None:
        """
        C{{"action":"status"}} is a read-only no-op (§8.4 MAY).
        """
        self.assertEqual(self.patched({"action": "status"}), self.current)
        self.assertUnchanged(self.instanceId, self.current, self.writes)
        self.assertEqual(self.supervisor.calls, [])

    def test_invalidAction(self) -> None:
        self.assertRejected('{"action": "bogus"}', "Invalid action: bogus")
        self.assertRejected('{"action": "START"}', "Invalid action: START")

    def test_aliasAndRestartFlag(self) -> None:
        """
        Alias and restart flag change together, with one write and one update.
        """
        value = self.patched({"alias": "after", "restart": False})
        self.assertEqual((value["alias"], value["restart"]), ("after", False))
        self.assertEqual(self.get(self.instanceId), value)
        self.assertEqual(self.store.record(self.instanceId).alias, "after")
        self.assertFalse(self.store.record(self.instanceId).restart)
        self.assertEqual(self.hub.published, [("update", self.instanceId)])
        self.assertEqual(len(self.store.puts), self.writes + 1)

    def test_aliasCannotBeCleared(self) -> None:
        """
        C{""} means "not given" (§8.4): the alias stays.
        """
        self.assertEqual(self.patched({"alias": ""})["alias"], "before")

    def test_meta(self) -> None:
        """
        Peer and tags replace the stored ones; null peer values read as C{""}; an empty peer
        object leaves the peer unchanged (§6.3 DEVIATION); C{{}} tags clear them.
        """
        peer = {"sid": "550e8400", "type": "7", "alias": None}
        value = self.patched({"meta": {"peer": peer, "tags": {"env": "test", "b": "2"}}})
        expected = {
            "peer": {"sid": "550e8400", "type": "7", "alias": ""},
            "tags": {"env": "test", "b": "2"},
        }
        self.assertEqual(value["meta"], expected)
        self.assertEqual(self.get(self.instanceId)["meta"], expected)
        value = self.patched({"meta": {"peer": {}, "tags": {}}})
        self.assertEqual(value["meta"], {"peer": expected["peer"], "tags": {}})
        value = self.patched({"Meta": {"Peer": {"SID": None, "type": None}}})
        self.assertEqual(value["meta"]["peer"], {"sid": "", "type": "", "alias": ""})

    def test_metaErrors(self) -> None:
        """
        Every meta limit of §8.4 with its exact message.
        """
        cases = [
            ({"peer": {"sid": TOO_LONG}}, "Meta peer.sid exceeds maximum length 256"),
            ({"peer": {"type": TOO_LONG}}, "Meta peer.type exceeds maximum length 256"),
            ({"peer": {"alias": TOO_LONG}}, "Meta peer.alias exceeds maximum length 256"),
            ({"tags": {TOO_LONG: "v"}}, "Meta tag key exceeds maximum length 256"),
            ({"tags": {"k": TOO_LONG}}, "Meta tag value exceeds maximum length 256"),
            ({"tags": {"k": "é" * 129}}, "Meta tag value exceeds maximum length 256"),
            ({"tags": {f"k{n}": "v" for n in range(65)}}, "Meta size exceeds limit"),
        ]
        for meta, message in cases:
            self.assertRejected(json.dumps({"meta": meta}), message)
        self.assertRejected('{"meta": {"tags": {"a": "1", "a": "2"}}}', "Duplicate meta tag key: a")

    def test_atomic(self) -> None:
        """
        A valid part next to an invalid one changes nothing: no write, no event, no action
        (§17 a17).
        """
        bodies = [
            ({"alias": "after", "action": "bogus"}, "Invalid action: bogus"),
            (
                {"alias": "after", "restart": False, "meta": {"tags": {"k": TOO_LONG}}},
                "Meta tag value exceeds maximum length 256",
            ),
            (
                {"action": "stop", "meta": {"peer": {"sid": TOO_LONG}}},
                "Meta peer.sid exceeds maximum length 256",
            ),
            ({"action": "reset", "alias": TOO_LONG}, ALIAS_TOO_LONG),
            ({"restart": False, "meta": {"tags": 5}}, "Invalid request body"),
        ]
        for body, message in bodies:
            self.assertRejected(json.dumps(body), message)
        self.assertEqual(self.store.record(self.instanceId).alias, "before")


class PseudoInstanceTests(AppTestCase):
    """
    C{********}: key regeneration and its protection (§5).
    """

    def test_regenerate(self) -> None:
        """
        C{{"action":"restart"}} answers the pseudo-instance with the new key in C{url}; the
        old key stops working at once, the new one works.
        """
        answer = self.call("PATCH", f"/instances/{PSEUDO}", '{"action": "restart"}')
        value = self.assertJSON(answer, 200)
        self.assertEqual(list(value), FIELDS)
        self.assertEqual(value["url"], NEW_KEY)
        self.assertRegex(value["url"], r"^[0-9a-f]{32}$")
        self.assertEqual(value["config"], self.registry.masterID)
        old = self.call("GET", "/info")
        self.assertError(old, 401, "Unauthorized: Invalid API key")
        new = self.call("GET", f"/instances/{PSEUDO}", headers={"X-API-Key": NEW_KEY})
        self.assertJSON(new, 200, value)
        self.assertEqual(self.hub.published, [("update", PSEUDO)])
        self.assertEqual(self.hub.shutdowns, 1)

    def test_otherContentIgnored(self) -> None:
        """
        Any other PATCH on C{********} answers the pseudo-instance (with the caller's key)
        and changes nothing, however odd the body.
        """
        pseudo = self.get(PSEUDO)
        self.assertEqual(pseudo["url"], KEY)
        bodies = [
            "",
            "{}",
            '{"alias": "renamed", "restart": true}',
            '{"action": "stop"}',
            '{"action": "bogus"}',
            '{"meta": {"tags": {"a": "1"}}}',
            json.dumps({"alias": TOO_LONG}),
        ]
        for body in bodies:
            self.assertJSON(self.call("PATCH", f"/instances/{PSEUDO}", body), 200, pseudo)
        self.assertError(
            self.call("GET", "/info", headers={"X-API-Key": NEW_KEY}),
            401,
            "Unauthorized: Invalid API key",
        )
        self.assertEqual(self.get(PSEUDO), pseudo)
        self.assertEqual(self.hub.published, [])

    def test_putAndDeleteForbidden(self) -> None:
        for method, body in (("PUT", json.dumps({"url": CLIENT})), ("PUT", "{"), ("DELETE", "")):
            answer = self.call(method, f"/instances/{PSEUDO}", body)
            self.assertError(answer, 403, "Forbidden: API Key")
        self.assertJSON(self.call("GET", "/info"), 200)


class InstancePutDeleteTests(AppTestCase):
    """
    C{PUT} and C{DELETE P/instances/{id}} (§8.5, §8.6).
    """

    def setUp(self) -> None:
        super().setUp()
        self.instanceId = self.create()["id"]
        self.supervisor.calls.clear()
        self.hub.published.clear()

    def put(self, body: str, id: str | None = None) -> Answer:
        return self.call("PUT", f"/instances/{id or self.instanceId}", body)

    def test_errors(self) -> None:
        current = self.get(self.instanceId)
        writes = len(self.store.puts)
        cases = [
            ("", "Invalid request body"),
            ("{", "Invalid request body"),
            ("{}", "Invalid request body"),
            ('{"url": ""}', "Invalid request body"),
            ('{"url": 1}', "Invalid request body"),
            ('{"url": "client://h:badport/a:1"}', "Invalid URL format"),
            ('{"url": "http://h:1/a:1"}', "Invalid URL scheme"),
        ]
        for body, message in cases:
            self.assertError(self.put(body), 400, message)
        for url in (SERVER, SERVER_URL):
            self.assertError(self.put(json.dumps({"url": url})), 409, "Instance URL conflict")
        self.assertError(self.put(json.dumps({"url": CLIENT}), "nope"), 404, "Instance not found")
        self.assertUnchanged(self.instanceId, current, writes)
        self.assertEqual(self.supervisor.calls, [])

    def test_put(self) -> None:
        """
        A new URL stops the running instance, waits, applies URL, type and config, answers
        C{stopped}, then starts it again.
        """
        pending = self.send("PUT", f"{P}/instances/{self.instanceId}", json.dumps({"url": CLIENT}))
        self.pump()
        self.assertNoResult(pending)
        self.assertEqual(self.supervisor.calls, [("stop", self.instanceId)])
        self.clock.advance(PUT_RESTART_DELAY)
        value = self.assertJSON(self.finish(pending), 200)
        self.assertEqual(list(value), FIELDS)
        expected = {
            "type": "client",
            "status": "stopped",
            "url": CLIENT_URL,
            "config": CLIENT_CONFIG,
        }
        self.assertEqual({k: value[k] for k in expected}, expected)
        self.assertEqual(self.supervisor.calls[1:], [("start", self.instanceId, CLIENT_URL)])
        self.assertEqual(self.get(self.instanceId), value | {"status": "running"})
        self.assertEqual(self.store.record(self.instanceId).url, CLIENT_URL)

    def test_delete(self) -> None:
        """
        DELETE answers 204 with no body and no content type; the instance is gone.
        """
        self.assertEmpty(self.call("DELETE", f"/instances/{self.instanceId}"), 204)
        self.assertError(
            self.call("GET", f"/instances/{self.instanceId}"), 404, "Instance not found"
        )
        self.assertError(
            self.call("DELETE", f"/instances/{self.instanceId}"), 404, "Instance not found"
        )
        self.assertEqual(self.supervisor.calls, [("remove", self.instanceId)])
        self.assertEqual(self.store.ids(), [])
        self.assertEqual(
            self.hub.published, [("update", self.instanceId), ("delete", self.instanceId)]
        )
        self.assertEqual([i["id"] for i in self.call("GET", "/instances").json()], [PSEUDO])


class InfoTests(AppTestCase):
    """
    C{GET|POST P/info} (§8.8).
    """

    def info(self, method: str = "GET", body: str | None = None) -> dict[str, Any]:
        value: dict[str, Any] = self.assertJSON(self.call(method, "/info", body), 200)
        return value

    def test_get(self) -> None:
        """
        The sorted keys of §8.8, C{ver} C{v1.14.0}, the master ID, the master URL values
        and integer system fields.
        """
        self.clock.advance(42.9)
        value = self.info()
        self.assertEqual(list(value), sorted(INFO_KEYS))
        self.assertRegex(value["mid"], r"^[0-9a-f]{16}$")
        self.assertEqual(value["mid"], self.get(PSEUDO)["config"])
        expected = {
            "ver": "v1.14.0",
            "alias": "",
            "name": "0.0.0.0",
            "uptime": 42,
            "log": "info",
            "tls": "1",
            "crt": "",
            "key": "",
            "os": goOS(),
            "arch": goArch(),
        }
        self.assertEqual({k: value[k] for k in expected}, expected)
        self.assertEqual({k: value[k] for k in SYSTEM_FIELDS}, SYSTEM)
        for name in (*SYSTEM_FIELDS, "uptime"):
            self.assertIs(type(value[name]), int, name)

    def test_masterURLValues(self) -> None:
        settings = MasterSettings(log="", tls="2", crt="/etc/np/c.pem", key="/etc/np/k.pem")
        self.serve(info=MasterInfo(settings, "::", self.clock, version="v9.9.9"))
        value = self.info()
        expected = {"log": "", "tls": "2", "crt": "/etc/np/c.pem", "key": "/etc/np/k.pem"}
        self.assertEqual({k: value[k] for k in expected}, expected)
        self.assertEqual((value["name"], value["ver"]), ("::", "v9.9.9"))

    def test_setAlias(self) -> None:
        """
        POST sets the master alias (also the pseudo-instance's), persisted, with no event;
        an empty or missing alias clears it.
        """
        value = self.info("POST", '{"alias": "anchor-master"} trailing')
        self.assertEqual(value["alias"], "anchor-master")
        self.assertEqual(list(value), sorted(INFO_KEYS))
        self.assertEqual(self.info()["alias"], "anchor-master")
        self.assertEqual(self.get(PSEUDO)["alias"], "anchor-master")
        self.assertEqual(self.store.core.load().master.alias, "anchor-master")
        self.assertEqual(self.info("POST", '{"ALIAS": "éé"}')["alias"], "éé")
        for body in ('{"alias": ""}', "{}", '{"alias": null}', ""):
            self.info("POST", '{"alias": "again"}')
            self.assertEqual(self.info("POST", body)["alias"], "", body)
        self.assertEqual(self.get(PSEUDO)["alias"], "")
        self.assertEqual(self.hub.published, [])

    def test_aliasErrors(self) -> None:
        self.info("POST", '{"alias": "kept"}')
        cases = [
            (json.dumps({"alias": TOO_LONG}), "Master alias exceeds maximum length 256"),
            (json.dumps({"alias": "é" * 129}), "Master alias exceeds maximum length 256"),
            ("{", "Invalid request body"),
            ("[]", "Invalid request body"),
            ('{"alias": 5}', "Invalid request body"),
            ('{"alias": ["x"]}', "Invalid request body"),
        ]
        for body, message in cases:
            self.assertError(self.call("POST", "/info", body), 400, message)
        self.assertEqual(self.info()["alias"], "kept")

    def test_systemFailure(self) -> None:
        """
        A failing system probe is a logged 500, not a hung request.
        """
        self.serve(systemInfo=lambda: fail(OSError("no /proc")))
        self.assertError(self.call("GET", "/info"), 500, "Internal server error")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class TCPingTests(AppTestCase):
    """
    C{GET P/tcping?target=HOST:PORT} (§8.9).
    """

    def test_probe(self) -> None:
        """
        The target goes to the prober as given; its result is the answer.
        """
        for target in ("127.0.0.1:80", "[::1]:8080", "example.com:443"):
            answer = self.call("GET", f"/tcping?target={target}")
            expected = {"target": target, "connected": True, "latency": 3, "error": None}
            self.assertJSON(answer, 200, expected)
        self.assertEqual(self.tcping.targets, ["127.0.0.1:80", "[::1]:8080", "example.com:443"])

    def test_targetRequired(self) -> None:
        for query in ("", "?", "?target=", "?other=1:2", "?TARGET=127.0.0.1:80"):
            self.assertError(self.call("GET", f"/tcping{query}"), 400, "Target address required")
        self.assertEqual(self.tcping.targets, [])

    def test_methodFirst(self) -> None:
        self.assertError(self.call("POST", "/tcping"), 405, "Method not allowed")
        self.assertEqual(self.tcping.targets, [])


class EventStreamTests(AppTestCase):
    """
    C{GET P/events} (§10) through the API, with the registry as the snapshot.
    """

    def open(
        self, headers: Mapping[str, str] | None = None
    ) -> tuple[Any, list[bytes], Deferred[None]]:
        d = self.stub.get(BASE + P + "/events", headers=dict(headers or {"X-API-Key": KEY}))
        self.pump()
        response = self.successResultOf(d)
        chunks: list[bytes] = []
        done: Deferred[None] = treq.collect(response, chunks.append)
        self.pump()
        return response, chunks, done

    def test_stream(self) -> None:
        """
        200 with the SSE headers, the retry block, C{initial} for the pseudo-instance (no
        key) and each instance, then a C{create} and its C{update} for a POST.
        """
        first = self.create(alias="one")
        response, chunks, done = self.open({"X-API-Key": KEY, "Accept": "text/event-stream"})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["text/event-stream"])
        self.assertEqual(response.headers.getRawHeaders("Cache-Control"), ["no-cache"])
        self.assertEqual(corsHeaders(response.headers), CORS)
        body = b"".join(chunks)
        self.assertTrue(body.startswith(RETRY_BLOCK + b"event: instance\ndata: {"), body)
        initial = sseEvents(body)
        self.assertEqual([e["type"] for e in initial], ["initial", "initial"])
        self.assertEqual(
            [e["instance"] for e in initial],
            [self.get(PSEUDO) | {"url": ""}, self.get(first["id"])],
        )
        self.assertEqual(initial[0]["instance"]["url"], "")
        created = self.create(alias="two")
        events = sseEvents(b"".join(chunks))[2:]
        self.assertEqual([e["type"] for e in events], ["create", "update"])
        self.assertEqual(events[0]["instance"], created)
        self.assertEqual(events[1]["instance"]["status"], "running")
        self.assertEqual([list(e) for e in events], [["type", "time", "instance", "logs"]] * 2)
        self.assertNoResult(done)
        self.assertEqual(self.hub.subscriberCount, 1)

    def test_regenerationEndsStream(self) -> None:
        """
        Regenerating the key sends C{update} (without the key) and C{shutdown}, then ends the
        stream; the old key cannot reopen it.
        """
        _, chunks, done = self.open()
        answer = self.call("PATCH", f"/instances/{PSEUDO_ENCODED}", '{"action":"restart"}')
        self.assertEqual(answer.json()["url"], NEW_KEY)
        self.pump()
        self.successResultOf(done)
        events = sseEvents(b"".join(chunks))
        self.assertEqual([e["type"] for e in events], ["initial", "update", "shutdown"])
        self.assertEqual(events[1]["instance"]["url"], "")
        self.assertEqual((events[2]["instance"], events[2]["logs"]), (None, ""))
        self.assertNotIn(NEW_KEY.encode(), b"".join(chunks))
        self.assertEqual(self.hub.subscriberCount, 0)
        self.assertError(self.call("GET", "/events"), 401, "Unauthorized: Invalid API key")
        _, chunks, done = self.open({"X-API-Key": NEW_KEY})
        self.assertEqual(len(sseEvents(b"".join(chunks))), 1)
        self.assertNoResult(done)

    def test_unauthenticated(self) -> None:
        self.assertError(
            self.call("GET", "/events", headers={}), 401, "Unauthorized: API key required"
        )
        self.assertError(self.call("POST", "/events"), 405, "Method not allowed")
        self.assertEqual(self.hub.subscriberCount, 0)


class BodyLimitTests(AppTestCase):
    """
    Request bodies are capped at L{MAX_BODY} bytes (§17 a6): 413 beyond.
    """

    def test_overLimitThroughStub(self) -> None:
        """
        Whatever the request class, a body of C{MAX_BODY + 1} bytes is refused, and one of
        exactly C{MAX_BODY} bytes is read.
        """
        for method, path in (("POST", "/instances"), ("POST", "/info")):
            answer = self.call(method, path, VALID_BODY.ljust(MAX_BODY + 1))
            self.assertError(answer, 413, "Request body too large")
        self.assertEqual(len(self.call("GET", "/instances").json()), 1)
        self.assertJSON(self.call("POST", "/instances", VALID_BODY.ljust(MAX_BODY)), 201)

    def rawPost(self, body: bytes, chunked: bool = False) -> RawExchange:
        """
        POST C{body} to C{P/instances} over an L{HTTPChannel} of a L{Site} whose requests are
        L{LimitedRequest}s, on a string transport, 10000 bytes at a time.
        """
        requests: list[LimitedRequest] = []

        class RecordedRequest(LimitedRequest):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                requests.append(self)

        site = Site(self.api.resource(), reactor=Clock())
        site.requestFactory = RecordedRequest
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        head = f"POST {P}/instances HTTP/1.1\r\nHost: h\r\nX-API-Key: {KEY}\r\n".encode()
        if chunked:
            parts = [body[i : i + 8192] for i in range(0, len(body), 8192)]
            data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
            protocol.dataReceived(head + b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            data = body
            protocol.dataReceived(head + b"Content-Length: %d\r\n\r\n" % len(body))
        (request,) = requests
        kept = 0
        for i in range(0, len(data), 10000):
            protocol.dataReceived(data[i : i + 10000])
            content = getattr(request, "content", None)  # gone once the request is done
            if content is not None and not content.closed:
                kept = max(kept, len(content.getvalue()))
        self.pump()
        return RawExchange(transport.value(), request.bodyTooLarge, kept)

    def assertTooLarge(self, exchange: RawExchange) -> None:
        """
        The exact 413 answer, from a request that never kept more than the cap, and nothing
        created.
        """
        head, body = exchange.response.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 413 Request Entity Too Large")
        for line in (b"Content-Type: application/json", b"Content-Length: 35"):
            self.assertIn(line, lines)
        for name, (value,) in CORS.items():
            self.assertIn(name + b": " + value, lines)
        self.assertEqual(body, b'{"error":"Request body too large"}\n')
        self.assertTrue(exchange.tooLarge)
        self.assertLessEqual(exchange.kept, MAX_BODY)
        self.assertEqual(self.store.puts, [])

    def test_limitedRequestDeclaredLength(self) -> None:
        """
        Over a real channel, a declared C{Content-Length} over the cap is answered 413, and
        the body is not kept at all.
        """
        exchange = self.rawPost(b"x" * 100000)
        self.assertTooLarge(exchange)
        self.assertEqual(exchange.kept, 0)

    def test_limitedRequestChunked(self) -> None:
        """
        A chunked body (no declared length) that grows over the cap is answered 413.
        """
        self.assertTooLarge(self.rawPost(VALID_BODY.ljust(MAX_BODY + 1), chunked=True))

    def test_limitedRequestWithinLimit(self) -> None:
        """
        Bodies up to the cap, declared or chunked, are read whole.
        """
        for chunked in (False, True):
            exchange = self.rawPost(VALID_BODY.ljust(MAX_BODY), chunked)
            self.assertTrue(exchange.response.startswith(b"HTTP/1.1 201 Created\r\n"))
            self.assertFalse(exchange.tooLarge)
        self.assertEqual(len(self.store.ids()), 2)


class UnsavableStateTests(AppTestCase):
    """
    A change the store cannot save (a full disk, a read-only file) is 503 with the cause,
    and nothing changes: neither what the API shows nor what is stored.
    """

    def test_nothingChanges(self) -> None:
        id = self.create()["id"]
        self.call("PATCH", f"/instances/{id}", b'{"action":"stop"}')  # PUT needs no pause
        before = self.call("GET", "/instances").json()
        connection = self.store.core._connection
        assert connection is not None
        connection.execute("PRAGMA query_only = ON")  # every write now fails in SQLite
        message = "the state cannot be saved: attempt to write a readonly database"
        for method, path, body in (
            ("POST", "/instances", VALID_BODY),
            ("PATCH", f"/instances/{id}", b'{"alias":"renamed","meta":{"tags":{"a":"b"}}}'),
            ("PUT", f"/instances/{id}", json.dumps({"url": CLIENT}).encode()),
            ("DELETE", f"/instances/{id}", None),
        ):
            self.assertError(self.call(method, path, body), 503, message)
        self.assertEqual(self.call("GET", "/instances").json(), before)
        connection.execute("PRAGMA query_only = OFF")
        self.assertEqual(self.store.ids(), [id])


class RequestDeadlineTests(AppTestCase):
    """
    A request must arrive whole within L{REQUEST_DEADLINE} seconds (§17 a6: slow clients).
    """

    def connect(self) -> tuple[Any, StringTransport, Clock]:
        clock = Clock()
        # The master's idle timeout too: a stream must outlive it (Twisted suspends it
        # while a request is handled).
        site = Site(self.api.resource(), reactor=clock, timeout=60)
        site.requestFactory = LimitedRequest
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport, clock

    def test_tricklingHeadersGet408(self) -> None:
        """
        Headers still incomplete at the deadline, although bytes keep coming: 408, closed.
        """
        protocol, transport, clock = self.connect()
        protocol.dataReceived(f"GET {P}/instances HTTP/1.1\r\n".encode())
        for _ in range(int(REQUEST_DEADLINE) - 1):
            clock.advance(1)
            protocol.dataReceived(b"X-Slow: 1\r\n")
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        head, body = transport.value().split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertIn(b"Content-Type: application/json", head.split(b"\r\n"))
        self.assertIn(b"Server: NodePass", head.split(b"\r\n"))
        self.assertEqual(body, b'{"error":"Request timeout"}\n')

    def test_slowBodyGets408(self) -> None:
        protocol, transport, clock = self.connect()
        protocol.dataReceived(
            f"POST {P}/instances HTTP/1.1\r\nX-API-Key: {KEY}\r\nContent-Length: 10\r\n\r\n{{".encode()
        )
        clock.advance(REQUEST_DEADLINE)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.store.puts, [])

    def test_deadlineEndsWithTheRequest(self) -> None:
        """
        Once a request is read, the deadline no longer applies: an event stream may last.
        """
        protocol, transport, clock = self.connect()
        protocol.dataReceived(
            f"GET {P}/events HTTP/1.1\r\nHost: h\r\nX-API-Key: {KEY}\r\n\r\n".encode()
        )
        self.pump()
        clock.advance(REQUEST_DEADLINE * 10)
        self.assertFalse(transport.disconnecting)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertNotIn(b"408", transport.value())
        self.assertEqual(clock.getDelayedCalls(), [])


class LimitedRequestTests(SynchronousTestCase):
    """
    L{LimitedRequest} on its own.
    """

    def test_keepsUpToLimit(self) -> None:
        request = LimitedRequest(DummyChannel())
        request.gotLength(None)
        request.handleContentChunk(b"a" * (MAX_BODY - 1))
        request.handleContentChunk(b"b")
        self.assertFalse(request.bodyTooLarge)
        assert request.content is not None
        self.assertEqual(request.content.getvalue(), b"a" * (MAX_BODY - 1) + b"b")

    def test_dropsPastLimit(self) -> None:
        request = LimitedRequest(DummyChannel())
        request.gotLength(None)
        request.handleContentChunk(b"a" * MAX_BODY)
        request.handleContentChunk(b"b")
        self.assertTrue(request.bodyTooLarge)
        request.handleContentChunk(b"c" * 1000)
        assert request.content is not None
        self.assertEqual(request.content.getvalue(), b"")

    def test_declaredLength(self) -> None:
        request = LimitedRequest(DummyChannel())
        request.gotLength(MAX_BODY + 1)
        self.assertTrue(request.bodyTooLarge)
        request.handleContentChunk(b"a" * 10)
        assert request.content is not None
        self.assertEqual(request.content.getvalue(), b"")
        within = LimitedRequest(DummyChannel())
        within.gotLength(MAX_BODY)
        self.assertFalse(within.bodyTooLarge)


class ReadinessAndCorsTests(AppTestCase):
    def test_starting(self) -> None:
        """
        Until the registry is loaded, protected routes answer 503 (key or not); OPTIONS,
        public routes and unknown paths answer as usual.
        """
        self.api.ready = False
        for path in protectedRoutes("0badc0de"):
            for headers in ({}, {"X-API-Key": KEY}):
                self.assertError(self.call("GET", path, headers=headers), 503, "Master is starting")
            self.assertEmpty(self.call("OPTIONS", path, headers={}), 200)
        self.assertJSON(self.call("GET", "/openapi.json", headers={}), 200)
        self.assertNotFoundPage(self.call("GET", "/nope"))
        self.api.ready = True
        self.assertJSON(self.call("GET", "/info"), 200)

    def test_restrictedOrigins(self) -> None:
        """
        With a list of origins, an allowed C{Origin} is echoed with C{Vary: Origin}; any
        other gets no C{Access-Control-Allow-Origin}; the rest of the policy stays, and
        unknown paths still get none of it.
        """
        self.serve(cors=CorsPolicy(("https://dash.example",)))
        common = {k: v for k, v in CORS.items() if k != b"Access-Control-Allow-Origin"}
        allowed = common | {b"Access-Control-Allow-Origin": [b"https://dash.example"]}
        cases = [
            ({"Origin": "https://dash.example"}, allowed),
            (
                {"Origin": "https://DASH.example"},
                allowed | {b"Access-Control-Allow-Origin": [b"https://DASH.example"]},
            ),
            ({"Origin": "https://evil.example"}, common),
            ({"Origin": "null"}, common),
            ({}, common),
        ]
        for origin, expected in cases:
            for method, path in (("GET", "/info"), ("OPTIONS", "/events"), ("GET", "/nope")):
                answer = self.call(method, path, headers={"X-API-Key": KEY} | origin)
                if path == "/nope":
                    self.assertNotFoundPage(answer)
                else:
                    self.assertEqual(corsHeaders(answer.headers), expected)
                    self.assertEqual(answer.header("Vary"), [b"Origin"])


class GoPlatformTests(SynchronousTestCase):
    """
    L{goOS} and L{goArch}: Go's GOOS and GOARCH names (§8.8).
    """

    def test_arch(self) -> None:
        cases = {
            "x86_64": "amd64",
            "AMD64": "amd64",
            "aarch64": "arm64",
            "arm64": "arm64",
            "i386": "386",
            "i686": "386",
            "armv7l": "arm",
            "armv6l": "arm",
            "mips": "mips",
            "mipsel": "mipsle",
            "mips64": "mips64",
            "mips64el": "mips64le",
            "riscv64": "riscv64",
        }
        self.assertEqual({m: goArch(m) for m in cases}, cases)
        self.assertEqual(goArch(), goArch(platform.machine()))

    def test_os(self) -> None:
        cases = {
            "linux": "linux",
            "darwin": "darwin",
            "win32": "windows",
            "freebsd14": "freebsd",
            "openbsd7": "openbsd",
        }
        self.assertEqual({name: goOS(name) for name in cases}, cases)
        self.assertEqual(goOS(), goOS(sys.platform))


class InternalErrorTests(AppTestCase):
    def test_unexpectedFailure(self) -> None:
        """
        An unexpected exception in a handler, raised or in its Deferred, is logged and
        answered 500 C{Internal server error} as JSON.
        """
        for raising in (False, True):
            self.serve(registry=BrokenRegistry(raising))
            self.assertError(self.call("GET", "/instances"), 500, "Internal server error")
            self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


# -- fuzzing ------------------------------------------------------------------------------------

_FIELD_NAMES = ["url", "URL", "alias", "action", "restart", "meta", "peer", "tags", "sid", "type"]
_TEXTS = st.one_of(
    st.sampled_from(
        [
            SERVER,
            CLIENT,
            "",
            "start",
            "stop",
            "restart",
            "reset",
            "status",
            "server://h:99999/t:1",
            "client://:0/x",
            "http://h:1/t:1",
            "not a url",
            "x" * 300,
        ]
    ),
    st.text(max_size=40),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXTS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=12,
)
_BODIES = st.one_of(
    _JSON.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b'{"url":', b"\xff\xfe{}", b'{"meta":{"tags":{"a":"1","a":"2"}}}']),
)
_TARGETS = st.sampled_from(
    [
        ("POST", "/instances"),
        ("PATCH", "/instances/{id}"),
        ("PUT", "/instances/{id}"),
        ("DELETE", "/instances/{id}"),
        ("PUT", "/instances/********"),
        ("POST", "/info"),
    ]
)


class FuzzTests(AppTestCase):
    """
    Whatever the body, the API answers a documented status with a JSON error or object,
    never 500, and what it lists stays consistent with what is stored.
    """

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(_TARGETS, _BODIES), min_size=1, max_size=6))
    def test_anyBody(self, requests: list[tuple[tuple[str, str], bytes]]) -> None:
        for (method, path), body in requests:
            listed = self.call("GET", "/instances").json()
            ids = [i["id"] for i in listed[1:]] or ["00000000"]
            answer = self.call(method, path.format(id=ids[0]), body)
            self.assertIn(answer.code, (200, 201, 204, 400, 403, 404, 409), answer.body)
            if answer.code == 204:
                self.assertEqual(answer.body, b"")
                continue
            self.assertEqual(answer.header("Content-Type"), [b"application/json"])
            value = answer.json()
            if answer.code >= 400:
                self.assertEqual(list(value), ["error"])
                self.assertIsInstance(value["error"], str)
        listed = self.assertJSON(self.call("GET", "/instances"), 200)
        self.assertEqual(listed[0]["id"], PSEUDO)
        for instance in listed:
            self.assertEqual(list(instance), FIELDS)
        self.assertEqual(sorted(i["id"] for i in listed[1:]), sorted(self.store.ids()))
        self.assertEqual(self.flushLoggedErrors(), [])


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of a Prometheus text exposition, by name and sorted labels (the parser
    rejects a malformed exposition).
    """
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsTests(AppTestCase):
    """
    C{GET /metrics} and C{P/v1/metrics}: the Prometheus text format, behind the API key.
    """

    def setUp(self) -> None:
        super().setUp()
        self.api = self.serveWithOperations()

    def serveWithOperations(self, **options: Any) -> MasterAPI:
        from nodepass.master.metrics import MasterMetrics

        metrics = MasterMetrics(
            self.registry.instanceObjects,
            self.registry.restartCount,
            lambda: self.hub.subscriberCount,
            "9.9.9",
        )
        return self.serve(metrics=metrics, now=self.clock.seconds, **options)

    def metrics(self, headers: Mapping[str, str] | None = None, path: str = "/metrics") -> Answer:
        return self.fetch("GET", path, headers=headers)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        answer = self.metrics()
        self.assertEqual(answer.code, 200, answer.body)
        return scrape(answer.body.decode("utf-8"))

    def test_credentials(self) -> None:
        """
        The key as C{X-API-Key} or C{Authorization: Bearer}; anything else is 401, at the
        root and below the prefix alike.
        """
        for path in ("/metrics", P + "/metrics"):
            self.assertEqual(self.metrics({}, path).code, 401)
            self.assertEqual(self.metrics({"X-API-Key": "wrong"}, path).code, 401)
            self.assertEqual(self.metrics({"Authorization": "Bearer wrong"}, path).code, 401)
            self.assertEqual(self.metrics({"Authorization": f"Basic {KEY}"}, path).code, 401)
            self.assertEqual(self.metrics({"X-API-Key": KEY}, path).code, 200)
            self.assertEqual(self.metrics({"Authorization": f"Bearer {KEY}"}, path).code, 200)
        answer = self.metrics({})
        self.assertEqual(answer.json(), {"error": "Unauthorized: API key required"})
        self.assertEqual(answer.header("WWW-Authenticate"), [b'Bearer realm="nodepass"'])

    def test_public(self) -> None:
        """
        C{NP_METRICS_PUBLIC=1} (C{metricsPublic}) serves them without a key.
        """
        self.api = self.serveWithOperations(metricsPublic=True)
        answer = self.metrics({})
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("Content-Type")[0].split(b";")[0], b"text/plain")  # type: ignore[index]

    def test_trafficGrows(self) -> None:
        """
        A scrape after traffic shows the byte counter grown by what the instance reported;
        the gauges follow its last checkpoint; labels never carry the key.
        """
        created = self.create(alias="edge")
        id = created["id"]
        rx = ("nodepass_instance_bytes_total", (("direction", "rx"), ("id", id), ("proto", "tcp")))
        before = self.samples()
        self.assertEqual(before[rx], 0)
        self.registry.checkpointReceived(id, checkpoint(tcprx=65536, udptx=9))
        after = self.samples()
        self.assertGreaterEqual(after[rx] - before[rx], 65536)
        udptx = (
            "nodepass_instance_bytes_total",
            (("direction", "tx"), ("id", id), ("proto", "udp")),
        )
        self.assertEqual(after[udptx], 9)
        self.assertEqual(
            after[("nodepass_instance_connections", (("id", id), ("proto", "tcp")))], 4
        )
        self.assertEqual(
            after[("nodepass_instance_connections", (("id", id), ("proto", "udp")))], 5
        )
        self.assertEqual(after[("nodepass_instance_pool", (("id", id),))], 3)
        self.assertEqual(after[("nodepass_instance_ping_seconds", (("id", id),))], 0.002)
        up = ("nodepass_instance_up", (("alias", "edge"), ("id", id), ("type", "server")))
        self.assertEqual(after[up], 1)
        statuses = {
            s: after[("nodepass_instance_status", (("id", id), ("status", s)))]
            for s in ("running", "stopped", "error")
        }
        self.assertEqual(statuses, {"running": 1, "stopped": 0, "error": 0})
        self.assertEqual(after[("nodepass_build_info", (("version", "9.9.9"),))], 1)
        self.assertNotIn(KEY.encode(), self.metrics().body)
        self.assertNotIn(b"********", self.metrics().body)

    def test_stoppedAndRestarted(self) -> None:
        id = self.create()["id"]
        restarts = ("nodepass_instance_restarts_total", (("id", id),))
        self.assertEqual(self.samples()[restarts], 0)
        self.call("PATCH", f"/instances/{id}", '{"action": "restart"}')
        self.call("PATCH", f"/instances/{id}", '{"action": "stop"}')
        samples = self.samples()
        self.assertEqual(samples[restarts], 1)
        self.assertEqual(
            samples[("nodepass_instance_up", (("alias", ""), ("id", id), ("type", "server")))], 0
        )
        self.assertEqual(
            samples[("nodepass_instance_status", (("id", id), ("status", "stopped")))], 1
        )

    def test_apiRequests(self) -> None:
        """
        Answered requests are counted by method, route template and code, and timed.
        """
        id = self.create()["id"]
        self.call("GET", f"/instances/{id}")
        self.call("GET", "/instances/ffffffff")
        self.call("GET", "/info", headers={})
        self.fetch("GET", "/nowhere")
        self.clock.advance(0.25)
        samples = self.samples()

        def requests(method: str, route: str, code: str) -> float:
            labels = (("code", code), ("method", method), ("route", route))
            return samples.get(("nodepass_api_requests_total", labels), 0)

        self.assertEqual(requests("POST", "/instances", "201"), 1)
        self.assertEqual(requests("GET", "/instances/{id}", "200"), 1)
        self.assertEqual(requests("GET", "/instances/{id}", "404"), 1)
        self.assertEqual(requests("GET", "/info", "401"), 1)
        self.assertEqual(requests("GET", "other", "404"), 1)
        count = ("nodepass_api_request_duration_seconds_count", (("route", "/instances/{id}"),))
        self.assertEqual(samples[count], 2)
        self.assertNotIn(id, str([labels for (_, labels) in samples if ("route", id) in labels]))

    def test_subscribers(self) -> None:
        gauge = ("nodepass_sse_subscribers", ())
        self.assertEqual(self.samples()[gauge], 0)
        self.stub.get(BASE + P + "/events", headers={"X-API-Key": KEY})
        self.pump()
        self.assertEqual(self.samples()[gauge], 1)

    def test_methodNotAllowed(self) -> None:
        answer = self.fetch("POST", "/metrics")
        self.assertEqual((answer.code, answer.json()), (405, {"error": "Method not allowed"}))
        self.assertError(self.call("POST", "/metrics"), 405, "Method not allowed")  # with CORS


class FakeHosts:
    def __init__(self) -> None:
        self.state = {"alive": 2, "limit": 2, "instances": 3, "waiting": 0, "replacing": False}

    def health(self) -> dict[str, Any]:
        return dict(self.state)


class HealthTests(AppTestCase):
    """
    C{/health}, C{P/v1/health} and C{/ready}: no key, nothing secret, 200 or 503.
    """

    def setUp(self) -> None:
        super().setUp()
        self.storeFails = False
        self.stopping = False
        self.hosts = FakeHosts()
        self.api = self.serveWithHealth()

    def serveWithHealth(self) -> MasterAPI:
        from nodepass.master.health import HealthChecks

        def probe() -> Deferred[None]:
            if self.storeFails:
                return fail(OSError(30, "Read-only file system"))
            return succeed(None)

        health = HealthChecks(
            probe,
            self.registry.instanceObjects,
            self.hosts.health,
            lambda: self.api.ready,
            lambda: self.stopping,
        )
        return self.serve(health=health)

    def health(self, path: str = "/health") -> tuple[int, Any]:
        answer = self.fetch("GET", path, headers={})
        self.assertEqual(answer.header("Cache-Control"), [b"no-store"])
        self.assertNotIn(KEY.encode(), answer.body)
        return answer.code, answer.json()

    def test_ok(self) -> None:
        id = self.create()["id"]
        for path in ("/health", P + "/health"):
            code, body = self.health(path)
            self.assertEqual(code, 200)
            self.assertEqual(body["status"], "ok")
            self.assertEqual(
                body["checks"]["instances"],
                {"status": "ok", "total": 1, "running": 1, "stopped": 0, "error": 0, "failing": 0},
            )
            self.assertEqual(body["checks"]["store"], {"status": "ok", "writable": True})
            self.assertEqual(body["checks"]["hosts"]["status"], "ok")
            self.assertNotIn(id, json.dumps(body))

    def test_storeNotWritable(self) -> None:
        self.storeFails = True
        code, body = self.health()
        self.assertEqual((code, body["status"]), (503, "degraded"))
        self.assertEqual(body["checks"]["store"], {"status": "fail", "writable": False})
        self.storeFails = False
        self.assertEqual(self.health()[0], 200)

    def test_restartingInstanceInError(self) -> None:
        """
        An instance in C{error} that should run (C{restart=true}) degrades; one that should
        not (C{restart=false}) does not.
        """
        id = self.create()["id"]
        self.supervisor.set(id, Status.ERROR, Event.ERROR_LINE)
        code, body = self.health()
        self.assertEqual(code, 503)
        self.assertEqual(body["checks"]["instances"]["failing"], 1)
        self.call("PATCH", f"/instances/{id}", '{"restart": false}')
        self.assertEqual(self.health()[0], 200)

    def test_hostMissing(self) -> None:
        self.hosts.state["replacing"] = True
        code, body = self.health()
        self.assertEqual((code, body["checks"]["hosts"]["status"]), (503, "fail"))
        self.hosts.state.update(replacing=False, waiting=2)
        self.assertEqual(self.health()[0], 503)
        self.hosts.state["waiting"] = 0
        self.assertEqual(self.health()[0], 200)

    def test_ready(self) -> None:
        def ready() -> tuple[int, Any]:
            answer = self.fetch("GET", "/ready", headers={})
            return answer.code, answer.json()

        self.assertEqual(ready(), (200, {"status": "ready"}))
        self.api.ready = False
        self.assertEqual(ready(), (503, {"status": "starting"}))
        self.api.ready = True
        self.stopping = True
        self.assertEqual(ready(), (503, {"status": "stopping"}))
        # Only at the root: below the prefix it is an unknown route.
        self.assertNotFoundPage(self.fetch("GET", P + "/ready", headers={}))


class ConnectionsTests(AppTestCase):
    """
    C{P/v1/instances/{id}/connections}: the open connections of an instance, and closing one.
    """

    ENTRY = {
        "id": "1f",
        "proto": "tcp",
        "remote": "127.0.0.1:40001",
        "target": "127.0.0.1:8080",
        "rx": 10,
        "tx": 20,
        "since": 1765152000.25,
    }

    def test_listAndClose(self) -> None:
        id = self.create()["id"]
        self.assertJSON(self.call("GET", f"/instances/{id}/connections"), 200, [])
        self.supervisor.open[id] = [dict(self.ENTRY)]
        self.assertJSON(self.call("GET", f"/instances/{id}/connections"), 200, [self.ENTRY])
        self.assertEmpty(self.call("DELETE", f"/instances/{id}/connections/1f"), 204)
        self.assertJSON(self.call("GET", f"/instances/{id}/connections"), 200, [])
        self.assertError(
            self.call("DELETE", f"/instances/{id}/connections/1f"), 404, "Connection not found"
        )

    def test_errors(self) -> None:
        id = self.create()["id"]
        self.assertError(
            self.call("GET", "/instances/ffffffff/connections"), 404, "Instance not found"
        )
        self.assertError(
            self.call("GET", f"/instances/{PSEUDO}/connections"), 404, "Instance not found"
        )
        self.assertError(
            self.call("POST", f"/instances/{id}/connections"), 405, "Method not allowed"
        )
        self.assertError(
            self.call("GET", f"/instances/{id}/connections/1f"), 405, "Method not allowed"
        )
        self.assertError(
            self.call("GET", f"/instances/{id}/connections", headers={}),
            401,
            "Unauthorized: API key required",
        )
        # Anything else below an instance id is still Go's unknown id.
        self.assertError(self.call("GET", f"/instances/{id}/other"), 404, "Instance not found")

    def test_isolated(self) -> None:
        id = self.create()["id"]
        self.supervisor.isolated = True
        answer = self.call("GET", f"/instances/{id}/connections")
        self.assertEqual(answer.code, 501)
        self.assertIn("NP_CORE_BIN", answer.json()["error"])


class ThrottleTests(AppTestCase):
    """
    Wrong API keys from one address are slowed, then refused with 429 and Retry-After; a
    missing key is not a guess and is not counted; the right key clears the record.
    """

    def test_slowedThenRefused(self) -> None:
        throttle = self.api.badKeys
        for n in range(1, throttle.blockAfter):
            d = self.send("GET", P + "/info", headers={"X-API-Key": "0" * 32})
            self.pump()
            if n >= throttle.slowAfter:
                self.assertNoResult(d)
                self.clock.advance(throttle.delayFor(n))
                self.pump()
            self.assertError(self.successResultOf(d), 401, "Unauthorized: Invalid API key")
        self.assertError(
            self.call("GET", "/info", headers={"X-API-Key": "0" * 32}),
            401,
            "Unauthorized: Invalid API key",
        )
        for headers in ({"X-API-Key": KEY}, {"X-API-Key": "0" * 32}):
            answer = self.call("GET", "/info", headers=headers)
            self.assertEqual(answer.code, 429)
            self.assertEqual(answer.header("Retry-After"), [b"61"])
            self.assertIn("retry later", answer.json()["error"])
        self.clock.advance(61)
        self.assertJSON(self.call("GET", "/info"), 200)

    def test_missingKeyIsNotCounted(self) -> None:
        for _ in range(20):
            self.assertError(
                self.call("GET", "/info", headers={}), 401, "Unauthorized: API key required"
            )
        self.assertJSON(self.call("GET", "/info"), 200)

    def test_rightKeyClears(self) -> None:
        for _ in range(self.api.badKeys.slowAfter - 1):
            self.call("GET", "/info", headers={"X-API-Key": "0" * 32})
        self.assertJSON(self.call("GET", "/info"), 200)
        self.assertFalse(self.api.badKeys.known("127.0.0.1"))
