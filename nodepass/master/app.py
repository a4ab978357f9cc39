"""
The master's HTTP face: the Klein application that serves the REST API and the SSE stream
of master spec §3-§10 from the reactor everything else runs on.

Routing is done here rather than by werkzeug rules, on purpose (§16): the spec fixes an order
that a rule table cannot express.  For a protected route the order is

  1. CORS headers (§4.3);
  2. C{OPTIONS} answers 200 with an empty body, before any authentication;
  3. C{X-API-Key} (§5), so an unauthenticated C{DELETE P/info} is 401, not 405;
  4. the handler: for C{P/instances/{id}} an empty id is 400, then an unknown id 404, then
     an unsupported method 405 (C{P/webhooks/{id}} and its C{/deliveries}: an unknown or
     empty id 404, then 405).

A path outside the table gets Go's mux answer (404 C{404 page not found}, text/plain, no
CORS).  Every JSON answer is one value and a newline with C{Content-Type: application/json}
(§4.2, §18 b3); every error is C{{"error": message}}.

One Klein route catches every path (C{branch=True}) and hands it to L{MasterAPI.dispatch};
Klein still does what it is good at: Deferred and coroutine results, and cancelling the
handler's Deferred when the client goes away (which ends an SSE subscription).

When a dashboard directory is given, C{GET /} redirects (302) to C{P/v1/dashboard/}, the
built-in dashboard, served from the package's files with a strict Content-Security-Policy;
C{P/v1/dashboard/session} signs a browser in with the key and sets a session cookie
(L{nodepass.master.sessions}).  Every protected route then accepts that cookie instead of
C{X-API-Key}; a change made with it (any method but C{GET} and C{HEAD}) must carry the
session's C{X-CSRF-Token}, or it is refused with 403 before the handler runs.  A request
that carries C{X-API-Key} is judged by the key alone, exactly as without a dashboard.

Requests are bounded (§17 a6): L{LimitedRequest} stops storing a body past L{MAX_BODY}
bytes (the handler answers 413) and answers 408 to a request not received whole within
L{REQUEST_DEADLINE} seconds.
"""

from __future__ import annotations

import inspect
import io
import os
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import quote, unquote_to_bytes

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request as ServerRequest
from werkzeug.exceptions import NotFound as Unrouted

from nodepass import COMPATIBLE_VERSION
from nodepass.master.auth import API_KEY_HEADER, CorsPolicy
from nodepass.master.events import encodeJSON
from nodepass.master.health import HealthChecks
from nodepass.master.messages import (
    BODY_TOO_LARGE,
    INTERNAL_ERROR,
    KEY_INVALID,
    METHOD_NOT_ALLOWED,
    REQUEST_TIMEOUT,
    STARTING,
    TARGET_REQUIRED,
    TOO_MANY_REQUESTS,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    RegistryError,
    Unavailable,
    Unsupported,
)
from nodepass.master.metrics import CONTENT_TYPE, MasterMetrics, routeOf
from nodepass.master.openapi import DOCS_STATIC_FILES, docsPage, documentJSON
from nodepass.master.registry import MasterSettings
from nodepass.master.requests import decodeBody
from nodepass.master.sessions import (
    COOKIE_NAME,
    CSRF_HEADER,
    CSRF_REFUSED,
    NO_SESSION,
    TOO_MANY_SIGN_INS,
    Session,
    SessionStore,
)
from nodepass.master.store import StoreError
from nodepass.master.sysinfo import goArch, goOS
from nodepass.master.tcping import ProbeResult
from nodepass.master.webhooks import Webhooks
from nodepass.throttle import FailureThrottle

__all__ = [
    "DASHBOARD_DIRECTORY",
    "DASHBOARD_FILES",
    "DASHBOARD_HEADERS",
    "MAX_BODY",
    "REQUEST_DEADLINE",
    "STATUS_OF",
    "LimitedRequest",
    "MasterAPI",
    "MasterInfo",
    "statusOf",
]

log = Logger()

#: The largest request body the API accepts, in bytes (§17 a6: 413 beyond it).
MAX_BODY: Final = 64 * 1024

#: Seconds a client has to send a whole request, headers and body (§17 a6: 408 beyond).
REQUEST_DEADLINE: Final = 30.0

#: The one table from a domain error's kind to its HTTP status.
STATUS_OF: Final[Mapping[type[RegistryError], int]] = {
    InvalidRequest: 400,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
    Unsupported: 501,
}


