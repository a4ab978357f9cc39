"""
Signed webhooks of the master: C{P/webhooks} and the deliveries behind it.

A webhook (L{nodepass.master.store.StoredWebhook}) names a URL, the event kinds it wants and
an optional secret.  L{Webhooks} keeps them (persisted before any answer, like instances),
and turns what happens in the master into POSTs:

  - C{create}, C{update}, C{delete}: the registry's SSE events of the same names, with the
    same instance object the API shows (the C{********} pseudo-instance is never sent);
  - C{status}: an instance's status changed (C{running}, C{stopped}, C{error}); the many
    checkpoint C{update}s that change only figures do not count;
  - C{master}: the master started (its state is loaded), is shutting down, its alias
    changed or its API key was regenerated (the key itself is never sent).

The body is one JSON object, C{{"event", "time", "instance"?, "master"?}}, encoded once per
event; each hook signs it with its own secret: C{X-NodePass-Signature:
sha256=<hex HMAC-SHA256(secret, body)>} over exactly the bytes sent.

Each hook has a L{_Courier}: a bounded queue (L{QUEUE_LIMIT} events; when full the oldest is
dropped and counted) and one delivery at a time, so a receiver gets its events in order.
A delivery succeeds on a 2xx answer; anything else (another status, a connection error, no
answer within L{DELIVERY_TIMEOUT}) is retried after 1 s, 2 s, 4 s, ... for at most
L{MAX_ATTEMPTS} attempts, none starting later than L{RETRY_WINDOW} after the first.  The last
L{DELIVERIES_KEPT} attempts of each hook are kept in memory for C{GET .../deliveries}.
Publishing only appends to queues: nothing here ever makes the API or the registry wait.

The HTTP side is a L{Poster}: L{treqPoster} for the master, a fake in tests.  Time comes
from the injected clock.  Secrets never reach a log line, an answer or an event; log lines
name a hook by its id and its URL by host only (a URL may carry credentials).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import attrs
from attrs import frozen
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    TimeoutError,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as BodyProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from nodepass.master.events import encodeJSON
from nodepass.master.messages import (
    WEBHOOK_LIMIT,
    WEBHOOK_LIMIT_REACHED,
    WEBHOOK_NOT_FOUND,
    Conflict,
    NotFound,
)
from nodepass.master.requests import validateWebhook
from nodepass.master.store import PSEUDO_ID, StoredWebhook
from nodepass.master.views import deliveryObject, webhookEvent, webhookObject

__all__ = [
    "DELIVERIES_KEPT",
    "DELIVERY_TIMEOUT",
    "EVENT_HEADER",
    "MAX_ATTEMPTS",
    "QUEUE_LIMIT",
    "RETRY_WINDOW",
    "SIGNATURE_HEADER",
    "Delivery",
    "HubTee",
    "Poster",
    "Webhooks",
    "retryDelay",
    "signature",
    "treqPoster",
]

log = Logger()

#: Seconds a receiver has to answer (headers and body) before the attempt fails.
DELIVERY_TIMEOUT: Final = 10.0

#: The pause before the first retry; it doubles after each failed attempt.
FIRST_RETRY_DELAY: Final = 1.0

#: Most attempts for one event.
MAX_ATTEMPTS: Final = 5

#: No attempt starts later than this many seconds after the first attempt of its event.
RETRY_WINDOW: Final = 60.0

#: Most events waiting for one hook; past it the oldest is dropped (and counted).
QUEUE_LIMIT: Final = 1000

#: Attempts kept per hook for C{GET P/webhooks/{id}/deliveries}.
DELIVERIES_KEPT: Final = 100

#: Most bytes of a receiver's answer that are read (and thrown away) before hanging up.
ANSWER_LIMIT: Final = 64 * 1024

#: Seconds between two log lines about a hook dropping events.
DROP_LOG_INTERVAL: Final = 60.0

SIGNATURE_HEADER: Final = b"X-NodePass-Signature"
EVENT_HEADER: Final = b"X-NodePass-Event"

#: Kinds that follow the registry's events of the same name.
_INSTANCE_EVENTS: Final = ("create", "update", "delete")

#: Every instance is stopped when the master loads it or creates it (master spec §11.4).
_FIRST_STATUS: Final = "stopped"

#: POSTs C{body} to C{url} with C{headers}; fires with the receiver's status code once its
#: answer is read, fails when no answer comes (the caller bounds the time and may cancel).
Poster = Callable[[str, bytes, Headers], Deferred[int]]


def signature(secret: str, body: bytes) -> str:
    """
    The C{X-NodePass-Signature} value of C{body}: C{sha256=} and the hex HMAC-SHA256 of the
    body under the UTF-8 bytes of C{secret}.
    """
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return "sha256=" + digest


def retryDelay(attempt: int) -> float:
    """
    The pause after failed attempt number C{attempt} (1, 2, 3, ...): 1 s, 2 s, 4 s, ...
    """
    return FIRST_RETRY_DELAY * 2.0 ** (attempt - 1)


def _newId() -> str:
    return secrets.token_hex(4)


def _where(url: str) -> str:
    """
    C{host[:port]} of C{url}, for log lines (never the path, query or credentials).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"


