"""
The instance registry of master mode (master spec §6-§9, §11, §12): the real SQLite store
(driven synchronously), a recording fake supervisor whose callbacks the tests fire, a
recording hub and a Clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nodepass.master.app import statusOf
from nodepass.master.messages import RegistryError
from nodepass.master.registry import PSEUDO_ID, MasterSettings, Registry
from nodepass.master.requests import decodeBody
from nodepass.master.store import (
    MasterValues,
    State,
    StoredInstance,
    SyncStore,
    Traffic,
    keyDigest,
)
from nodepass.master.supervisor import (
    UNAVAILABLE_ISOLATED,
    ConnectionsUnavailable,
    Event,
    ISupervisorObserver,
    Status,
)
from nodepass.stats import Checkpoint

FIELDS = [
    "id",
    "alias",
    "type",
    "status",
    "url",
    "config",
    "restart",
    "meta",
    "mode",
    "ping",
    "pool",
    "tcps",
    "udps",
    "tcprx",
    "tcptx",
    "udprx",
    "udptx",
]

SERVER = "server://0.0.0.0:10101/127.0.0.1:8080"
SERVER_URL = "server://0.0.0.0:10101/127.0.0.1:8080?log=info&tls=1"
SERVER_CONFIG = (
    "server://0.0.0.0:10101/127.0.0.1:8080?block=0&dial=auto&dns=5m0s&log=info&max=1024"
    "&mode=0&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&tls=1&type=0"
)
CLIENT = "client://srv:10101/127.0.0.1:8080"
CLIENT_CONFIG = (
    "client://srv:10101/127.0.0.1:8080?block=0&dial=auto&dns=5m0s&log=info&min=64&mode=0"
    "&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&sni=none"
)


class SyncFacade:
    """
    The store facade's API over a real L{SyncStore}, run synchronously.  C{hold} makes the
    next C{put} wait for the test.
    """

    def __init__(self, core: SyncStore) -> None:
        self.core = core
        self.hold = False
        self.held: list[Deferred[None]] = []
        self.fail = False

    def load(self) -> Deferred[State]:
        return succeed(self.core.load())

    def put(self, record: StoredInstance) -> Deferred[None]:
        if self.fail:
            raise OSError("disk full")
        if self.hold:
            d: Deferred[None] = Deferred()
            d.addCallback(lambda _: self.core.put(record))
            self.held.append(d)
            return d
        self.core.put(record)
        return succeed(None)

    def delete(self, id: str) -> Deferred[bool]:
        return succeed(self.core.delete(id))

    def updateTrafficMany(self, totals: Mapping[str, Traffic]) -> Deferred[int]:
        return succeed(self.core.updateTrafficMany(totals))

    def setMaster(
        self,
        *,
        keyDigest: str | None = None,
        masterID: str | None = None,
        alias: str | None = None,
    ) -> Deferred[MasterValues]:
        return succeed(self.core.setMaster(keyDigest=keyDigest, masterID=masterID, alias=alias))

    def ids(self) -> list[str]:
        return [i.id for i in self.core.load().instances]

    def record(self, id: str) -> StoredInstance:
        return next(i for i in self.core.load().instances if i.id == id)


class FakeSupervisor:
    """
    Records calls; start/stop change the status and report like the real one.
    """

    def __init__(self, observer: ISupervisorObserver) -> None:
        self.observer = observer
        self.calls: list[tuple[str, ...]] = []
        self.statuses: dict[str, Status] = {}
        self.spawnFails = False
        self.stopAll_: Deferred[None] | None = None
        self.removing: Deferred[None] | None = None
        #: What resetCounters answers (an instance host's raw counters when zeroed).
        self.zeroedRaw: Mapping[str, int] | None = None
        #: Open connections by instance; C{isolated} makes the listing unavailable.
        self.open: dict[str, list[dict[str, Any]]] = {}
        self.isolated = False

    def status(self, instanceId: str) -> Status:
        return self.statuses.get(instanceId, Status.STOPPED)

    def set(self, instanceId: str, status: Status, cause: Event) -> None:
        if self.status(instanceId) is not status:
            self.statuses[instanceId] = status
            self.observer.statusChanged(instanceId, status, cause)

    def _start(self, instanceId: str) -> None:
        if self.status(instanceId) is not Status.STOPPED:
            return
        self.observer.spawning(instanceId)
        if self.spawnFails:
            self.set(instanceId, Status.ERROR, Event.SPAWN_FAILED)
        else:
            self.set(instanceId, Status.RUNNING, Event.SPAWNED)

    def start(
        self, instanceId: str, url: str, env: Mapping[str, str] | None = None
    ) -> Deferred[None]:
        self.calls.append(("start", instanceId, url))
        self._start(instanceId)
        return succeed(None)

    def stop(self, instanceId: str) -> Deferred[None]:
        self.calls.append(("stop", instanceId))
        self.set(instanceId, Status.STOPPED, Event.STOP)
        return succeed(None)

    def restart(
        self, instanceId: str, url: str, env: Mapping[str, str] | None = None
    ) -> Deferred[None]:
        self.calls.append(("restart", instanceId, url))
        self.set(instanceId, Status.STOPPED, Event.STOP)
        self._start(instanceId)
        return succeed(None)

    def remove(self, instanceId: str) -> Deferred[None]:
        self.calls.append(("remove", instanceId))
        self.set(instanceId, Status.STOPPED, Event.STOP)
        self.statuses.pop(instanceId, None)
        if self.removing is not None:
            return self.removing
        return succeed(None)

    def resetCounters(self, instanceId: str) -> Deferred[Mapping[str, int] | None]:
        self.calls.append(("resetCounters", instanceId))
        return succeed(self.zeroedRaw)

    def connections(self, instanceId: str) -> Deferred[list[dict[str, Any]]]:
        if self.isolated:
            return fail(ConnectionsUnavailable(UNAVAILABLE_ISOLATED))
        return succeed(list(self.open.get(instanceId, [])))

    def closeConnection(self, instanceId: str, connection: str) -> Deferred[bool]:
        if self.isolated:
            return fail(ConnectionsUnavailable(UNAVAILABLE_ISOLATED))
        entries = self.open.get(instanceId, [])
        kept = [e for e in entries if e["id"] != connection]
        self.open[instanceId] = kept
        return succeed(len(kept) != len(entries))

    def stopAll(self) -> Deferred[None]:
        self.calls.append(("stopAll",))
        if self.stopAll_ is not None:
            return self.stopAll_
        for id in list(self.statuses):
            self.set(id, Status.STOPPED, Event.STOP)
        return succeed(None)

    def killAll(self) -> int:
        self.calls.append(("killAll",))
        return len(self.statuses)


class RecordingHub:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any] | None, str, list[str]]] = []
        self.shutdowns = 0
        self.store: SyncFacade | None = None

    def publish(self, eventType: str, instance: Mapping[str, Any] | None, logs: str = "") -> None:
        stored = self.store.ids() if self.store is not None else []
        self.events.append(
            (eventType, dict(instance) if instance is not None else None, logs, stored)
        )

    def shutdown(self) -> None:
        self.shutdowns += 1

    def types(self) -> list[str]:
        return [e[0] for e in self.events]


def ids(*values: str) -> Iterator[str]:
    yield from values


class RegistryTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.core = SyncStore(self.mktemp())
        self.core.open()
        self.addCleanup(self.core.close)
        self.store = SyncFacade(self.core)
        self.hub = RecordingHub()
        self.hub.store = self.store
        self.nextIds: Iterator[str] = iter(f"{n:08x}" for n in range(1, 1000))
        self.keys = iter(["k" * 32, "n" * 32, "m" * 32])

    def makeRegistry(self, settings: MasterSettings | None = None) -> Registry:
        self.output: list[str] = []
        registry = Registry(
            self.clock,
            self.store,
            FakeSupervisor,
            self.hub,
            settings or MasterSettings(log="info", tls="1"),
            newId=lambda: next(self.nextIds),
            newMasterId=lambda: "0123456789abcdef",
            newKey=lambda: next(self.keys),
            output=self.output.append,
        )
        self.supervisor: FakeSupervisor = registry.supervisor  # type: ignore[assignment]
        return registry

    def loaded(self, settings: MasterSettings | None = None) -> Registry:
        registry = self.makeRegistry(settings)
        self.successResultOf(registry.load())
        return registry

    def error(self, d: Deferred[Any], status: int, message: str) -> RegistryError:
        failure = self.failureResultOf(d, RegistryError)
        error = failure.value
        assert isinstance(error, RegistryError)
        self.assertEqual((statusOf(error), error.message), (status, message))
        return error

    def createOne(self, registry: Registry, url: str = SERVER, alias: str = "a") -> str:
        created = self.successResultOf(registry.create(url, alias))
        return str(created["id"])


class BootTests(RegistryTestCase):
    def test_interface(self) -> None:
        registry = self.makeRegistry()
        self.assertTrue(verifyObject(ISupervisorObserver, registry))

    def test_firstBootCreatesKeyAndMasterId(self) -> None:
        registry = self.makeRegistry()
        result = self.successResultOf(registry.load())
        self.assertEqual(result.createdKey, "k" * 32)
        self.assertEqual(result.instances, 0)
        self.assertTrue(registry.keyChecker.check(b"k" * 32))
        master = self.core.load().master
        self.assertEqual(master.keyDigest, keyDigest("k" * 32))
        self.assertEqual(master.masterID, "0123456789abcdef")
        self.assertEqual(registry.masterID, "0123456789abcdef")  # not Go's bug a16

    def test_laterBootLoadsKey(self) -> None:
        self.loaded()
        registry = self.loaded()
        self.assertEqual(self.successResultOf(registry.load()).createdKey, None)
        self.assertTrue(registry.keyChecker.check(b"k" * 32))

    def test_restoreStartsRestartInstances(self) -> None:
        self.core.setMaster(keyDigest=keyDigest("k" * 32), masterID="f" * 16)
        self.core.put(
            StoredInstance(
                id="00000aaa",
                type="server",
                url=SERVER_URL,
                config="",
                restart=True,
                traffic=Traffic(tcprx=5),
            )
        )
        self.core.put(
            StoredInstance(id="00000bbb", type="client", url=CLIENT, config="x", restart=False)
        )
        self.core.put(
            StoredInstance(id="00000ccc", type="client", url=CLIENT, config="x", restart=True)
        )
        registry = self.makeRegistry()
        d = registry.load()
        self.assertNoResult(d)  # the 100 ms pause between auto-starts
        self.clock.advance(0.1)
        result = self.successResultOf(d)
        self.assertEqual(result.instances, 3)
        self.assertEqual(
            self.supervisor.calls,
            [("start", "00000aaa", SERVER_URL), ("start", "00000ccc", CLIENT)],
        )
        self.assertEqual(self.store.record("00000aaa").config, SERVER_CONFIG)
        got = self.successResultOf(registry.get("00000aaa"))
        self.assertEqual((got["tcprx"], got["status"]), (5, "running"))
        self.assertEqual(self.successResultOf(registry.get("00000bbb"))["status"], "stopped")


class ReadTests(RegistryTestCase):
    def test_snapshotShape(self) -> None:
        registry = self.loaded()
        id = self.createOne(registry)
        snapshot = registry.snapshot()
        self.assertEqual([list(o) for o in snapshot], [FIELDS, FIELDS])
        self.assertEqual(
            snapshot[0],
            {
                "id": PSEUDO_ID,
                "alias": "",
                "type": "",
                "status": "",
                "url": "",
                "config": "0123456789abcdef",
                "restart": False,
                "meta": {"peer": {"sid": "", "type": "", "alias": ""}, "tags": {}},
                "mode": 0,
                "ping": 0,
                "pool": 0,
                "tcps": 0,
                "udps": 0,
                "tcprx": 0,
                "tcptx": 0,
                "udprx": 0,
                "udptx": 0,
            },
        )
        self.assertEqual(snapshot[1]["id"], id)
        self.assertEqual(self.successResultOf(registry.list()), snapshot)

    def test_get(self) -> None:
        registry = self.loaded()
        self.error(registry.get(""), 400, "Instance ID is required")
        self.error(registry.get("nope"), 404, "Instance not found")
        pseudo = self.successResultOf(registry.get(PSEUDO_ID))
        self.assertEqual(pseudo["url"], "")  # no key given: none shown (§5)
        key = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
        shown = self.successResultOf(registry.get(PSEUDO_ID, key))
        self.assertEqual(shown, pseudo | {"url": key})  # the caller's own key, as Go
        self.assertEqual(self.successResultOf(registry.list(key))[0], shown)
        self.assertEqual(self.successResultOf(registry.patch(PSEUDO_ID, {}, key)), shown)
        self.assertEqual(registry.snapshot()[0]["url"], "")  # event streams never see it

    def test_masterAlias(self) -> None:
        registry = self.loaded()
        self.successResultOf(registry.setMasterAlias("m1"))
        self.assertEqual(registry.snapshot()[0]["alias"], "m1")
        self.assertEqual(self.core.load().master.alias, "m1")
        self.error(
            registry.setMasterAlias("x" * 257), 400, "Master alias exceeds maximum length 256"
        )


class CreateTests(RegistryTestCase):
    def test_create(self) -> None:
        registry = self.loaded()
        created = self.successResultOf(registry.create(SERVER, "srv"))
        self.assertEqual(list(created), FIELDS)
        self.assertEqual(created["url"], SERVER_URL)
        self.assertEqual(created["config"], SERVER_CONFIG)
        self.assertEqual(
            (created["type"], created["status"], created["restart"], created["alias"]),
            ("server", "stopped", True, "srv"),
        )
        # persisted before the create event; create before the spawn's update
        eventType, instance, logs, storedThen = self.hub.events[0]
        self.assertEqual((eventType, logs), ("create", ""))
        self.assertEqual(instance, created)
        self.assertIn(created["id"], storedThen)
        self.assertEqual(self.hub.types(), ["create", "update"])
        self.assertEqual(self.hub.events[1][1]["status"], "running")  # type: ignore[index]
        self.assertEqual(self.supervisor.calls, [("start", created["id"], SERVER_URL)])

    def test_clientConfig(self) -> None:
        registry = self.loaded()
        created = self.successResultOf(registry.create(CLIENT))
        self.assertEqual(created["url"], "client://srv:10101/127.0.0.1:8080?log=info")
        self.assertEqual(created["config"], CLIENT_CONFIG)
        self.assertEqual(created["alias"], "")

    def test_validation(self) -> None:
        registry = self.loaded()
        cases = [
            (None, "Invalid request body"),
            ("", "Invalid request body"),
            ("server://h:99999/t:1", "Invalid URL format"),
            ("server://h:1/t:1?tls=7", "Invalid URL format"),
            ("http://h:1/t:1", "Invalid URL scheme"),
            ("master://h:1", "Invalid URL scheme"),
            # Go parses these as bare paths, so its scheme check is what fails.
            ("not a url", "Invalid URL scheme"),
            ("127.0.0.1:8080", "Invalid URL format"),
            ("://h:1/t:1", "Invalid URL format"),
        ]
        for url, message in cases:
            self.error(registry.create(url), 400, message)
        self.error(
            registry.create(SERVER, "x" * 257), 400, "Instance alias exceeds maximum length 256"
        )
        self.assertEqual((self.store.ids(), self.hub.events, self.supervisor.calls), ([], [], []))

    def test_detailNeverHasKey(self) -> None:
        registry = self.loaded()
        error = self.error(
            registry.create("server://sekrit@h:99999/t:1"), 400, "Invalid URL format"
        )
        self.assertTrue(error.detail)
        self.assertNotIn("sekrit", error.detail)

    def test_fromBody(self) -> None:
        registry = self.loaded()
        created = self.successResultOf(registry.createFromBody({"URL": SERVER, "alias": "z"}))
        self.assertEqual(created["alias"], "z")
        self.error(registry.createFromBody({"url": 5}), 400, "Invalid request body")
        self.error(registry.createFromBody({}), 400, "Invalid request body")

    def test_idCollisionRetried(self) -> None:
        registry = self.loaded()
        self.nextIds = iter(["0000000a", "0000000a", "0000000b"])
        self.assertEqual(self.createOne(registry), "0000000a")
        self.assertEqual(self.createOne(registry), "0000000b")
        self.nextIds = iter(["0000000a"] * 10)
        self.error(registry.create(SERVER), 409, "Instance ID already exists")


class PatchTests(RegistryTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.registry = self.loaded()
        self.iid = self.createOne(self.registry)
        self.hub.events.clear()
        self.supervisor.calls.clear()

    def patchInstance(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.successResultOf(self.registry.patch(self.iid, body))

    def test_emptyBodyNoop(self) -> None:
        self.assertEqual(self.patchInstance({})["alias"], "a")
        self.assertEqual((self.hub.events, self.supervisor.calls), ([], []))

    def test_aliasRestartMetaOneUpdate(self) -> None:
        result = self.patchInstance(
            {
                "alias": "b",
                "restart": False,
                "meta": {"peer": {"sid": "s", "type": "7", "alias": None}, "tags": {"k": "v"}},
            }
        )
        self.assertEqual((result["alias"], result["restart"]), ("b", False))
        self.assertEqual(
            result["meta"], {"peer": {"sid": "s", "type": "7", "alias": ""}, "tags": {"k": "v"}}
        )
        self.assertEqual(self.hub.types(), ["update"])
        record = self.store.record(self.iid)
        self.assertEqual((record.alias, record.restart, record.meta), ("b", False, result["meta"]))

    def test_metaRules(self) -> None:
        self.patchInstance({"meta": {"peer": {"sid": "s"}, "tags": {"a": "1"}}})
        kept = self.patchInstance({"meta": {"peer": {}}})  # {} keeps the peer (§6.3 DEVIATION)
        self.assertEqual(kept["meta"]["peer"]["sid"], "s")
        self.assertEqual(kept["meta"]["tags"], {"a": "1"})
        cleared = self.patchInstance({"meta": {"tags": {}}})
        self.assertEqual(cleared["meta"]["tags"], {})
        self.assertEqual(self.hub.types(), ["update"] * 3)  # a valid meta part always announces

    def test_unchangedAliasNoEvent(self) -> None:
        self.patchInstance({"alias": "a", "restart": True})
        self.assertEqual(self.hub.events, [])

    def test_validationIsAtomic(self) -> None:
        before = self.store.record(self.iid)
        long = "x" * 257
        cases: list[tuple[dict[str, Any], str]] = [
            ({"alias": "new", "action": "jump"}, "Invalid action: jump"),
            ({"alias": long}, "Instance alias exceeds maximum length 256"),
            (
                {"alias": "new", "meta": {"peer": {"sid": long}}},
                "Meta peer.sid exceeds maximum length 256",
            ),
            ({"meta": {"peer": {"type": long}}}, "Meta peer.type exceeds maximum length 256"),
            ({"meta": {"peer": {"alias": long}}}, "Meta peer.alias exceeds maximum length 256"),
            (
                {"restart": False, "meta": {"tags": {long: "v"}}},
                "Meta tag key exceeds maximum length 256",
            ),
            ({"meta": {"tags": {"k": long}}}, "Meta tag value exceeds maximum length 256"),
            ({"meta": {"tags": {str(n): "v" for n in range(65)}}}, "Meta size exceeds limit"),
            ({"restart": "yes"}, "Invalid request body"),
            ({"action": "reset", "meta": {"tags": {"k": 1}}}, "Invalid request body"),
            (
                decodeBody(b'{"alias":"n","meta":{"tags":{"k":"1","k":"2"}}}'),
                "Duplicate meta tag key: k",
            ),
        ]
        for body, message in cases:
            self.error(self.registry.patch(self.iid, body), 400, message)
        self.assertEqual(self.store.record(self.iid), before)
        self.assertEqual(self.successResultOf(self.registry.get(self.iid))["alias"], "a")
        self.assertEqual((self.hub.events, self.supervisor.calls), ([], []))

    def test_notFound(self) -> None:
        self.error(self.registry.patch("", {}), 400, "Instance ID is required")
        self.error(self.registry.patch("ffffffff", {"action": "jump"}), 404, "Instance not found")

    def test_stopStartRestart(self) -> None:
        result = self.patchInstance({"action": "stop"})
        self.assertEqual(result["status"], "running")  # the status from before the action
        self.assertEqual(self.supervisor.calls, [("stop", self.iid)])
        self.patchInstance({"action": "stop"})  # already stopped: nothing
        self.assertEqual(len(self.supervisor.calls), 1)
        self.patchInstance({"action": "start"})
        self.assertEqual(self.supervisor.calls[-1], ("start", self.iid, SERVER_URL))
        self.patchInstance({"action": "restart"})
        self.assertEqual(self.supervisor.calls[-1], ("restart", self.iid, SERVER_URL))
        self.assertEqual(self.hub.types(), ["update"] * 4)  # stop, start, stop+start of restart

    def test_startOnErrorDoesNothing(self) -> None:
        self.supervisor.set(self.iid, Status.ERROR, Event.STALE)
        self.patchInstance({"action": "start"})
        self.assertEqual(self.supervisor.calls, [])

    def test_statusActionNoop(self) -> None:
        self.assertEqual(self.patchInstance({"action": "status"})["id"], self.iid)
        self.assertEqual((self.hub.events, self.supervisor.calls), ([], []))

    def test_reset(self) -> None:
        self.registry.checkpointReceived(self.iid, Checkpoint(1, 2, 3, 4, 5, 100, 200, 300, 400))
        self.hub.events.clear()
        result = self.patchInstance({"action": "reset"})
        self.assertEqual([result[k] for k in ("tcprx", "tcptx", "udprx", "udptx")], [0] * 4)
        self.assertEqual(self.hub.types(), ["update"])
        self.assertEqual(self.store.record(self.iid).traffic, Traffic())
        # counting resumes from the raw value at the reset (not Go's bug a10)
        self.registry.checkpointReceived(self.iid, Checkpoint(1, 2, 3, 4, 5, 150, 200, 300, 400))
        self.assertEqual(self.successResultOf(self.registry.get(self.iid))["tcprx"], 50)
        self.assertEqual(self.supervisor.calls[-1], ("resetCounters", self.iid))

    def test_refusalsAcrossRestarts(self) -> None:
        """
        Refusal counts come from the CHECK_POINT suffix and add up across the instance's
        processes (a new process counts from zero again).
        """
        self.assertEqual(self.registry.refusals(self.iid), {"slot": 0, "deny": 0, "block": 0})
        self.registry.checkpointReceived(
            self.iid, Checkpoint(1, 2, 3, 4, 5, 0, 0, 0, 0, refusedSlot=1, refusedDeny=7)
        )
        self.registry.spawning(self.iid)
        self.registry.checkpointReceived(
            self.iid, Checkpoint(1, 2, 3, 4, 5, 0, 0, 0, 0, refusedDeny=2, refusedBlock=4)
        )
        self.assertEqual(self.registry.refusals(self.iid), {"slot": 1, "deny": 9, "block": 4})
        self.assertEqual(self.registry.refusals("ffffffff"), {"slot": 0, "deny": 0, "block": 0})

    def test_resetZeroesHostedCounters(self) -> None:
        """
        A hosted instance zeroes its own counters on C{reset}; the bytes between the last
        checkpoint and that moment still count, and counting goes on from zero.
        """
        self.registry.checkpointReceived(self.iid, Checkpoint(1, 2, 3, 4, 5, 100, 200, 300, 400))
        self.supervisor.zeroedRaw = {"tcprx": 130, "tcptx": 200, "udprx": 300, "udptx": 410}
        self.patchInstance({"action": "reset"})
        self.registry.checkpointReceived(self.iid, Checkpoint(1, 2, 3, 4, 5, 5, 0, 0, 1))
        got = self.successResultOf(self.registry.get(self.iid))
        self.assertEqual([got[k] for k in ("tcprx", "tcptx", "udprx", "udptx")], [35, 0, 0, 11])

    def test_serialisedPerInstance(self) -> None:
        self.store.hold = True
        first = self.registry.patch(self.iid, {"alias": "one"})
        second = self.registry.patch(self.iid, {"alias": "two"})
        self.assertNoResult(first)
        self.assertEqual(len(self.store.held), 1)  # the second waits for the lock
        self.store.held.pop(0).callback(None)
        self.assertEqual(self.successResultOf(first)["alias"], "one")
        self.assertEqual(len(self.store.held), 1)
        self.store.held.pop(0).callback(None)
        self.assertEqual(self.successResultOf(second)["alias"], "two")

    def test_storeFailureChangesNothing(self) -> None:
        self.store.fail = True
        self.failureResultOf(self.registry.patch(self.iid, {"alias": "b"}), OSError)
        self.assertEqual(self.successResultOf(self.registry.get(self.iid))["alias"], "a")
        self.assertEqual(self.hub.events, [])


class PseudoTests(RegistryTestCase):
    def test_regenerateKey(self) -> None:
        registry = self.loaded()
        result = self.successResultOf(registry.patch(PSEUDO_ID, {"action": "restart"}))
        self.assertEqual(result["url"], "n" * 32)
        self.assertEqual((result["type"], result["status"]), ("", ""))
        self.assertFalse(registry.keyChecker.check(b"k" * 32))
        self.assertTrue(registry.keyChecker.check(b"n" * 32))
        self.assertEqual(self.core.load().master.keyDigest, keyDigest("n" * 32))
        self.assertEqual(self.hub.types(), ["update"])
        self.assertEqual(self.hub.events[0][1]["url"], "")  # type: ignore[index]
        self.assertEqual(self.hub.shutdowns, 1)
        self.assertEqual(self.successResultOf(registry.get(PSEUDO_ID))["url"], "")

    def test_otherPatchesIgnored(self) -> None:
        registry = self.loaded()
        for body in ({"alias": "x"}, {"action": "stop"}, {"action": "jump"}, {}):
            result = self.successResultOf(registry.patch(PSEUDO_ID, body))
            self.assertEqual((result["alias"], result["url"]), ("", ""))
        self.assertEqual((self.hub.events, self.hub.shutdowns), ([], 0))
        self.assertTrue(registry.keyChecker.check(b"k" * 32))

    def test_putDeleteForbidden(self) -> None:
        registry = self.loaded()
        self.error(registry.put(PSEUDO_ID, SERVER), 403, "Forbidden: API Key")
        self.error(registry.putFromBody(PSEUDO_ID, {}), 403, "Forbidden: API Key")
        self.error(registry.delete(PSEUDO_ID), 403, "Forbidden: API Key")


class PutDeleteTests(RegistryTestCase):
    def test_putRunning(self) -> None:
        registry = self.loaded()
        id = self.createOne(registry)
        self.hub.events.clear()
        self.supervisor.calls.clear()
        d = registry.put(id, CLIENT)
        self.assertNoResult(d)  # the 100 ms pause after the stop
        self.clock.advance(0.1)
        result = self.successResultOf(d)
        self.assertEqual((result["type"], result["status"]), ("client", "stopped"))
        self.assertEqual(result["config"], CLIENT_CONFIG)
        self.assertEqual(
            self.supervisor.calls,
            [("stop", id), ("start", id, "client://srv:10101/127.0.0.1:8080?log=info")],
        )
        self.assertEqual(self.hub.types(), ["update", "update", "update"])
        self.assertEqual(self.hub.events[1][1], result)
        self.assertEqual(self.store.record(id).type, "client")

    def test_putStoppedStillStarts(self) -> None:
        registry = self.loaded()
        id = self.createOne(registry)
        self.successResultOf(registry.patch(id, {"action": "stop"}))
        self.supervisor.calls.clear()
        self.successResultOf(registry.put(id, CLIENT))
        self.assertEqual([c[0] for c in self.supervisor.calls], ["start"])

    def test_putErrors(self) -> None:
        registry = self.loaded()
        id = self.createOne(registry)
        self.error(registry.put("ffffffff", SERVER), 404, "Instance not found")
        self.error(registry.putFromBody(id, {"url": ""}), 400, "Invalid request body")
        self.error(registry.put(id, "server://h:0x/t"), 400, "Invalid URL format")
        self.error(registry.put(id, "tcp://h:1/t:1"), 400, "Invalid URL scheme")
        # enhance(new) equals the current url
        self.error(registry.put(id, SERVER), 409, "Instance URL conflict")
        self.error(registry.put(id, SERVER_URL), 409, "Instance URL conflict")

    def test_delete(self) -> None:
        registry = self.loaded()
        id = self.createOne(registry)
        self.hub.events.clear()
        self.successResultOf(registry.delete(id))
        self.assertEqual(self.supervisor.calls[-1], ("remove", id))
        self.assertEqual(self.store.ids(), [])
        self.assertEqual(self.hub.types(), ["update", "delete"])
        self.assertEqual(self.hub.events[1][1]["status"], "stopped")  # type: ignore[index]
        self.assertEqual(self.hub.events[1][3], [])  # removed from the store first
        self.error(registry.get(id), 404, "Instance not found")
        self.error(registry.delete(id), 404, "Instance not found")
        registry.lineReceived(id, "late line")
        self.assertEqual(self.hub.types(), ["update", "delete"])
        self.assertEqual(len(registry.snapshot()), 1)


class ObserverTests(RegistryTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.registry = self.loaded()
        self.iid = self.createOne(self.registry)
        self.hub.events.clear()

    def test_checkpoint(self) -> None:
        self.registry.checkpointReceived(self.iid, Checkpoint(1, 20, 3, 4, 5, 10, 20, 30, None))
        eventType, instance, _, _ = self.hub.events[-1]
        assert instance is not None
        self.assertEqual(eventType, "update")
        self.assertEqual([instance[k] for k in FIELDS[8:]], [1, 20, 3, 4, 5, 10, 20, 30, 0])
        self.assertEqual(self.successResultOf(self.registry.flushTraffic()), 1)
        self.assertEqual(self.store.record(self.iid).traffic, Traffic(10, 20, 30, 0))
        self.assertEqual(self.successResultOf(self.registry.flushTraffic()), 0)

    def test_errorLineZeroesGauges(self) -> None:
        self.registry.checkpointReceived(self.iid, Checkpoint(1, 20, 3, 4, 5, 0, 0, 0, 0))
        self.supervisor.set(self.iid, Status.ERROR, Event.ERROR_LINE)
        instance = self.hub.events[-1][1]
        assert instance is not None
        self.assertEqual((instance["status"], instance["mode"], instance["ping"]), ("error", 1, 0))

    def test_statusUpdates(self) -> None:
        self.supervisor.set(self.iid, Status.STOPPED, Event.EXITED_CLEAN)
        self.supervisor.set(self.iid, Status.ERROR, Event.SPAWN_FAILED)
        self.assertEqual(
            [(e[0], e[1]["status"]) for e in self.hub.events],  # type: ignore[index]
            [("update", "stopped"), ("update", "error")],
        )

    def test_linesWhileDeleting(self) -> None:
        """
        The last lines of a child being deleted reach stdout but no longer the event stream.
        """
        self.supervisor.removing = Deferred()
        deleting = self.registry.delete(self.iid)
        self.hub.events.clear()
        self.registry.lineReceived(self.iid, "Client shutdown complete")
        self.assertEqual(self.output, [f"Client shutdown complete [{self.iid}]"])
        self.assertEqual(self.hub.events, [])
        self.supervisor.removing.callback(None)
        self.successResultOf(deleting)
        self.assertEqual(self.hub.types(), ["delete"])

    def test_logLines(self) -> None:
        self.registry.lineReceived(self.iid, "hello")
        self.registry.lineReceived(self.iid, "é" * 5000)
        self.assertEqual(self.hub.types(), ["log", "log"])
        self.assertEqual(self.hub.events[0][2], "hello")
        self.assertEqual(self.output[0], f"hello [{self.iid}]")
        self.assertEqual(len(self.hub.events[1][2].encode()), 8192)
        self.registry.lineReceived("unknown0", "x")
        self.assertEqual(len(self.hub.events), 2)

    def test_retryErrored(self) -> None:
        other = self.createOne(self.registry, CLIENT)
        self.supervisor.set(self.iid, Status.ERROR, Event.STALE)
        self.supervisor.calls.clear()
        self.successResultOf(self.registry.retryErrored())
        self.assertEqual(self.supervisor.calls, [("restart", self.iid, SERVER_URL)])
        self.assertEqual(self.supervisor.status(self.iid), Status.RUNNING)
        self.assertEqual(self.supervisor.status(other), Status.RUNNING)

    def test_shutdown(self) -> None:
        self.registry.checkpointReceived(self.iid, Checkpoint(1, 2, 3, 4, 5, 7, 0, 0, 0))
        self.supervisor.stopAll_ = Deferred()
        d = self.registry.shutdown(timeout=5)
        self.assertEqual(self.hub.shutdowns, 1)
        self.assertNoResult(d)
        self.clock.advance(5)
        self.successResultOf(d)
        self.assertIn(("killAll",), self.supervisor.calls)
        self.assertEqual(self.store.record(self.iid).traffic.tcprx, 7)
        self.error(self.registry.create(SERVER), 503, "Master is shutting down")
        self.error(
            self.registry.patch(self.iid, {"action": "start"}), 503, "Master is shutting down"
        )


class DecodeBodyTests(SynchronousTestCase):
    def test_decode(self) -> None:
        self.assertEqual(decodeBody(b""), {})
        self.assertEqual(decodeBody(b' {"url":"x"} trailing'), {"url": "x"})
        for raw in (b"[1]", b"{bad", b'"s"'):
            with self.assertRaises(RegistryError) as caught:
                decodeBody(raw)
            self.assertEqual(
                (statusOf(caught.exception), caught.exception.message),
                (400, "Invalid request body"),
            )
