"""
Tests for L{nodepass.master.webhooks}: signed deliveries on a L{Clock} with a fake poster,
the C{P/webhooks} routes through L{StubTreq}, and the real treq poster over an in-memory
agent.  No sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import treq
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from nodepass.master.app import MasterAPI, MasterInfo
from nodepass.master.events import EventHub, formatTime
from nodepass.master.metrics import MasterMetrics
from nodepass.master.registry import MasterSettings, Registry
from nodepass.master.store import MasterValues, State, StoredInstance, StoredWebhook, SyncStore
from nodepass.master.store import Traffic as StoredTraffic
from nodepass.master.supervisor import ISupervisorObserver, Status
from nodepass.master.views import instanceObject
from nodepass.master.webhooks import (
    DELIVERIES_KEPT,
    DELIVERY_TIMEOUT,
    MAX_ATTEMPTS,
    QUEUE_LIMIT,
    RETRY_WINDOW,
    HubTee,
    Webhooks,
    retryDelay,
    signature,
    treqPoster,
)
from nodepass.throttle import FailureThrottle

SECRET = "whsec-7f3a9c0e51b2d4e6"
KEY = "5f0c2a9e4b7d41c8a3e6f1029d8b7c6e"
HOOK_URL = "https://receiver.example:8443/nodepass?token=t"
VERSION = "0.1.0"
P = "/api/v1"
BASE = "http://127.0.0.1:9090"


def instance(id: str = "a1b2c3d4", status: str = "stopped", **extra: Any) -> dict[str, Any]:
    value = instanceObject(
        id, "web", "server", status, "server://:10101/127.0.0.1:80", "", True, None
    )
    value.update(extra)
    return value


@attrs.define
class Call:
    """
    One POST the fake poster received; fire C{answer} to answer it.
    """

    url: str
    body: bytes
    headers: Headers
    answer: Deferred[int]

    def header(self, name: bytes) -> bytes:
        values = self.headers.getRawHeaders(name) or []
        assert len(values) == 1, (name, values)
        return values[0]

    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class FakePoster:
    """
    Records every POST and leaves it unanswered until the test answers it.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[Call] = []
        self.times: list[float] = []

    def __call__(self, url: str, body: bytes, headers: Headers) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.calls.append(Call(url, body, headers, d))
        self.times.append(self.clock.seconds())
        return d

    @property
    def last(self) -> Call:
        return self.calls[-1]

    def pending(self) -> list[Call]:
        return [c for c in self.calls if not c.answer.called]


class SyncFacade:
    """
    The store facade over a real L{SyncStore}, synchronously: the registry's part and the
    webhooks' part.
    """

    def __init__(self, core: SyncStore) -> None:
        self.core = core
        self.failing = False

    def load(self) -> Deferred[State]:
        return succeed(self.core.load())

    def put(self, record: StoredInstance) -> Deferred[None]:
        self.core.put(record)
        return succeed(None)

    def delete(self, id: str) -> Deferred[bool]:
        return succeed(self.core.delete(id))

    def updateTrafficMany(self, totals: Mapping[str, StoredTraffic]) -> Deferred[int]:
        return succeed(self.core.updateTrafficMany(totals))

    def setMaster(
        self,
        *,
        keyDigest: str | None = None,
        masterID: str | None = None,
        alias: str | None = None,
    ) -> Deferred[MasterValues]:
        return succeed(self.core.setMaster(keyDigest=keyDigest, masterID=masterID, alias=alias))

    def webhooks(self) -> Deferred[tuple[StoredWebhook, ...]]:
        return succeed(self.core.webhooks())

    def putWebhook(self, hook: StoredWebhook) -> Deferred[None]:
        if self.failing:
            from nodepass.master.store import StoreError

            return fail(StoreError("the state cannot be saved: disk full"))
        self.core.putWebhook(hook)
        return succeed(None)

    def deleteWebhook(self, id: str) -> Deferred[bool]:
        return succeed(self.core.deleteWebhook(id))


class StoppedSupervisor:
    """
    A supervisor whose instances never run (the registry needs one; these tests do not).
    """

    def __init__(self, observer: ISupervisorObserver) -> None:
        self.observer = observer

    def status(self, instanceId: str) -> Status:
        return Status.STOPPED

    def start(self, instanceId: str, url: str, env: Any = None) -> Deferred[None]:
        return succeed(None)

    def stop(self, instanceId: str) -> Deferred[None]:
        return succeed(None)

    def restart(self, instanceId: str, url: str, env: Any = None) -> Deferred[None]:
        return succeed(None)

    def remove(self, instanceId: str) -> Deferred[None]:
        return succeed(None)

    def resetCounters(self, instanceId: str) -> Deferred[Any]:
        return succeed(None)

    def stopAll(self) -> Deferred[None]:
        return succeed(None)

    def killAll(self) -> int:
        return 0