def _oneLine(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(failure: Failure) -> str:
    """
    One line saying why an attempt got no answer.
    """
    if failure.check(TimeoutError):
        return f"no answer within {DELIVERY_TIMEOUT:g} s"
    value = failure.value
    # treq/Agent wrap the real causes (refused, reset, TLS) in a list of failures.
    reasons = getattr(value, "reasons", None)
    if reasons and isinstance(reasons[0], Failure):
        value = reasons[0].value
    text = str(value) or type(value).__name__
    return _oneLine(f"{type(value).__name__}: {text}")


class WebhookStore(Protocol):
    """
    What L{Webhooks} needs from L{nodepass.master.store.Store}.
    """

    def webhooks(self) -> Deferred[tuple[StoredWebhook, ...]]: ...

    def putWebhook(self, hook: StoredWebhook) -> Deferred[None]: ...

    def deleteWebhook(self, id: str) -> Deferred[bool]: ...


@frozen
class Delivery:
    """
    One attempt to deliver one event to one hook.

    @ivar started: when the attempt began (clock seconds).
    @ivar status: the receiver's HTTP status, C{None} if no answer came.
    @ivar error: why it failed, C{None} on success.
    @ivar duration: seconds from the start of the attempt to its outcome.
    """

    event: str
    started: float
    attempt: int
    status: int | None
    error: str | None
    duration: float

    def view(self) -> dict[str, Any]:
        return deliveryObject(
            self.event, self.started, self.attempt, self.status, self.error, self.duration
        )


@frozen
class _Event:
    kind: str
    body: bytes


class _Courier:
    """
    One hook's queue and its deliveries, one at a time, in order.

    @ivar hook: the hook as stored now (a PATCH replaces it; the next attempt uses it).
    """

    def __init__(
        self,
        hook: StoredWebhook,
        clock: IReactorTime,
        poster: Poster,
        userAgent: bytes,
        idle: Callable[[], None],
        queueLimit: int = QUEUE_LIMIT,
    ) -> None:
        self.hook = hook
        self._clock = clock
        self._poster = poster
        self._userAgent = userAgent
        self._idle = idle
        self._queueLimit = queueLimit
        self.queue: deque[_Event] = deque()
        self.deliveries: deque[Delivery] = deque(maxlen=DELIVERIES_KEPT)
        self.dropped = 0
        self._lastDropLog: float | None = None
        self._current: _Event | None = None
        self._attempt = 0
        self._first = 0.0
        self._inflight: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._closed = False
        #: Set while L{_next} runs; a delivery that ends at once then asks for another
        #: round of its loop instead of recursing (a thousand queued events, say).
        self._pumping = False
        self._again = False

    @property
    def idle(self) -> bool:
        return self._current is None and not self.queue

    @property
    def queued(self) -> int:
        """
        Events not yet delivered, the one being tried included.
        """
        return len(self.queue) + (self._current is not None)

    def enqueue(self, event: _Event) -> None:
        if self._closed:
            return
        if len(self.queue) >= self._queueLimit:
            self.queue.popleft()
            self.dropped += 1
            self._logDrops()
        self.queue.append(event)
        self._next()

    def close(self) -> int:
        """
        Stop: cancel the attempt under way and the pending retry, forget the queue.

        @return: how many events were not delivered.
        """
        lost = self.queued
        self._closed = True
        self.queue.clear()
        self._current = None
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.cancel()
        return lost

    # -- the delivery loop ---------------------------------------------------------------------

    def _next(self) -> None:
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                if self._closed or self._current is not None:
                    return
                if not self.queue:
                    self._idle()
                    return
                self._current = self.queue.popleft()
                self._attempt = 1
                self._first = self._clock.seconds()
                self._send()
                if not self._again:
                    return
        finally:
            self._pumping = False

    def _headers(self, event: _Event) -> Headers:
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"User-Agent": [self._userAgent],
                EVENT_HEADER: [event.kind.encode("ascii")],
            }
        )
        if self.hook.secret:
            headers.setRawHeaders(
                SIGNATURE_HEADER, [signature(self.hook.secret, event.body).encode("ascii")]
            )
        return headers

    def _send(self) -> None:
        self._retry = None
        event = self._current
        if event is None or self._closed:
            return
        started = self._clock.seconds()
        attempt = self._attempt
        d: Deferred[int] = maybeDeferred(
            self._poster, self.hook.url, event.body, self._headers(event)
        )
        d.addTimeout(DELIVERY_TIMEOUT, self._clock)
        self._inflight = d

        def answered(code: int) -> None:
            ok = 200 <= code < 300
            self._outcome(event, started, attempt, code, None if ok else f"HTTP {code}")

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError) and self._closed:
                return  # stopped or deleted: nothing more to record
            self._outcome(event, started, attempt, None, _describe(failure))

        d.addCallbacks(answered, failed)
        d.addErrback(
            lambda f: log.failure("Webhook {id}: delivery bookkeeping failed", f, id=self.hook.id)
        )

    def _outcome(
        self, event: _Event, started: float, attempt: int, status: int | None, error: str | None
    ) -> None:
        self._inflight = None
        if self._closed or event is not self._current:
            return
        now = self._clock.seconds()
        self.deliveries.append(Delivery(event.kind, started, attempt, status, error, now - started))
        if error is None:
            self._done()
            return
        delay = retryDelay(attempt)
        if attempt < MAX_ATTEMPTS and now + delay - self._first <= RETRY_WINDOW:
            self._attempt = attempt + 1
            self._retry = self._clock.callLater(delay, self._send)
            return
        log.warn(
            "Webhook {id} ({where}): gave up on a {event} event after {attempts} attempts: {why}",
            id=self.hook.id,
            where=_where(self.hook.url),
            event=event.kind,
            attempts=attempt,
            why=error,
        )
        self._done()

    def _done(self) -> None:
        self._current = None
        self._next()

    def _logDrops(self) -> None:
        now = self._clock.seconds()
        if self._lastDropLog is not None and now - self._lastDropLog < DROP_LOG_INTERVAL:
            return
        log.warn(
            "Webhook {id} ({where}): its queue is full ({limit} events), {count} oldest "
            "events dropped so far",
            id=self.hook.id,
            where=_where(self.hook.url),
            limit=self._queueLimit,
            count=self.dropped,
        )
        self._lastDropLog = now