def statusOf(error: RegistryError) -> int:
    """
    The HTTP status for C{error}: its kind's entry in L{STATUS_OF} (the nearest base class
    listed there), 500 for a kind the table does not know.
    """
    for kind in type(error).__mro__:
        status = STATUS_OF.get(kind)  # type: ignore[call-overload]
        if status is not None:
            return status
    return 500


_JSON: Final = b"application/json"
_ASSET_TYPES: Final = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8"}
_NOT_FOUND_BODY: Final = b"404 page not found\n"

#: Where the dashboard's files are installed, next to this module.
DASHBOARD_DIRECTORY: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")

#: The files of the dashboard, served below C{P/v1/dashboard/} (C{""} is C{index.html}).
DASHBOARD_FILES: Final = ("index.html", "app.css", "app.js", "logic.js", "chart.js")
_DASHBOARD_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
}
#: The security headers of every dashboard answer: scripts, styles, images and requests
#: from this origin only, no inline script or style, no framing, no referrer.
DASHBOARD_HEADERS: Final = {
    b"Content-Security-Policy": b"default-src 'self'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    b"form-action 'self'; frame-ancestors 'none'",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"X-Content-Type-Options": b"nosniff",
}
#: Characters of a prefix left as they are in a C{Location} or a cookie's C{Path}.
_PATH_SAFE: Final = "/!$&'()*+=:@-._~"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
#: The C{Server} header of every answer (twisted.web's default names the Twisted version).
SERVER_NAME: Final = b"NodePass"
_TIMEOUT_BODY: Final = b'{"error":"%s"}\n' % REQUEST_TIMEOUT.encode()
_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\nServer: NodePass\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class LimitedRequest(ServerRequest):
    """
    A request that must arrive whole within L{deadline} seconds and keeps at most
    L{MAX_BODY} bytes of its body in memory (§17 a6).

    Past the size limit the rest of the body is read and dropped, and L{bodyTooLarge} is
    set; the application answers 413.  Bodies are always kept in memory (Twisted would spill
    a large declared body to a temporary file, which the limit makes pointless).

    The deadline runs from the request line to the end of the body: a client that trickles
    its headers or body gets 408 and the connection is closed, however regularly it sends
    (the channel's idle timeout alone would not stop it).  Once the request is read, nothing
    limits how long it lasts, so event streams are not affected.
    """

    maxBody = MAX_BODY
    deadline = REQUEST_DEADLINE
    bodyTooLarge = False
    _received = 0

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        callLater = getattr(channel, "callLater", None)
        self._deadlineCall: Any = None
        if callLater is not None and self.deadline:
            self._deadlineCall = callLater(self.deadline, self._tooSlow)

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self.maxBody:
            self.bodyTooLarge = True

    def handleContentChunk(self, data: bytes) -> None:
        if self.bodyTooLarge:
            return
        self._received += len(data)
        if self._received > self.maxBody:
            self.bodyTooLarge = True
            self.content = io.BytesIO()
            return
        assert self.content is not None
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._cancelDeadline()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._cancelDeadline()
        super().connectionLost(reason)

    def _cancelDeadline(self) -> None:
        call, self._deadlineCall = self._deadlineCall, None
        if call is not None and call.active():
            call.cancel()

    def _tooSlow(self) -> None:
        self._deadlineCall = None
        transport = getattr(self.channel, "transport", None)
        if transport is None:
            return
        log.info(
            "Closing a connection from {peer}: no complete request within {deadline}s",
            peer=_peer(transport),
            deadline=self.deadline,
        )
        transport.write(_TIMEOUT_RESPONSE)
        transport.loseConnection()


class MasterInfo:
    """
    The fixed part of C{GET P/info} (§8.8) and the clock behind C{uptime}.

    @param settings: the master URL's C{log}, TLS code, C{crt} and C{key}.
    @param name: the host part of the master URL.
    @param clock: measures C{uptime} from construction.
    @param version: the release reported as C{ver} (§18 b5).
    """

    def __init__(
        self,
        settings: MasterSettings,
        name: str,
        clock: IReactorTime,
        version: str = COMPATIBLE_VERSION,
    ) -> None:
        self.settings = settings
        self.name = name
        self.version = version
        self.clock = clock
        self._started = clock.seconds()

    def uptime(self) -> int:
        return max(0, int(self.clock.seconds() - self._started))

    def monotonic(self) -> float:
        """
        The clock's time, for request durations.
        """
        return float(self.clock.seconds())