class RecordingHub:
    def __init__(self) -> None:
        self.published: list[tuple[str, Any, str]] = []
        self.shutdowns = 0

    def publish(self, eventType: str, instance: Mapping[str, Any] | None, logs: str = "") -> None:
        self.published.append((eventType, instance, logs))

    def shutdown(self) -> None:
        self.shutdowns += 1


@contextmanager
def secretKept(case: SynchronousTestCase, *secrets: str) -> Iterator[Sequence[LogEvent]]:
    """
    Fail C{case} if any log line emitted inside the block mentions one of C{secrets}.
    """
    with capturedLogs() as events:
        yield events
    for event in events:
        text = formatEvent(event) + repr(event)
        for secret in secrets:
            case.assertNotIn(secret, text)


class DispatcherCase(SynchronousTestCase):
    """
    L{Webhooks} over a real SQLite store, a L{Clock} and a L{FakePoster}.
    """

    queueLimit = QUEUE_LIMIT

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1765000000.5)
        self.core = SyncStore(self.mktemp())
        self.core.open()
        self.addCleanup(self.core.close)
        self.store = SyncFacade(self.core)
        self.poster = FakePoster(self.clock)
        self.webhooks = self.newWebhooks()

    def newWebhooks(self) -> Webhooks:
        ids = iter(f"{n:08x}" for n in range(1, 100))
        webhooks = Webhooks(
            self.clock,
            self.store,
            self.poster,
            VERSION,
            newId=lambda: next(ids),
            queueLimit=self.queueLimit,
        )
        self.successResultOf(webhooks.load())
        return webhooks

    def hook(self, events: list[str], secret: str | None = SECRET, url: str = HOOK_URL) -> str:
        body: dict[str, Any] = {"url": url, "events": events}
        if secret is not None:
            body["secret"] = secret
        created = self.successResultOf(self.webhooks.create(body))
        self.assertNotIn("secret", created)
        id: str = created["id"]
        return id

    def answer(self, code: int) -> None:
        pending = self.poster.pending()
        self.assertEqual(len(pending), 1)  # one delivery at a time
        pending[0].answer.callback(code)


class SignatureTests(DispatcherCase):
    def test_signedBody(self) -> None:
        """
        The POST carries the event as JSON, signed over exactly the bytes sent, with the
        content type, user agent and event kind in headers.
        """
        self.hook(["create"])
        created = instance()
        self.webhooks.instanceEvent("create", created)
        call = self.poster.last
        self.assertEqual(call.url, HOOK_URL)
        expected = hmac.new(SECRET.encode(), call.body, hashlib.sha256).hexdigest()
        self.assertEqual(call.header(b"X-NodePass-Signature"), b"sha256=" + expected.encode())
        self.assertEqual(call.header(b"Content-Type"), b"application/json")
        self.assertEqual(call.header(b"User-Agent"), b"NodePass/" + VERSION.encode())
        self.assertEqual(call.header(b"X-NodePass-Event"), b"create")
        self.assertEqual(
            call.event(),
            {"event": "create", "time": formatTime(self.clock.seconds()), "instance": created},
        )
        self.assertNotIn(SECRET.encode(), call.body)
        self.assertEqual(signature(SECRET, call.body), "sha256=" + expected)

    def test_unsigned(self) -> None:
        """
        A hook without a secret gets the same POST without a signature.
        """
        id = self.hook(["create"], secret=None)
        self.assertFalse(self.webhooks.get(id)["signed"])
        self.webhooks.instanceEvent("create", instance())
        self.assertIsNone(self.poster.last.headers.getRawHeaders(b"X-NodePass-Signature"))

    def test_eachHookItsSecret(self) -> None:
        self.hook(["create"], secret="one")
        self.hook(["create"], secret="two")
        self.webhooks.instanceEvent("create", instance())
        first, second = self.poster.calls
        self.assertEqual(first.body, second.body)
        self.assertEqual(
            first.header(b"X-NodePass-Signature"), signature("one", first.body).encode()
        )
        self.assertEqual(
            second.header(b"X-NodePass-Signature"), signature("two", second.body).encode()
        )

    def test_patchedSecretSignsTheNextAttempt(self) -> None:
        id = self.hook(["create"])
        self.webhooks.instanceEvent("create", instance())
        self.successResultOf(self.webhooks.patch(id, {"secret": "new", "url": "http://b.example/"}))
        self.answer(500)
        self.clock.advance(retryDelay(1))
        call = self.poster.last
        self.assertEqual(call.url, "http://b.example/")
        self.assertEqual(call.header(b"X-NodePass-Signature"), signature("new", call.body).encode())