class Webhooks:
    """
    The master's webhooks: the operations of C{P/webhooks} and the deliveries.

    @param clock: times attempts, retries and the C{time} of every event.
    @param store: persists the hooks (L{nodepass.master.store.Store}).
    @param poster: sends one POST (L{treqPoster}).
    @param version: the NodePass version, for C{User-Agent: NodePass/<version>}.
    @param newId: generates webhook ids (8 hex characters).
    @param limit: most hooks (L{nodepass.master.messages.WEBHOOK_LIMIT}).
    @param queueLimit: most events waiting per hook (L{QUEUE_LIMIT}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: WebhookStore,
        poster: Poster,
        version: str,
        *,
        newId: Callable[[], str] = _newId,
        limit: int = WEBHOOK_LIMIT,
        queueLimit: int = QUEUE_LIMIT,
    ) -> None:
        self._clock = clock
        self._store = store
        self._poster = poster
        self._userAgent = f"NodePass/{version}".encode("ascii", "replace")
        self._newId = newId
        self._limit = limit
        self._queueLimit = queueLimit
        self._couriers: dict[str, _Courier] = {}
        self._lock = DeferredLock()
        self._statuses: dict[str, str] = {}
        self._idleWaiters: list[Deferred[None]] = []
        self._stopped = False

    # -- boot and shutdown ---------------------------------------------------------------------

    def load(self) -> Deferred[int]:
        """
        Restore the stored hooks (at start-up, before the API opens).

        @return: how many there are.
        """

        def loaded(hooks: tuple[StoredWebhook, ...]) -> int:
            for hook in hooks:
                self._couriers[hook.id] = self._courier(hook)
            return len(hooks)

        return self._store.webhooks().addCallback(loaded)

    def whenIdle(self, timeout: float) -> Deferred[None]:
        """
        Fires once no hook has an event waiting, or after C{timeout} seconds (never fails):
        the shutdown gives the last events a bounded chance.
        """
        if self._allIdle():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)

        def late(failure: Failure) -> None:
            failure.trap(TimeoutError)
            if d in self._idleWaiters:
                self._idleWaiters.remove(d)

        return d.addTimeout(timeout, self._clock).addErrback(late)

    def stop(self) -> int:
        """
        Stop every delivery (attempts under way are cancelled) and accept no more events.

        @return: how many events were not delivered.
        """
        self._stopped = True
        lost = sum(courier.close() for courier in self._couriers.values())
        if lost:
            log.warn("{count} webhook events were not delivered before shutdown", count=lost)
        self._fireIdle()
        return lost

    # -- the API -------------------------------------------------------------------------------

    def hooks(self) -> list[dict[str, Any]]:
        """
        C{GET P/webhooks}: every hook, in creation order.
        """
        return [self._view(courier) for courier in self._couriers.values()]

    def get(self, id: str) -> dict[str, Any]:
        """
        C{GET P/webhooks/{id}}.

        @raise NotFound: no such hook.
        """
        return self._view(self._find(id))

    def deliveries(self, id: str) -> list[dict[str, Any]]:
        """
        C{GET P/webhooks/{id}/deliveries}: the last attempts, newest first.

        @raise NotFound: no such hook.
        """
        return [delivery.view() for delivery in reversed(self._find(id).deliveries)]

    def create(self, body: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """
        C{POST P/webhooks}: validate, persist, then deliver from the next event on.

        @raise InvalidRequest: the body is wrong (the exact text says what).
        @raise Conflict: there are already L{WEBHOOK_LIMIT} hooks.
        """

        async def run() -> dict[str, Any]:
            request = validateWebhook(body, creating=True)
            async with _Locked(self._lock):
                if len(self._couriers) >= self._limit:
                    raise Conflict(WEBHOOK_LIMIT_REACHED)
                id = self._freshId()
                assert request.url is not None and request.events is not None
                hook = StoredWebhook(
                    id=id,
                    url=request.url,
                    events=request.events,
                    secret=request.secret or "",
                    created=self._clock.seconds(),
                )
                await self._store.putWebhook(hook)
                courier = self._couriers[id] = self._courier(hook)
                log.info(
                    "Webhook {id} created for {where}: {events}",
                    id=id,
                    where=_where(hook.url),
                    events=",".join(hook.events),
                )
                return self._view(courier)

        return Deferred.fromCoroutine(run())

    def patch(self, id: str, body: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """
        C{PATCH P/webhooks/{id}}: change any of C{url}, C{events} and C{secret} (all or
        nothing); events already queued go to the new URL with the new secret.

        @raise NotFound: no such hook.
        @raise InvalidRequest: the body is wrong.
        """

        async def run() -> dict[str, Any]:
            self._find(id)
            request = validateWebhook(body, creating=False)
            async with _Locked(self._lock):
                courier = self._find(id)
                changes: dict[str, Any] = {}
                if request.url is not None:
                    changes["url"] = request.url
                if request.events is not None:
                    changes["events"] = request.events
                if request.secret is not None:
                    changes["secret"] = request.secret
                hook = attrs.evolve(courier.hook, **changes)
                if hook != courier.hook:
                    await self._store.putWebhook(hook)
                    courier.hook = hook
                    log.info("Webhook {id} changed", id=id)
                return self._view(courier)

        return Deferred.fromCoroutine(run())

    def delete(self, id: str) -> Deferred[None]:
        """
        C{DELETE P/webhooks/{id}}: remove it; its queued events are dropped and an attempt
        under way is cancelled.

        @raise NotFound: no such hook.
        """

        async def run() -> None:
            self._find(id)
            async with _Locked(self._lock):
                self._find(id)
                await self._store.deleteWebhook(id)
                courier = self._couriers.pop(id)
                courier.close()
                log.info("Webhook {id} deleted", id=id)
                self._fireIdle()

        return Deferred.fromCoroutine(run())

    # -- events --------------------------------------------------------------------------------

    def instanceEvent(self, eventType: str, instance: Mapping[str, Any] | None) -> None:
        """
        The registry published C{eventType} about C{instance} (what the SSE hub gets):
        C{create}, C{update} and C{delete} are delivered as such, and a status different
        from the last one seen for that instance also as C{status}.  Other kinds (C{log}),
        no instance, and the pseudo-instance are ignored.
        """
        try:
            if eventType not in _INSTANCE_EVENTS or instance is None:
                return
            id = instance.get("id")
            if not isinstance(id, str) or id == PSEUDO_ID:
                return
            status = str(instance.get("status", ""))
            previous = self._statuses.get(id, _FIRST_STATUS)
            if eventType == "delete":
                self._statuses.pop(id, None)
            else:
                self._statuses[id] = status
            self._deliver(eventType, instance=instance)
            if eventType == "update" and status != previous:
                self._deliver("status", instance=instance)
        except Exception:
            log.failure("Webhook events for an instance {kind} were lost", kind=eventType)

    def masterEvent(self, action: str, masterID: str, alias: str) -> None:
        """
        Something happened to the master itself: C{action} is C{start}, C{shutdown},
        C{alias} or C{key} (a regenerated API key; the key is never sent).
        """
        try:
            self._deliver("master", master={"id": masterID, "alias": alias, "action": action})
        except Exception:
            log.failure("Webhook master event {action} was lost", action=action)

    def _deliver(
        self,
        kind: str,
        instance: Mapping[str, Any] | None = None,
        master: Mapping[str, Any] | None = None,
    ) -> None:
        if self._stopped:
            return
        couriers = [c for c in self._couriers.values() if kind in c.hook.events]
        if not couriers:
            return
        body = encodeJSON(webhookEvent(kind, self._clock.seconds(), instance, master))
        event = _Event(kind, body)
        for courier in couriers:
            courier.enqueue(event)

    # -- helpers -------------------------------------------------------------------------------

    def _courier(self, hook: StoredWebhook) -> _Courier:
        return _Courier(
            hook, self._clock, self._poster, self._userAgent, self._fireIdle, self._queueLimit
        )

    def _find(self, id: str) -> _Courier:
        courier = self._couriers.get(id)
        if courier is None:
            raise NotFound(WEBHOOK_NOT_FOUND)
        return courier

    def _freshId(self) -> str:
        for _ in range(8):
            id = self._newId()
            if id and id not in self._couriers:
                return id
        raise Conflict(WEBHOOK_LIMIT_REACHED)

    def _view(self, courier: _Courier) -> dict[str, Any]:
        return webhookObject(courier.hook, courier.queued, courier.dropped)

    def _allIdle(self) -> bool:
        return self._stopped or all(c.idle for c in self._couriers.values())

    def _fireIdle(self) -> None:
        if not self._idleWaiters or not self._allIdle():
            return
        waiters, self._idleWaiters = self._idleWaiters, []
        for d in waiters:
            d.callback(None)


class _Locked:
    """
    C{async with _Locked(lock):} holds a L{DeferredLock}.
    """

    def __init__(self, lock: DeferredLock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


# -- wiring ------------------------------------------------------------------------------------


class _Hub(Protocol):
    def publish(
        self, eventType: str, instance: Mapping[str, Any] | None, logs: str = ""
    ) -> None: ...

    def shutdown(self) -> None: ...


class HubTee:
    """
    What the registry publishes to: the SSE hub gets every call unchanged (its output is
    not affected), the webhooks get the instance events.

    @param hub: the SSE hub (L{nodepass.master.events.EventHub}).
    @param webhooks: the webhooks.
    """

    def __init__(self, hub: _Hub, webhooks: Webhooks) -> None:
        self._hub = hub
        self._webhooks = webhooks

    def publish(self, eventType: str, instance: Mapping[str, Any] | None, logs: str = "") -> None:
        self._hub.publish(eventType, instance, logs)
        self._webhooks.instanceEvent(eventType, instance)

    def shutdown(self) -> None:
        self._hub.shutdown()


# -- HTTP --------------------------------------------------------------------------------------


class _Drain(BodyProtocol):
    """
    Reads a receiver's answer and throws it away; hangs up past C{limit} bytes.  C{done}
    fires when the body has ended (however it ended); cancelling it hangs up.
    """

    def __init__(self, limit: int) -> None:
        self._left = limit
        self.done: Deferred[None] = Deferred(lambda _: self._hangUp())

    def dataReceived(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self._hangUp()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(None)

    def _hangUp(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.stopProducing()  # type: ignore[attr-defined]


@implementer(IBodyProducer)
class _Body:
    """
    A request body written at once (treq's default producer would run on the global
    cooperator, and so on the global reactor).
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def treqPoster(reactor: Any, agent: Any = None) -> Poster:
    """
    A L{Poster} over treq: a new connection for each POST (nothing stays open between
    events), no redirects followed (a 3xx is a failure), the answer read and discarded up
    to L{ANSWER_LIMIT} bytes.

    @param reactor: for the default agent (TCP, TLS with the system's trust roots).
    @param agent: an L{twisted.web.iweb.IAgent} to use instead.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    if agent is None:
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    client = HTTPClient(agent, data_to_body_producer=_Body)

    async def post(url: str, body: bytes, headers: Headers) -> int:
        response = await client.post(
            url, data=body, headers=headers, allow_redirects=False, unbuffered=True
        )
        drain = _Drain(ANSWER_LIMIT)
        response.deliverBody(drain)
        await drain.done
        return int(response.code)

    def poster(url: str, body: bytes, headers: Headers) -> Deferred[int]:
        return Deferred.fromCoroutine(post(url, body, headers))

    return poster