class _Handled(Exception):
    """
    Raised inside a handler to answer C{{"error": message}} with C{status}.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_Handler = Callable[[IRequest, str], Any]


class MasterAPI:
    """
    The master's REST API and SSE stream as a Klein application.

    @param registry: the instance registry (L{nodepass.master.registry.Registry}); it must
        be loaded before L{ready} is set.
    @param hub: the SSE hub whose snapshot is the registry's.
    @param tcping: runs C{P/tcping} probes (L{nodepass.master.tcping.TCPing}).
    @param systemInfo: returns a Deferred of the system fields of C{/info}
        (L{nodepass.master.sysinfo.collect} bound to a reactor and a CPU sampler).
    @param info: the fixed C{/info} values.
    @param prefix: the path before C{/v1} (§2), e.g. C{"/api"}.
    @param cors: the CORS policy (§4.3).
    @param staticDirectory: where the Swagger UI assets are, or C{None} for the plain page.
    @param readFile: reads an asset (the master reads in a thread); by default at once.
    @param dashboardDirectory: where the dashboard's files are (L{DASHBOARD_FILES}), or
        C{None} for no dashboard (then C{/} and C{P/v1/dashboard/...} are unknown paths and
        no session cookie is accepted).
    @param sessions: the dashboard sessions (by default a store on C{info}'s clock).
    @param secureCookies: mark the session cookie C{Secure} (the master serves TLS).
    """

    app = Klein()

    def __init__(
        self,
        registry: Any,
        hub: Any,
        tcping: Any,
        systemInfo: Callable[[], Deferred[dict[str, int]]],
        info: MasterInfo,
        prefix: str,
        cors: CorsPolicy | None = None,
        staticDirectory: str | None = None,
        readFile: Callable[[str], Deferred[bytes]] | None = None,
        metrics: MasterMetrics | None = None,
        health: HealthChecks | None = None,
        metricsPublic: bool = False,
        now: Callable[[], float] | None = None,
        webhooks: Webhooks | None = None,
        dashboardDirectory: str | None = None,
        sessions: SessionStore | None = None,
        secureCookies: bool = False,
    ) -> None:
        self.registry = registry
        self.hub = hub
        self.tcping = tcping
        self.systemInfo = systemInfo
        self.info = info
        self.prefix = prefix
        self.apiPrefix = prefix + "/v1"
        self.cors = cors if cors is not None else CorsPolicy()
        self.staticDirectory = staticDirectory
        self.readFile = readFile if readFile is not None else _readNow
        self.metrics = metrics
        self.health = health
        self.metricsPublic = metricsPublic
        self.webhooks = webhooks
        self._now = now if now is not None else info.monotonic
        #: Wrong API keys by address: slowed, then refused with 429 (docs/operations.md).
        self.badKeys = FailureThrottle(info.clock, log, "bad API keys")
        self._assets: dict[str, bytes] = {}
        self.dashboardDirectory = dashboardDirectory
        self.sessions = sessions if sessions is not None else SessionStore(info.clock)
        self.secureCookies = secureCookies
        self._dashboardFiles: dict[str, bytes] = {}
        #: The percent-encoded C{P/v1}, for redirects and the cookie's C{Path}.
        self._encodedApiPrefix = quote(self.apiPrefix, safe=_PATH_SAFE)
        #: Set once the registry is loaded; protected routes answer 503 until then.
        self.ready = False
        self._openapi: bytes | None = None
        self._docs: bytes | None = None
        self._protected: dict[str, _Handler] = {
            "/instances": self._instances,
            "/events": self._events,
            "/info": self._infoRoute,
            "/tcping": self._tcpingRoute,
        }
        if webhooks is not None:
            self._protected["/webhooks"] = self._webhooksRoute
        self._public: dict[str, _Handler] = {
            "/openapi.json": self._openapiRoute,
            "/docs": self._docsRoute,
        }
        # Operations routes: served below the prefix and at the root; no X-API-Key check in
        # dispatch (health and readiness are public, metrics check their own credentials).
        self._operations: dict[str, _Handler] = {}
        if metrics is not None:
            self._operations["/metrics"] = self._metricsRoute
        if health is not None:
            self._operations["/health"] = self._healthRoute
            self._operations["/ready"] = self._readyRoute

    def resource(self) -> IResource:
        """
        The Twisted Web resource to serve (put it in a L{twisted.web.server.Site} whose
        C{requestFactory} is L{LimitedRequest}).
        """
        resource: IResource = self.app.resource()
        return resource

    # -- dispatch ------------------------------------------------------------------------------

    @app.handle_errors(Unrouted)
    def unrouted(self, request: IRequest, failure: Any) -> Any:
        """
        A path Klein's route cannot match (a line break in it): dispatched like any other,
        so it gets the API's own answer (and headers), never werkzeug's HTML page.
        """
        return self.dispatch(request)

    @app.route("/", branch=True, strict_slashes=False)
    def dispatch(self, request: IRequest) -> Any:
        """
        Route C{request} by its decoded path (§3) and apply the order of §4.1.
        """
        request.setHeader(b"Server", SERVER_NAME)
        path = _decodedPath(request)
        operation = self._operations.get(path)
        if operation is not None:
            self._observe(request, routeOf(path))
            return self._run(request, operation, "")
        if not path.startswith(self.apiPrefix + "/"):
            self._observe(request, "other")
            if path == "/" and self.dashboardDirectory is not None:
                if _method(request) in _SAFE_METHODS:
                    return self._redirect(request, "/dashboard/")
            return _notFound(request)
        route = path[len(self.apiPrefix) :]
        self._observe(request, self._routeLabel(route))
        if self.dashboardDirectory is not None and (
            route == "/dashboard" or route.startswith("/dashboard/")
        ):
            return self._dashboard(request, route)
        handler = self._public.get(route)
        if handler is None and route != "/ready":
            handler = self._operations.get(route)
        argument = ""
        protected = handler is None
        if handler is None:
            handler = self._protected.get(route)
        if handler is None and route.startswith("/instances/"):
            handler, argument = self._instance, route[len("/instances/") :]
        if handler is None and self.webhooks is not None and route.startswith("/webhooks/"):
            handler, argument = self._webhookHandler(route)
        if handler is None and route.startswith("/docs/static/"):
            name = route[len("/docs/static/") :]
            if name in DOCS_STATIC_FILES and self.staticDirectory is not None:
                handler, argument, protected = self._staticRoute, name, False
        if handler is None:
            return _notFound(request)
        self.cors.apply(request)
        if _method(request) == "OPTIONS":
            return _empty(request, 200)
        if protected:
            if not self.ready:
                return _error(request, 503, STARTING)
            refusal = self._authenticate(request)
            if refusal is not None:
                return refusal
        return self._run(request, handler, argument)

    def _authenticate(self, request: IRequest) -> Any:
        """
        The 401 or 403 answer for a protected route, or C{None} when the request may go on:
        C{X-API-Key} when present, else a dashboard session cookie (with the session's CSRF
        token on a change).
        """
        header = request.getHeader(API_KEY_HEADER)
        if not header:
            session = self._cookieSession(request)
            if session is not None:
                if _method(request) in _SAFE_METHODS or session.allows(
                    request.getHeader(CSRF_HEADER)
                ):
                    return None
                return _error(request, 403, CSRF_REFUSED)
        return self._checkKey(request, header)

    def _checkKey(self, request: IRequest, credential: bytes | None) -> Any:
        """
        The answer for a request whose key is missing or wrong, or C{None} when it is right.
        Wrong keys (not missing ones) count against the caller's address: after a few its
        401s are held back, and then it gets 429 with C{Retry-After} for a while.
        """
        peer = _peerHost(request)
        wait = self.badKeys.retryAfter(peer)
        if wait is not None:
            request.setHeader(b"Retry-After", b"%d" % (int(wait) + 1))
            return _error(request, 429, TOO_MANY_REQUESTS)
        rejection = self.registry.keyChecker.rejection(credential)
        if rejection is None:
            self.badKeys.succeeded(peer)
            return None
        if rejection != KEY_INVALID:
            return _error(request, 401, rejection)
        if not self.badKeys.known(peer):
            log.warn("Wrong API key from {peer}", peer=peer)
        delay = self.badKeys.failed(peer)
        if delay <= 0:
            return _error(request, 401, rejection)
        return deferLater(self.info.clock, delay, _error, request, 401, rejection)

    def _cookieSession(self, request: IRequest) -> Session | None:
        """
        The live dashboard session of C{request}'s cookie, if the dashboard is served.
        """
        if self.dashboardDirectory is None:
            return None
        token = request.getCookie(COOKIE_NAME)
        if not token:
            return None
        return self.sessions.find(token, self.registry.keyChecker.digest)

    def _webhookHandler(self, route: str) -> tuple[_Handler | None, str]:
        """
        C{/webhooks/{id}} and C{/webhooks/{id}/deliveries} (an empty id is an unknown one);
        any other path below C{/webhooks/} is not a route.
        """
        id, slash, rest = route[len("/webhooks/") :].partition("/")
        if not slash:
            return self._webhookRoute, id
        if rest == "deliveries" and id:
            return self._deliveriesRoute, id
        return None, ""

    def _routeLabel(self, route: str) -> str:
        """
        The metrics label of a path below C{P/v1}: L{routeOf}'s, or the webhook templates.
        """
        if route == "/ready":
            return "other"
        if self.webhooks is not None and route.startswith("/webhooks/"):
            handler, _ = self._webhookHandler(route)
            if handler is None:
                return "other"
            return "/webhooks/{id}" if route.count("/") == 2 else "/webhooks/{id}/deliveries"
        if self.webhooks is not None and route == "/webhooks":
            return route
        if self.dashboardDirectory is not None:
            if route == "/dashboard/session":
                return route
            if route == "/dashboard" or route.startswith("/dashboard/"):
                return "/dashboard"
        return routeOf(route)

    def _run(self, request: IRequest, handler: _Handler, argument: str) -> Any:
        try:
            result = handler(request, argument)
        except RegistryError as e:
            return _error(request, statusOf(e), e.message)
        except _Handled as e:
            return _error(request, e.status, e.message)
        except Exception:
            result = fail()  # answered 500 and logged below, like an asynchronous failure
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if not isinstance(result, Deferred):
            return result

        def failed(failure: Any) -> Any:
            if failure.check(RegistryError):
                return _error(request, statusOf(failure.value), failure.value.message)
            if failure.check(_Handled):
                return _error(request, failure.value.status, failure.value.message)
            if failure.check(StoreError):
                # Nothing changed (the registry applies a change only once it is saved).
                log.error("{error}", error=str(failure.value))
                return _error(request, 503, str(failure.value))
            if failure.check(CancelledError) or failure.check(Exception) is None:
                return failure  # the client went away (Klein cancels): nothing to answer
            log.failure(
                "Request {method} {path} failed",
                failure,
                method=_method(request),
                path=bytes(request.path).decode("ascii", "replace"),
            )
            return _error(request, 500, INTERNAL_ERROR)

        return result.addErrback(failed)

    def _observe(self, request: IRequest, route: str) -> None:
        """
        Count and time C{request} under C{route} once its answer is finished.
        """
        metrics = self.metrics
        if metrics is None:
            return
        started = self._now()
        method = _method(request)

        def finished(_: object) -> None:
            code = getattr(request, "code", 200)
            metrics.observe(method, route, int(code), self._now() - started)

        notifyFinish: Any = getattr(request, "notifyFinish", None)
        if notifyFinish is not None:
            notifyFinish().addBoth(finished)

    # -- operations routes -----------------------------------------------------------------------

    def _metricsRoute(self, request: IRequest, _: str) -> Any:
        assert self.metrics is not None
        if _method(request) not in ("GET", "HEAD"):
            raise _Handled(405, METHOD_NOT_ALLOWED)
        if not self.metricsPublic and self._cookieSession(request) is None:
            refusal = self._checkKey(request, _metricsCredential(request))
            if refusal is not None:
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="nodepass"')
                return refusal
        body = self.metrics.render()
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    async def _healthRoute(self, request: IRequest, _: str) -> bytes:
        assert self.health is not None
        if _method(request) not in ("GET", "HEAD"):
            raise _Handled(405, METHOD_NOT_ALLOWED)
        request.setHeader(b"Cache-Control", b"no-store")
        healthy, body = await self.health.health()
        return _json(request, 200 if healthy else 503, body)

    def _readyRoute(self, request: IRequest, _: str) -> bytes:
        assert self.health is not None
        if _method(request) not in ("GET", "HEAD"):
            raise _Handled(405, METHOD_NOT_ALLOWED)
        request.setHeader(b"Cache-Control", b"no-store")
        if self.ready and self.health.isReady():
            return _json(request, 200, {"status": "ready"})
        return _json(request, 503, {"status": "stopping" if self.ready else "starting"})

    # -- protected routes ----------------------------------------------------------------------

    def _instances(self, request: IRequest, _: str) -> Any:
        method = _method(request)
        if method == "GET":
            key = _callerKey(request)
            return self.registry.list(key).addCallback(lambda value: _json(request, 200, value))
        if method == "POST":
            body = _body(request)
            return self.registry.createFromBody(body).addCallback(
                lambda value: _json(request, 201, value)
            )
        raise _Handled(405, METHOD_NOT_ALLOWED)

    async def _instance(self, request: IRequest, id: str) -> Any:
        instanceId, slash, rest = id.partition("/")
        if slash and instanceId and (rest == "connections" or rest.startswith("connections/")):
            return await self._connections(request, instanceId, rest[len("connections/") :])
        # Empty id 400, unknown id 404, then the method (§4.1).
        key = _callerKey(request)
        current = await self.registry.get(id, key)
        method = _method(request)
        if method == "GET":
            return _json(request, 200, current)
        if method == "PATCH":
            body = _body(request)
            if not body:
                return _json(request, 200, current)  # Go: empty body, nothing changes
            return _json(request, 200, await self.registry.patch(id, body, key))
        if method == "PUT":
            self.registry.checkReplaceable(id)  # 403 for ******** before the body (§8.5)
            body = _body(request)
            return _json(request, 200, await self.registry.putFromBody(id, body))
        if method == "DELETE":
            await self.registry.delete(id)
            return _empty(request, 204)
        raise _Handled(405, METHOD_NOT_ALLOWED)

    async def _connections(self, request: IRequest, id: str, connection: str) -> Any:
        """
        C{P/instances/{id}/connections} (GET) and C{.../connections/{cid}} (DELETE).
        """
        method = _method(request)
        if not connection:
            if method != "GET":
                raise _Handled(405, METHOD_NOT_ALLOWED)
            return _json(request, 200, await self.registry.connections(id))
        if method != "DELETE":
            raise _Handled(405, METHOD_NOT_ALLOWED)
        await self.registry.closeConnection(id, connection)
        return _empty(request, 204)

    def _events(self, request: IRequest, _: str) -> Any:
        if _method(request) != "GET":
            raise _Handled(405, METHOD_NOT_ALLOWED)
        # No idle timeout to lift: Twisted's channel suspends it while a request is handled.
        return self.hub.subscribe(request)

    async def _infoRoute(self, request: IRequest, _: str) -> Any:
        method = _method(request)
        if method == "POST":
            body = _body(request)
            await self.registry.setMasterAliasFromBody(body)
        elif method != "GET":
            raise _Handled(405, METHOD_NOT_ALLOWED)
        return _json(request, 200, await self.infoObject())

    async def infoObject(self) -> dict[str, Any]:
        """
        The C{/info} object (§8.8), keys sorted as Go's map encoding sorts them.
        """
        system = await self.systemInfo()
        settings = self.info.settings
        value: dict[str, Any] = dict(system)
        value.update(
            mid=self.registry.masterID,
            alias=self.registry.masterAlias,
            os=goOS(),
            arch=goArch(),
            ver=self.info.version,
            name=self.info.name,
            uptime=self.info.uptime(),
            log=settings.log,
            tls=settings.tls,
            crt=settings.crt,
            key=settings.key,
        )
        return dict(sorted(value.items()))

    def _tcpingRoute(self, request: IRequest, _: str) -> Any:
        if _method(request) != "GET":
            raise _Handled(405, METHOD_NOT_ALLOWED)
        args: Mapping[bytes, list[bytes]] = getattr(request, "args", None) or {}
        values = args.get(b"target") or [b""]
        target = values[0].decode("utf-8", "replace")
        if not target:
            raise _Handled(400, TARGET_REQUIRED)
        probing: Deferred[ProbeResult] = self.tcping.probe(target)
        return probing.addCallback(lambda value: _json(request, 200, value))

    async def _webhooksRoute(self, request: IRequest, _: str) -> Any:
        assert self.webhooks is not None
        method = _method(request)
        if method == "GET":
            return _json(request, 200, self.webhooks.hooks())
        if method == "POST":
            body = _body(request)
            return _json(request, 201, await self.webhooks.create(body))
        raise _Handled(405, METHOD_NOT_ALLOWED)

    async def _webhookRoute(self, request: IRequest, id: str) -> Any:
        # Unknown id 404, then the method (as for instances, §4.1).
        assert self.webhooks is not None
        current = self.webhooks.get(id)
        method = _method(request)
        if method == "GET":
            return _json(request, 200, current)
        if method == "PATCH":
            body = _body(request)
            return _json(request, 200, await self.webhooks.patch(id, body))
        if method == "DELETE":
            await self.webhooks.delete(id)
            return _empty(request, 204)
        raise _Handled(405, METHOD_NOT_ALLOWED)

    def _deliveriesRoute(self, request: IRequest, id: str) -> Any:
        assert self.webhooks is not None
        deliveries = self.webhooks.deliveries(id)
        if _method(request) != "GET":
            raise _Handled(405, METHOD_NOT_ALLOWED)
        return _json(request, 200, deliveries)

    # -- public routes -------------------------------------------------------------------------

    def _openapiRoute(self, request: IRequest, _: str) -> bytes:
        if self._openapi is None:
            self._openapi = documentJSON(self.prefix, self.info.version) + b"\n"
        request.setHeader(b"Content-Type", _JSON)
        return self._openapi

    def _docsRoute(self, request: IRequest, _: str) -> bytes:
        if self._docs is None:
            self._docs = docsPage(self.prefix, self.staticDirectory is not None)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self._docs

    async def _staticRoute(self, request: IRequest, name: str) -> bytes:
        assert self.staticDirectory is not None
        if _method(request) not in ("GET", "HEAD"):
            raise _Handled(405, METHOD_NOT_ALLOWED)
        body = self._assets.get(name)
        if body is None:
            # Read once, off the reactor thread when a reader is given; about 1.5 MB in all.
            body = self._assets[name] = await self.readFile(
                os.path.join(self.staticDirectory, name)
            )
        request.setHeader(b"Content-Type", _ASSET_TYPES[os.path.splitext(name)[1]])
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.setHeader(b"Cache-Control", b"public, max-age=86400")
        return body

    # -- dashboard -------------------------------------------------------------------------

    def _dashboard(self, request: IRequest, route: str) -> Any:
        """
        C{P/v1/dashboard}, its files and its session, with the security headers.
        """
        for header, value in DASHBOARD_HEADERS.items():
            request.setHeader(header, value)
        if route == "/dashboard":
            return self._redirect(request, "/dashboard/")
        name = route[len("/dashboard/") :] or "index.html"
        if name == "session":
            request.setHeader(b"Cache-Control", b"no-store")
            if not self.ready:
                return _error(request, 503, STARTING)
            return self._run(request, self._sessionRoute, "")
        if name not in DASHBOARD_FILES:
            return _notFound(request)
        return self._run(request, self._dashboardFile, name)

    def _redirect(self, request: IRequest, route: str) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"Location", (self._encodedApiPrefix + route).encode("ascii"))
        request.setHeader(b"Content-Length", b"0")
        if isinstance(request, ServerRequest):
            request.defaultContentType = None  # type: ignore[assignment]
        return b""

    async def _dashboardFile(self, request: IRequest, name: str) -> bytes:
        assert self.dashboardDirectory is not None
        if _method(request) not in _SAFE_METHODS:
            raise _Handled(405, METHOD_NOT_ALLOWED)
        body = self._dashboardFiles.get(name)
        if body is None:
            body = self._dashboardFiles[name] = await self.readFile(
                os.path.join(self.dashboardDirectory, name)
            )
        request.setHeader(b"Content-Type", _DASHBOARD_TYPES[os.path.splitext(name)[1]])
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.setHeader(b"Cache-Control", b"no-cache")
        return body

    def _sessionRoute(self, request: IRequest, _: str) -> bytes:
        """
        C{POST} signs in with C{{"key": ...}}, C{GET} tells the page its CSRF token, C{DELETE}
        signs out.
        """
        method = _method(request)
        current = self._cookieSession(request)
        if method == "POST":
            return self._signIn(request, current)
        if method == "GET":
            if current is None:
                return _error(request, 401, NO_SESSION)
            return self._sessionAnswer(request, current)
        if method == "DELETE":
            if current is not None:
                if not current.allows(request.getHeader(CSRF_HEADER)):
                    return _error(request, 403, CSRF_REFUSED)
                self.sessions.close(current.token)
            self._setCookie(request, "", 0)
            return _empty(request, 204)
        raise _Handled(405, METHOD_NOT_ALLOWED)

    def _signIn(self, request: IRequest, current: Session | None) -> bytes:
        address = _clientHost(request)
        limiter = self.sessions.limiter
        wait = limiter.retryAfter(address)
        if wait is not None:
            request.setHeader(b"Retry-After", b"%d" % wait)
            return _error(request, 429, TOO_MANY_SIGN_INS)
        key = _body(request).get("key")
        candidate = key.encode("utf-8") if isinstance(key, str) and key else None
        checker = self.registry.keyChecker
        rejection = checker.rejection(candidate)
        if rejection is not None:
            limiter.failed(address)
            log.info("Dashboard sign-in refused from {address}", address=address)
            return _error(request, 401, rejection)
        limiter.succeeded(address)
        if current is not None:
            self.sessions.close(current.token)
        session = self.sessions.open(checker.digest)
        self._setCookie(request, session.token, int(self.sessions.lifetime))
        return self._sessionAnswer(request, session)

    def _sessionAnswer(self, request: IRequest, session: Session) -> bytes:
        remaining = max(0, int(session.expires - self.info.clock.seconds()))
        return _json(request, 200, {"csrf": session.csrf, "expires": remaining})

    def _setCookie(self, request: IRequest, value: str, maxAge: int) -> None:
        cookie = b"%s=%s; Path=%s; Max-Age=%d; HttpOnly; SameSite=Strict" % (
            COOKIE_NAME,
            value.encode("ascii"),
            self._encodedApiPrefix.encode("ascii"),
            maxAge,
        )
        if self.secureCookies:
            cookie += b"; Secure"
        request.responseHeaders.setRawHeaders(b"Set-Cookie", [cookie])


# -- helpers -----------------------------------------------------------------------------------


def _clientHost(request: IRequest) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host is not None else str(address)


def _peer(transport: Any) -> str:
    try:
        address = transport.getPeer()
        return f"{address.host}:{address.port}"
    except Exception:
        return "an unknown peer"


def _metricsCredential(request: IRequest) -> bytes | None:
    """
    The key a scrape presents: C{X-API-Key}, or C{Authorization: Bearer <key>} (what
    Prometheus sends for C{authorization: credentials}).
    """
    value = request.getHeader(API_KEY_HEADER)
    if value:
        return value  # type: ignore[no-any-return]
    authorization = request.getHeader(b"Authorization")
    if isinstance(authorization, bytes):
        scheme, _, credentials = authorization.partition(b" ")
        if scheme.lower() == b"bearer":
            return credentials.strip() or None
    return None


def _peerHost(request: IRequest) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", "?"))


def _callerKey(request: IRequest) -> str:
    """
    The API key this (authenticated) request carries: the pseudo-instance shows it back in
    C{url} to the caller who sent it, as Go does, and to nobody else.
    """
    value = request.getHeader(API_KEY_HEADER)
    return value.decode("ascii", "replace") if isinstance(value, bytes) else ""


def _readNow(path: str) -> Deferred[bytes]:
    with open(path, "rb") as f:
        return succeed(f.read())


def _method(request: IRequest) -> str:
    return bytes(request.method).decode("ascii", "replace").upper()


def _decodedPath(request: IRequest) -> str:
    raw = bytes(request.path)
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def _json(request: IRequest, status: int, value: Any) -> bytes:
    body = encodeJSON(value) + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", _JSON)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _error(request: IRequest, status: int, message: str) -> bytes:
    return _json(request, status, {"error": message})


def _empty(request: IRequest, status: int) -> bytes:
    request.setResponseCode(status)
    if isinstance(request, ServerRequest):
        request.defaultContentType = None  # type: ignore[assignment]
    request.responseHeaders.removeHeader(b"content-type")
    if status != 204:
        request.setHeader(b"Content-Length", b"0")
    return b""


def _notFound(request: IRequest) -> bytes:
    request.setResponseCode(404)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Content-Length", b"%d" % len(_NOT_FOUND_BODY))
    return _NOT_FOUND_BODY


def _body(request: IRequest) -> dict[str, Any]:
    """
    The decoded JSON body (§4.2), or 413 past L{MAX_BODY} (whatever the request class).
    """
    if getattr(request, "bodyTooLarge", False):
        raise _Handled(413, BODY_TOO_LARGE)
    content = request.content
    if content is None:
        return {}
    content.seek(0)
    raw = content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise _Handled(413, BODY_TOO_LARGE)
    return decodeBody(raw)