class RetryTests(DispatcherCase):
    def test_backoffSchedule(self) -> None:
        """
        Failures are retried after 1, 2, 4 and 8 s; after the fifth the event is given up
        and the next one goes.
        """
        id = self.hook(["create", "delete"])
        start = self.clock.seconds()
        self.webhooks.instanceEvent("create", instance())
        self.webhooks.instanceEvent("delete", instance())
        with capturedLogs() as logs:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                self.answer(503)
                if attempt < MAX_ATTEMPTS:
                    self.assertEqual(self.poster.pending(), [])
                    self.clock.advance(retryDelay(attempt))
        offsets = [t - start for t in self.poster.times]
        self.assertEqual(offsets, [0, 1, 3, 7, 15, 15])
        self.assertEqual([c.event()["event"] for c in self.poster.calls][-2:], ["create", "delete"])
        self.assertEqual(len({c.body for c in self.poster.calls[:MAX_ATTEMPTS]}), 1)
        deliveries = self.webhooks.deliveries(id)
        self.assertEqual([d["attempt"] for d in deliveries], [5, 4, 3, 2, 1])
        self.assertEqual({d["status"] for d in deliveries}, {503})
        self.assertEqual({d["error"] for d in deliveries}, {"HTTP 503"})
        self.assertEqual([d["time"] for d in deliveries][-1], formatTime(start))  # oldest last
        gaveUp = [e for e in logs if "gave up" in e.get("log_format", "")]
        self.assertEqual(len(gaveUp), 1)
        self.assertIn("receiver.example", formatEvent(gaveUp[0]))
        self.assertNotIn("token", formatEvent(gaveUp[0]))

    def test_successOnTheThirdTry(self) -> None:
        id = self.hook(["status"])
        self.webhooks.instanceEvent("update", instance(status="running"))
        self.answer(500)
        self.clock.advance(1)
        self.answer(500)
        self.clock.advance(2)
        self.answer(204)
        self.clock.advance(100)
        self.assertEqual(len(self.poster.calls), 3)
        deliveries = self.webhooks.deliveries(id)
        self.assertEqual(
            [(d["attempt"], d["status"]) for d in deliveries], [(3, 204), (2, 500), (1, 500)]
        )
        self.assertEqual([d["error"] for d in deliveries], [None, "HTTP 500", "HTTP 500"])
        self.assertEqual(self.webhooks.get(id)["queued"], 0)

    def test_timeoutAndWindow(self) -> None:
        """
        No answer within 10 s is a failure (status null); no attempt starts later than
        60 s after the first.
        """
        id = self.hook(["create"])
        start = self.clock.seconds()
        self.webhooks.instanceEvent("create", instance())
        self.clock.pump([1] * 200)
        self.assertEqual(len(self.poster.calls), MAX_ATTEMPTS)
        self.assertTrue(all(t - start <= RETRY_WINDOW for t in self.poster.times))
        deliveries = self.webhooks.deliveries(id)
        self.assertEqual({d["status"] for d in deliveries}, {None})
        self.assertEqual({d["error"] for d in deliveries}, {"no answer within 10 s"})
        self.assertEqual({d["duration"] for d in deliveries}, {DELIVERY_TIMEOUT})
        # The timed-out requests were cancelled.
        self.assertTrue(all(c.answer.called for c in self.poster.calls))

    def test_connectionError(self) -> None:
        id = self.hook(["create"])
        self.webhooks.instanceEvent("create", instance())
        self.poster.last.answer.errback(Failure(ConnectionRefusedError("nobody home")))
        (delivery,) = self.webhooks.deliveries(id)
        self.assertIsNone(delivery["status"])
        self.assertIn("ConnectionRefusedError", delivery["error"])
        self.assertEqual(delivery["attempt"], 1)

    def test_posterRaising(self) -> None:
        """
        A poster that raises is a failed attempt like any other, not a crash.
        """

        def broken(url: str, body: bytes, headers: Headers) -> Deferred[int]:
            raise ValueError("no route")

        webhooks = Webhooks(self.clock, self.store, broken, VERSION)
        self.successResultOf(webhooks.load())
        id = self.successResultOf(webhooks.create({"url": HOOK_URL, "events": ["master"]}))["id"]
        webhooks.masterEvent("alias", "0011223344556677", "edge")
        self.assertEqual(webhooks.deliveries(id)[0]["error"], "ValueError: no route")

    def test_deliveriesBounded(self) -> None:
        id = self.hook(["update"])
        for n in range(DELIVERIES_KEPT + 20):
            self.webhooks.instanceEvent("update", instance(ping=n))
            self.answer(200)
        deliveries = self.webhooks.deliveries(id)
        self.assertEqual(len(deliveries), DELIVERIES_KEPT)
        self.assertTrue(all(d["attempt"] == 1 and d["status"] == 200 for d in deliveries))


class QueueTests(DispatcherCase):
    queueLimit = 3

    def test_orderAndOneAtATime(self) -> None:
        self.hook(["update"])
        for n in range(3):
            self.webhooks.instanceEvent("update", instance(ping=n))
        self.assertEqual(len(self.poster.calls), 1)
        self.answer(200)
        self.assertEqual(len(self.poster.calls), 2)
        self.answer(200)
        self.answer(200)
        pings = [c.event()["instance"]["ping"] for c in self.poster.calls]
        self.assertEqual(pings, [0, 1, 2])

    def test_boundDropsTheOldest(self) -> None:
        id = self.hook(["update"])
        with capturedLogs() as logs:
            for n in range(8):
                self.webhooks.instanceEvent("update", instance(ping=n))
        # 0 is being delivered; 1..7 queued behind it in room for 3: 1..4 dropped.
        view = self.webhooks.get(id)
        self.assertEqual((view["queued"], view["dropped"]), (4, 4))
        self.assertEqual(len([e for e in logs if "queue is full" in e.get("log_format", "")]), 1)
        for _ in range(4):
            self.answer(200)
        pings = [c.event()["instance"]["ping"] for c in self.poster.calls]
        self.assertEqual(pings, [0, 5, 6, 7])
        self.assertEqual(self.webhooks.get(id)["queued"], 0)


class ImmediateAnswerTests(DispatcherCase):
    def test_noRecursion(self) -> None:
        """
        A poster that answers at once drains a full queue in a loop, not by recursion.
        """
        first: Deferred[int] = Deferred()
        bodies: list[bytes] = []

        def poster(url: str, body: bytes, headers: Headers) -> Deferred[int]:
            bodies.append(body)
            return first if len(bodies) == 1 else succeed(204)

        webhooks = Webhooks(self.clock, self.store, poster, VERSION)
        id = self.successResultOf(webhooks.create({"url": HOOK_URL, "events": ["update"]}))["id"]
        for n in range(QUEUE_LIMIT + 1):
            webhooks.instanceEvent("update", instance(ping=n))
        first.callback(204)
        self.assertEqual(len(bodies), QUEUE_LIMIT + 1)
        self.assertEqual([json.loads(b)["instance"]["ping"] for b in bodies[-2:]], [999, 1000])
        self.assertEqual(webhooks.get(id)["queued"], 0)
        webhooks.instanceEvent("update", instance(ping=-1))
        self.assertEqual(len(bodies), QUEUE_LIMIT + 2)


class DefaultQueueTests(DispatcherCase):
    def test_thousandEvents(self) -> None:
        id = self.hook(["update"])
        for n in range(QUEUE_LIMIT + 6):
            self.webhooks.instanceEvent("update", instance(ping=n))
        view = self.webhooks.get(id)
        self.assertEqual(QUEUE_LIMIT, 1000)
        self.assertEqual((view["queued"], view["dropped"]), (QUEUE_LIMIT + 1, 5))


class EventKindTests(DispatcherCase):
    def deliverAll(self) -> list[tuple[str, str | None]]:
        seen: list[tuple[str, str | None]] = []
        while self.poster.pending():
            call = self.poster.pending()[0]
            event = call.event()
            seen.append((event["event"], (event.get("instance") or {}).get("status")))
            call.answer.callback(200)
        return seen

    def test_statusOnlyOnChange(self) -> None:
        self.hook(["status"])
        self.webhooks.instanceEvent("create", instance(status="stopped"))
        self.webhooks.instanceEvent("update", instance(status="running"))
        self.webhooks.instanceEvent("update", instance(status="running", ping=5))  # checkpoint
        self.webhooks.instanceEvent("update", instance(status="running", pool=3))  # checkpoint
        self.webhooks.instanceEvent("log", instance(status="running"))
        self.webhooks.instanceEvent("update", instance(status="error"))
        self.webhooks.instanceEvent("update", instance(status="running"))
        self.webhooks.instanceEvent("update", instance(status="stopped"))
        self.webhooks.instanceEvent("delete", instance(status="stopped"))
        self.assertEqual(
            self.deliverAll(),
            [
                ("status", "running"),
                ("status", "error"),
                ("status", "running"),
                ("status", "stopped"),
            ],
        )

    def test_instancesTrackedApart(self) -> None:
        self.hook(["status"])
        self.webhooks.instanceEvent("update", instance("aaaaaaaa", status="running"))
        self.webhooks.instanceEvent("update", instance("bbbbbbbb", status="stopped"))
        self.webhooks.instanceEvent("update", instance("bbbbbbbb", status="running"))
        ids = []
        while self.poster.pending():
            call = self.poster.pending()[0]
            ids.append(call.event()["instance"]["id"])
            call.answer.callback(200)
        self.assertEqual(ids, ["aaaaaaaa", "bbbbbbbb"])

    def test_subscribedKindsOnly(self) -> None:
        self.hook(["create", "delete"])
        self.webhooks.instanceEvent("create", instance())
        self.webhooks.instanceEvent("update", instance(status="running"))
        self.webhooks.instanceEvent("delete", instance())
        self.webhooks.masterEvent("alias", "0011223344556677", "edge")
        self.assertEqual(self.deliverAll(), [("create", "stopped"), ("delete", "stopped")])

    def test_updateAndStatusBoth(self) -> None:
        self.hook(["update", "status"])
        self.webhooks.instanceEvent("update", instance(status="running"))
        self.assertEqual(self.deliverAll(), [("update", "running"), ("status", "running")])

    def test_pseudoInstanceNeverSent(self) -> None:
        self.hook(["create", "update", "delete", "status"])
        pseudo = instanceObject("********", "", "", "", KEY, "0011223344556677", False, None)
        self.webhooks.instanceEvent("update", pseudo)
        self.webhooks.instanceEvent("shutdown", None)
        self.assertEqual(self.poster.calls, [])

    def test_masterEvent(self) -> None:
        self.hook(["master"])
        self.webhooks.masterEvent("key", "0011223344556677", "edge")
        call = self.poster.last
        self.assertEqual(call.header(b"X-NodePass-Event"), b"master")
        self.assertEqual(
            call.event(),
            {
                "event": "master",
                "time": formatTime(self.clock.seconds()),
                "master": {"id": "0011223344556677", "alias": "edge", "action": "key"},
            },
        )

    def test_badInstanceIgnored(self) -> None:
        """
        Whatever the registry hands over, the webhooks never raise into it.
        """
        self.hook(["create"])
        self.webhooks.instanceEvent("create", {"id": 3})
        self.webhooks.instanceEvent("create", {"id": "x", "bad": object()})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.poster.calls, [])


class LifecycleTests(DispatcherCase):
    def test_persistedAcrossRestarts(self) -> None:
        id = self.hook(["status", "master"], url="http://127.0.0.1:8000/hook")
        again = self.newWebhooks()
        self.assertEqual(again.get(id), self.webhooks.get(id))
        again.masterEvent("start", "0011223344556677", "")
        call = self.poster.last
        self.assertEqual(call.url, "http://127.0.0.1:8000/hook")
        self.assertEqual(
            call.header(b"X-NodePass-Signature"), signature(SECRET, call.body).encode()
        )

    def test_deleteCancels(self) -> None:
        id = self.hook(["update"])
        self.webhooks.instanceEvent("update", instance())
        self.webhooks.instanceEvent("update", instance())
        inFlight = self.poster.last
        self.successResultOf(self.webhooks.delete(id))
        self.assertTrue(inFlight.answer.called)  # cancelled
        self.clock.advance(100)
        self.assertEqual(len(self.poster.calls), 1)
        self.assertEqual(self.core.webhooks(), ())

    def test_whenIdleAndStop(self) -> None:
        self.hook(["update"])
        self.assertIsNone(self.successResultOf(self.webhooks.whenIdle(5)))
        self.webhooks.instanceEvent("update", instance())
        idle = self.webhooks.whenIdle(5)
        self.assertNoResult(idle)
        self.answer(200)
        self.successResultOf(idle)
        # A receiver that never answers: the wait ends at its bound, stop cancels.
        self.webhooks.instanceEvent("update", instance())
        self.webhooks.instanceEvent("update", instance())
        late = self.webhooks.whenIdle(2)
        self.clock.advance(2)
        self.successResultOf(late)
        with capturedLogs() as logs:
            self.assertEqual(self.webhooks.stop(), 2)
        self.assertIn("2 webhook events were not delivered", formatEvent(logs[-1]))
        self.assertTrue(self.poster.last.answer.called)
        self.webhooks.instanceEvent("update", instance())
        self.clock.advance(100)
        self.assertEqual(len(self.poster.calls), 2)

    def test_secretNeverInAnAnswerOrLog(self) -> None:
        with secretKept(self, SECRET):
            id = self.hook(["create", "master"])
            answers = [
                self.webhooks.hooks(),
                self.webhooks.get(id),
                self.successResultOf(self.webhooks.patch(id, {"events": ["master"]})),
                self.successResultOf(self.webhooks.patch(id, {"secret": SECRET + "2"})),
            ]
            self.webhooks.masterEvent("alias", "0011223344556677", "edge")
            self.answer(500)
            self.clock.advance(1)
            self.answer(200)
            answers.append(self.webhooks.deliveries(id))
            self.successResultOf(self.webhooks.delete(id))
        for answer in answers:
            self.assertNotIn(SECRET, json.dumps(answer))
        for call in self.poster.calls:
            self.assertNotIn(SECRET.encode(), call.body)
            for _, values in call.headers.getAllRawHeaders():
                self.assertNotIn(SECRET.encode(), b"".join(values))


class TeeTests(SynchronousTestCase):
    def test_hubGetsEverythingUnchanged(self) -> None:
        hub = RecordingHub()
        clock = Clock()
        poster = FakePoster(clock)
        core = SyncStore(self.mktemp())
        core.open()
        self.addCleanup(core.close)
        webhooks = Webhooks(clock, SyncFacade(core), poster, VERSION)
        self.successResultOf(webhooks.create({"url": HOOK_URL, "events": ["update", "delete"]}))
        tee = HubTee(hub, webhooks)
        value = instance(status="running")
        tee.publish("update", value)
        tee.publish("log", value, "a line")
        tee.publish("delete", value)
        tee.shutdown()
        self.assertEqual(
            hub.published, [("update", value, ""), ("log", value, "a line"), ("delete", value, "")]
        )
        self.assertEqual(hub.shutdowns, 1)
        self.assertEqual([c.event()["event"] for c in poster.calls], ["update"])  # one at a time


# -- the registry's master changes ---------------------------------------------------------------


class MasterChangeTests(SynchronousTestCase):
    def registry(self, changed: Any) -> Registry:
        core = SyncStore(self.mktemp())
        core.open()
        self.addCleanup(core.close)
        keys = iter([KEY, "0a1b2c3d4e5f60718293a4b5c6d7e8f9"])
        registry = Registry(
            Clock(),
            SyncFacade(core),
            StoppedSupervisor,
            RecordingHub(),
            MasterSettings(),
            newKey=lambda: next(keys),
            masterChanged=changed,
        )
        self.successResultOf(registry.load(autoStart=False))
        return registry

    def test_alias(self) -> None:
        changes: list[str] = []
        registry = self.registry(changes.append)
        self.successResultOf(registry.setMasterAlias("edge"))
        self.successResultOf(registry.setMasterAlias("edge"))  # no change, no event
        self.successResultOf(registry.setMasterAlias(""))
        self.assertEqual(changes, ["alias", "alias"])

    def test_keyRegenerated(self) -> None:
        changes: list[str] = []
        registry = self.registry(changes.append)
        self.successResultOf(registry.patch("********", {"action": "restart"}, KEY))
        self.successResultOf(registry.patch("********", {"action": "status"}, KEY))
        self.assertEqual(changes, ["key"])

    def test_failingCallbackIsLogged(self) -> None:
        def broken(action: str) -> None:
            raise RuntimeError("boom")

        registry = self.registry(broken)
        self.successResultOf(registry.setMasterAlias("edge"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(registry.masterAlias, "edge")


# -- the API -------------------------------------------------------------------------------------


@attrs.frozen
class Answer:
    code: int
    headers: Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class APITests(DispatcherCase):
    """
    C{P/webhooks} through L{StubTreq} over a loaded registry and the webhooks.
    """

    def setUp(self) -> None:
        super().setUp()
        self.registry = Registry(
            self.clock,
            self.store,
            StoppedSupervisor,
            RecordingHub(),
            MasterSettings(),
            newKey=lambda: KEY,
        )
        self.successResultOf(self.registry.load(autoStart=False))
        api = MasterAPI(
            self.registry,
            EventHub(self.clock, self.registry.snapshot),
            None,
            lambda: succeed({}),
            MasterInfo(MasterSettings(), "127.0.0.1", self.clock),
            "/api",
            webhooks=self.webhooks,
        )
        api.ready = True
        # Wrong keys here check the answers, not the throttle (ThrottleTests in
        # test_master_app): a wrong key is never held back.
        api.badKeys = FailureThrottle(self.clock, Logger(), "x", slowAfter=10**6, blockAfter=10**6)
        self.stub: Any = StubTreq(api.resource())
        self.bodies: list[bytes] = []

    def call(self, method: str, path: str, body: Any = None, key: str | None = KEY) -> Answer:
        headers = {"X-API-Key": key} if key is not None else {}
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        d = self.stub.request(method, BASE + P + path, headers=headers, data=data)

        def read(response: Any) -> Deferred[Answer]:
            content: Deferred[bytes] = treq.content(response)
            return content.addCallback(lambda raw: Answer(response.code, response.headers, raw))

        d.addCallback(read)
        self.stub.flush()
        answer: Answer = self.successResultOf(d)
        self.bodies.append(answer.body)
        return answer

    def assertError(self, answer: Answer, code: int, message: str) -> None:
        self.assertEqual((answer.code, answer.json()), (code, {"error": message}), answer.body)

    def test_crud(self) -> None:
        with secretKept(self, SECRET):
            created = self.call(
                "POST",
                "/webhooks",
                {"url": HOOK_URL, "events": ["status", "create"], "secret": SECRET},
            )
            self.assertEqual(created.code, 201, created.body)
            self.assertEqual(created.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
            hook = created.json()
            self.assertEqual(
                hook,
                {
                    "id": "00000001",
                    "url": HOOK_URL,
                    "events": ["create", "status"],
                    "created": formatTime(self.clock.seconds()),
                    "signed": True,
                    "queued": 0,
                    "dropped": 0,
                },
            )
            self.assertEqual(self.call("GET", "/webhooks").json(), [hook])
            self.assertEqual(self.call("GET", "/webhooks/00000001").json(), hook)
            patched = self.call("PATCH", "/webhooks/00000001", {"events": ["master"], "secret": ""})
            self.assertEqual(patched.code, 200)
            self.assertEqual(patched.json(), hook | {"events": ["master"], "signed": False})
            self.assertEqual(self.core.webhooks()[0].secret, "")
            unchanged = self.call("PATCH", "/webhooks/00000001", b"")
            self.assertEqual(unchanged.json(), patched.json())
            self.assertEqual(self.call("GET", "/webhooks/00000001/deliveries").json(), [])
            deleted = self.call("DELETE", "/webhooks/00000001")
            self.assertEqual((deleted.code, deleted.body), (204, b""))
            self.assertError(self.call("GET", "/webhooks/00000001"), 404, "Webhook not found")
            self.assertEqual(self.call("GET", "/webhooks").json(), [])
        for body in self.bodies:
            self.assertNotIn(SECRET.encode(), body)

    def test_deliveriesListed(self) -> None:
        id = self.call(
            "POST", "/webhooks", {"url": HOOK_URL, "events": ["master"], "secret": SECRET}
        ).json()["id"]
        self.webhooks.masterEvent("alias", self.registry.masterID, "edge")
        self.clock.advance(0.25)
        self.answer(502)
        self.clock.advance(1)
        self.answer(200)
        listed = self.call("GET", f"/webhooks/{id}/deliveries").json()
        self.assertEqual(
            listed,
            [
                {
                    "event": "master",
                    "time": formatTime(self.clock.seconds()),
                    "attempt": 2,
                    "status": 200,
                    "error": None,
                    "duration": 0.0,
                },
                {
                    "event": "master",
                    "time": formatTime(self.clock.seconds() - 1.25),
                    "attempt": 1,
                    "status": 502,
                    "error": "HTTP 502",
                    "duration": 0.25,
                },
            ],
        )

    def test_badBodies(self) -> None:
        cases: list[tuple[Any, str]] = [
            (b"[1]", "Invalid request body"),
            (b"{nope", "Invalid request body"),
            ({}, "Webhook URL required"),
            ({"events": ["create"]}, "Webhook URL required"),
            (
                {"url": 5, "events": ["create"]},
                "Invalid webhook URL: expected http:// or https:// and a host",
            ),
            (
                {"url": "ftp://h/", "events": ["create"]},
                "Invalid webhook URL: expected http:// or https:// and a host",
            ),
            (
                {"url": "http:///path", "events": ["create"]},
                "Invalid webhook URL: expected http:// or https:// and a host",
            ),
            (
                {"url": "http://h:99999/", "events": ["create"]},
                "Invalid webhook URL: expected http:// or https:// and a host",
            ),
            (
                {"url": "http://h /", "events": ["create"]},
                "Invalid webhook URL: expected http:// or https:// and a host",
            ),
            (
                {"url": "http://h/" + "x" * 2048, "events": ["create"]},
                "Webhook URL exceeds maximum length 2048",
            ),
            (
                {"url": HOOK_URL},
                "Webhook events must be a non-empty list of: create, update, delete, status, master",
            ),
            (
                {"url": HOOK_URL, "events": []},
                "Webhook events must be a non-empty list of: create, update, delete, status, master",
            ),
            (
                {"url": HOOK_URL, "events": "create"},
                "Webhook events must be a non-empty list of: create, update, delete, status, master",
            ),
            (
                {"url": HOOK_URL, "events": [1]},
                "Webhook events must be a non-empty list of: create, update, delete, status, master",
            ),
            ({"url": HOOK_URL, "events": ["create", "log"]}, "Unknown webhook event: log"),
            (
                {"url": HOOK_URL, "events": ["create"], "secret": 7},
                "Webhook secret must be a string",
            ),
            (
                {"url": HOOK_URL, "events": ["create"], "secret": "s" * 1025},
                "Webhook secret exceeds maximum length 1024",
            ),
        ]
        for body, message in cases:
            self.assertError(self.call("POST", "/webhooks", body), 400, message)
        self.assertEqual(self.core.webhooks(), ())
        id = self.call("POST", "/webhooks", {"url": HOOK_URL, "events": ["create"]}).json()["id"]
        before = self.call("GET", f"/webhooks/{id}").json()
        self.assertError(self.call("PATCH", f"/webhooks/{id}", {"events": []}), 400, cases[11][1])
        self.assertError(
            self.call("PATCH", f"/webhooks/{id}", {"url": HOOK_URL + "2", "events": ["x"]}),
            400,
            "Unknown webhook event: x",
        )
        self.assertEqual(self.call("GET", f"/webhooks/{id}").json(), before)  # all or nothing

    def test_routesAndMethods(self) -> None:
        id = self.call("POST", "/webhooks", {"url": HOOK_URL, "events": ["create"]}).json()["id"]
        for path in ("/webhooks", f"/webhooks/{id}", f"/webhooks/{id}/deliveries"):
            self.assertError(
                self.call("GET", path, key=None), 401, "Unauthorized: API key required"
            )
            self.assertError(
                self.call("GET", path, key="wrong"), 401, "Unauthorized: Invalid API key"
            )
            self.assertEqual(self.call("OPTIONS", path, key=None).code, 200)
        self.assertError(self.call("PUT", "/webhooks"), 405, "Method not allowed")
        self.assertError(self.call("PUT", f"/webhooks/{id}"), 405, "Method not allowed")
        self.assertError(self.call("POST", f"/webhooks/{id}/deliveries"), 405, "Method not allowed")
        self.assertError(self.call("PUT", "/webhooks/nope"), 404, "Webhook not found")  # 404 first
        self.assertError(self.call("GET", "/webhooks/"), 404, "Webhook not found")
        self.assertError(self.call("GET", "/webhooks/nope/deliveries"), 404, "Webhook not found")
        self.assertError(self.call("DELETE", "/webhooks/nope"), 404, "Webhook not found")
        for path in (
            f"/webhooks/{id}/other",
            f"/webhooks/{id}/deliveries/x",
            "/webhooks//deliveries",
        ):
            answer = self.call("GET", path)
            self.assertEqual((answer.code, answer.body), (404, b"404 page not found\n"), path)

    def test_limit(self) -> None:
        for _ in range(32):
            self.assertEqual(
                self.call("POST", "/webhooks", {"url": HOOK_URL, "events": ["create"]}).code, 201
            )
        self.assertError(
            self.call("POST", "/webhooks", {"url": HOOK_URL, "events": ["create"]}),
            409,
            "Webhook limit reached (32)",
        )

    def test_unsavable(self) -> None:
        self.store.failing = True
        answer = self.call(
            "POST", "/webhooks", {"url": HOOK_URL, "events": ["create"], "secret": SECRET}
        )
        self.assertEqual(answer.code, 503)
        self.assertEqual(self.call("GET", "/webhooks").json(), [])

    def test_metricsRoutes(self) -> None:
        """
        Requests are counted under the route templates, never the ids.
        """
        metrics = MasterMetrics(list, lambda id: 0, lambda: 0, VERSION)
        api = MasterAPI(
            self.registry,
            EventHub(self.clock, self.registry.snapshot),
            None,
            lambda: succeed({}),
            MasterInfo(MasterSettings(), "127.0.0.1", self.clock),
            "/api",
            metrics=metrics,
            webhooks=self.webhooks,
        )
        api.ready = True
        self.stub = StubTreq(api.resource())
        id = self.call("POST", "/webhooks", {"url": HOOK_URL, "events": ["create"]}).json()["id"]
        self.call("GET", f"/webhooks/{id}")
        self.call("GET", f"/webhooks/{id}/deliveries")
        self.call("GET", f"/webhooks/{id}/nope")
        text = metrics.render().decode()
        for route, method, code in [
            ("/webhooks", "POST", 201),
            ("/webhooks/{id}", "GET", 200),
            ("/webhooks/{id}/deliveries", "GET", 200),
            ("other", "GET", 404),
        ]:
            line = f'nodepass_api_requests_total{{code="{code}",method="{method}",route="{route}"}} 1.0'
            self.assertIn(line, text)
        self.assertNotIn(id, text)

    def test_withoutWebhooks(self) -> None:
        """
        A master API built without webhooks has no such routes.
        """
        api = MasterAPI(
            self.registry,
            EventHub(self.clock, self.registry.snapshot),
            None,
            lambda: succeed({}),
            MasterInfo(MasterSettings(), "127.0.0.1", self.clock),
            "/api",
        )
        api.ready = True
        self.stub = StubTreq(api.resource())
        self.assertEqual(self.call("GET", "/webhooks").code, 404)


# -- the real poster -----------------------------------------------------------------------------


class Receiver(Resource):
    isLeaf = True

    def __init__(self, codes: list[int]) -> None:
        super().__init__()
        self.codes = codes
        self.received: list[tuple[bytes, bytes, dict[bytes, list[bytes]]]] = []

    def render_POST(self, request: IRequest) -> bytes:
        assert request.content is not None
        self.received.append(
            (
                bytes(request.uri),
                request.content.read(),
                {k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()},
            )
        )
        request.setResponseCode(self.codes.pop(0))
        return b"x" * 100


class TreqPosterTests(SynchronousTestCase):
    def test_postsTheSignedBytes(self) -> None:
        clock = Clock()
        receiver = Receiver([500, 204])
        agent = RequestTraversalAgent(receiver)
        core = SyncStore(self.mktemp())
        core.open()
        self.addCleanup(core.close)
        webhooks = Webhooks(clock, SyncFacade(core), treqPoster(clock, agent), VERSION)
        created = webhooks.create(
            {"url": "http://receiver.example/hook?x=1", "events": ["master"], "secret": SECRET}
        )
        id = self.successResultOf(created)["id"]
        webhooks.masterEvent("start", "0011223344556677", "")
        agent.flush()
        clock.advance(retryDelay(1))
        agent.flush()
        self.assertEqual([d["status"] for d in webhooks.deliveries(id)], [204, 500])
        (uri1, body1, headers1), (_, body2, _) = receiver.received
        self.assertEqual(uri1, b"/hook?x=1")
        self.assertEqual(body1, body2)
        self.assertEqual(headers1[b"x-nodepass-signature"], [signature(SECRET, body1).encode()])
        self.assertEqual(headers1[b"content-type"], [b"application/json"])
        self.assertEqual(headers1[b"x-nodepass-event"], [b"master"])
        self.assertEqual(headers1[b"user-agent"], [b"NodePass/" + VERSION.encode()])
        self.assertEqual(headers1[b"content-length"], [str(len(body1)).encode()])
        self.assertEqual(json.loads(body1)["master"]["action"], "start")
