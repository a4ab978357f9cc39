"""
The instance registry of master mode: the domain logic behind C{P/instances} (master spec
§6-§9, §11, §12).

The registry ties together the pieces the master is built from:

  - the durable state (L{nodepass.master.store}): every change the API acknowledges is
    committed B{before} the method returns (§11.6), and nothing in memory changes unless the
    write succeeded;
  - the child processes (L{nodepass.master.supervisor.Supervisor}): the registry is its
    L{ISupervisorObserver}, so status changes, checkpoints and output lines come back here and
    become C{update} and C{log} events;
  - the SSE hub (L{nodepass.master.events.EventHub}): C{create}, C{update}, C{delete},
    C{log} and C{shutdown};
  - the API key (L{nodepass.master.auth.KeyChecker}), owned here because the key lives in the
    C{********} pseudo-instance (§5, §12).

No HTTP here: the app decodes the body (L{nodepass.master.requests.decodeBody} reproduces
Go's decoding rules), calls a method, and turns a domain error
(L{nodepass.master.messages.RegistryError} and its kinds) into C{{"error": message}} with the
status that L{nodepass.master.app.STATUS_OF} gives its kind.  Validation lives in
L{nodepass.master.requests}, the JSON shapes in L{nodepass.master.views}, the texts in
L{nodepass.master.messages}.

Decisions worth knowing (see also the spec items cited):

  - URL validation (§7, §8.2, §8.5).  Go only checks that the URL parses and that the scheme
    is C{server} or C{client}; anything else surfaces later as a child in C{error}.  We run
    the full L{nodepass.url.parse} (the same validation the child will run), so a URL the
    child would reject is answered 400 at once instead of creating an instance doomed to
    C{error}.  The messages stay Go's (C{Invalid URL scheme} for a scheme problem,
    C{Invalid URL format} for anything else); the one-line reason from L{URLError} (which
    never contains the tunnel key) is in L{RegistryError.detail} for the app to log or add.
  - PATCH is validated as a whole before anything changes, then applied, persisted in one
    write and announced with a single C{update} (§17 a17).  Actions then run asynchronously;
    the response shows the status from before the action (§8.4).
  - ID collisions on POST are retried with a fresh id (§17 a19); 409 only if the generator
    keeps colliding.
  - The API key is never in an instance object, except the regeneration response (§5).
  - C{restart} in PATCH uses L{Supervisor.restart} (stop, wait for the child to be reaped,
    start); Go's fixed 100 ms pause is not needed because the stop waits for the exit.
  - While L{shutdown} runs and afterwards, mutating calls answer 503
    C{Master is shutting down}.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol, TypeVar

import attrs
from attrs import field, frozen
from twisted.internet.defer import Deferred, DeferredLock, fail, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from nodepass.errors import URLError
from nodepass.master.auth import KeyChecker, generateKey
from nodepass.master.events import truncateLogLine
from nodepass.master.messages import (
    ALIAS_TOO_LONG,
    CONNECTION_NOT_FOUND,
    FORBIDDEN_KEY,
    ID_EXISTS,
    ID_REQUIRED,
    INVALID_BODY,
    INVALID_URL_FORMAT,
    INVALID_URL_SCHEME,
    MASTER_ALIAS_TOO_LONG,
    NOT_FOUND,
    SHUTTING_DOWN,
    URL_CONFLICT,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unavailable,
    Unsupported,
)
from nodepass.master.requests import (
    bodyField,
    mergedMeta,
    requireObject,
    tooLong,
    urlOf,
    validatePatch,
)
from nodepass.master.store import (
    PSEUDO_ID,
    MasterValues,
    State,
    StoredInstance,
    keyDigest,
)
from nodepass.master.store import Traffic as StoredTraffic
from nodepass.master.supervisor import (
    TRAFFIC_FIELDS,
    ConnectionsUnavailable,
    Event,
    ISupervisorObserver,
    Status,
    Traffic,
)
from nodepass.master.views import InstanceObject, instanceObject, pseudoObject
from nodepass.stats import Checkpoint
from nodepass.url import enhance, parse, render

__all__ = [
    "PSEUDO_ID",
    "LoadResult",
    "MasterSettings",
    "Registry",
]

log = Logger()

#: How often POST draws a new id when the generated one is taken (§17 a19).
ID_ATTEMPTS: Final = 8

#: Pause between two auto-starts at boot (§11.4).
BOOT_START_DELAY: Final = 0.1

#: Pause between stopping and starting again in PUT (§8.5).
PUT_RESTART_DELAY: Final = 0.1

#: Default bound on L{Registry.shutdown}'s wait for the children (§14, NP_SHUTDOWN_TIMEOUT).
SHUTDOWN_TIMEOUT: Final = 5.0

_T = TypeVar("_T")

#: Why an instance refuses a user (the C{reason} label of the refusal metric).
REFUSAL_REASONS: Final = ("slot", "deny", "block")

# A URL scheme followed by its colon (RFC 3986).
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")

_Objects = list[InstanceObject]


# -- collaborators -----------------------------------------------------------------------------


class StoreFacade(Protocol):
    """
    What the registry needs from L{nodepass.master.store.Store}.
    """

    def load(self) -> Deferred[State]: ...

    def put(self, record: StoredInstance) -> Deferred[None]: ...

    def delete(self, id: str) -> Deferred[bool]: ...

    def updateTrafficMany(self, totals: Mapping[str, StoredTraffic]) -> Deferred[int]: ...

    def setMaster(
        self,
        *,
        keyDigest: str | None = None,
        masterID: str | None = None,
        alias: str | None = None,
    ) -> Deferred[MasterValues]: ...


class SupervisorLike(Protocol):
    """
    What the registry needs from L{nodepass.master.supervisor.Supervisor}.
    """

    def status(self, instanceId: str) -> Status: ...

    def start(
        self, instanceId: str, url: str, env: Mapping[str, str] | None = None
    ) -> Deferred[None]: ...

    def stop(self, instanceId: str) -> Deferred[None]: ...

    def restart(
        self, instanceId: str, url: str, env: Mapping[str, str] | None = None
    ) -> Deferred[None]: ...

    def remove(self, instanceId: str) -> Deferred[None]: ...

    def resetCounters(self, instanceId: str) -> Deferred[Mapping[str, int] | None]: ...

    def connections(self, instanceId: str) -> Deferred[list[dict[str, Any]]]: ...

    def closeConnection(self, instanceId: str, connection: str) -> Deferred[bool]: ...

    def stopAll(self) -> Deferred[None]: ...

    def killAll(self) -> int: ...


class HubLike(Protocol):
    """
    What the registry needs from L{nodepass.master.events.EventHub}.
    """

    def publish(
        self, eventType: str, instance: Mapping[str, Any] | None, logs: str = ""
    ) -> None: ...

    def shutdown(self) -> None: ...


@frozen
class MasterSettings:
    """
    The master URL values copied into instance URLs (§7).

    @ivar log: the raw C{log} value of the master URL (possibly C{""}).
    @ivar tls: the effective TLS code, C{"0"}, C{"1"} or C{"2"}.
    @ivar crt: the C{crt} file of the master URL.
    @ivar key: the C{key} file of the master URL.
    """

    log: str = ""
    tls: str = "0"
    crt: str = ""
    key: str = ""


@frozen
class LoadResult:
    """
    What L{Registry.load} found.

    @ivar createdKey: the new plaintext API key if none was stored (print it once:
        C{API Key created: <key>}), else C{None} (C{API Key loaded}; never print it again).
    @ivar instances: how many instances were restored.
    """

    createdKey: str | None = field(repr=False)
    instances: int


def _newInstanceId() -> str:
    return secrets.token_hex(4)


def _newMasterId() -> str:
    return secrets.token_hex(8)


# -- the in-memory instance --------------------------------------------------------------------


class _Instance:
    """
    One instance as the registry keeps it.  Status comes from the supervisor.
    """

    def __init__(self, record: StoredInstance, traffic: Traffic) -> None:
        self.record = record
        self.traffic = traffic
        self.mode = 0
        self.ping = 0
        self.pool = 0
        self.tcps = 0
        self.udps = 0
        self.deleted = False
        self.trafficDirty = False
        #: Processes started for it since the master started (restarts are the rest).
        self.spawns = 0
        #: Refused user connections by reason: the totals of earlier processes, and the
        #: current process's own figures (from its CHECK_POINT lines).
        self.refusedBase = dict.fromkeys(REFUSAL_REASONS, 0)
        self.refusedNow = dict.fromkeys(REFUSAL_REASONS, 0)

    def zeroGauges(self) -> None:
        self.ping = self.pool = self.tcps = self.udps = 0

    def storedTraffic(self) -> StoredTraffic:
        return StoredTraffic(**self.traffic.totals())

    def stored(self) -> StoredInstance:
        """
        The record as it should be persisted now (current traffic bookkeeping).
        """
        counters = self.traffic.counters
        return StoredInstance(
            id=self.record.id,
            alias=self.record.alias,
            type=self.record.type,
            url=self.record.url,
            config=self.record.config,
            restart=self.record.restart,
            meta=self.record.meta,
            traffic=self.storedTraffic(),
            base=StoredTraffic(**{n: counters[n].base for n in TRAFFIC_FIELDS}),
            offset=StoredTraffic(**{n: counters[n].offset for n in TRAFFIC_FIELDS}),
        )


def _restoredTraffic(record: StoredInstance) -> Traffic:
    traffic = Traffic.restored(
        record.traffic.tcprx, record.traffic.tcptx, record.traffic.udprx, record.traffic.udptx
    )
    return traffic


# -- the registry ------------------------------------------------------------------------------


@implementer(ISupervisorObserver)
class Registry:
    """
    Every instance of the master, and the operations of C{P/instances}.

    @param clock: schedules the short pauses of §8.5 and §11.4 and bounds L{shutdown}.
    @param store: the asynchronous store (L{nodepass.master.store.Store}).
    @param supervisor: builds the supervisor with this registry as its observer, e.g.
        C{lambda observer: Supervisor(reactor, observer, os.environ, settings)}.
    @param hub: the event hub (its snapshot callable should call L{snapshot}).
    @param settings: the master URL values copied into instance URLs.
    @param newId: generates instance ids (8 hex characters).
    @param newMasterId: generates the master ID (16 hex characters).
    @param newKey: generates API keys.
    @param output: receives every child output line as C{<line> [<id>]} (Go writes them to
        the master's stdout, §9.2); by default they are logged at info level.
    @param masterChanged: told, once the change is saved, that the master alias changed
        (C{"alias"}) or the API key was regenerated (C{"key"}; never the key itself); the
        master sends these to its webhooks.
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: StoreFacade,
        supervisor: Callable[[ISupervisorObserver], SupervisorLike],
        hub: HubLike,
        settings: MasterSettings,
        *,
        newId: Callable[[], str] = _newInstanceId,
        newMasterId: Callable[[], str] = _newMasterId,
        newKey: Callable[[], str] = generateKey,
        bootStartDelay: float = BOOT_START_DELAY,
        putRestartDelay: float = PUT_RESTART_DELAY,
        output: Callable[[str], None] | None = None,
        masterChanged: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._masterChanged = masterChanged
        self._store = store
        self._hub = hub
        self._settings = settings
        self._newId = newId
        self._newMasterId = newMasterId
        self._newKey = newKey
        self._bootStartDelay = bootStartDelay
        self._putRestartDelay = putRestartDelay
        self._output = output
        self._instances: dict[str, _Instance] = {}
        self._locks: dict[str, DeferredLock] = {}
        self._masterLock = DeferredLock()
        self._master = MasterValues()
        self._keyChecker: KeyChecker | None = None
        self._closing = False
        self.supervisor = supervisor(self)

    # -- master values -------------------------------------------------------------------------

    @property
    def keyChecker(self) -> KeyChecker:
        """
        The API key checker (available after L{load}).
        """
        if self._keyChecker is None:
            raise RuntimeError("the registry has not been loaded")
        return self._keyChecker

    @property
    def masterID(self) -> str:
        return self._master.masterID

    @property
    def closing(self) -> bool:
        """
        Whether L{shutdown} has begun (mutating calls answer 503 from then on).
        """
        return self._closing

    def restartCount(self, id: str) -> int:
        """
        How often C{id} was started again after it had run, since the master started (a
        restart action, a PUT, a retry after C{error}, a replaced instance host).
        """
        instance = self._instances.get(id)
        return max(0, instance.spawns - 1) if instance is not None else 0

    def refusals(self, id: str) -> dict[str, int]:
        """
        User connections (and UDP datagrams) C{id} refused since the master started, by
        reason (C{slot}, C{deny}, C{block}), across its restarts.
        """
        instance = self._instances.get(id)
        if instance is None:
            return dict.fromkeys(REFUSAL_REASONS, 0)
        return {r: instance.refusedBase[r] + instance.refusedNow[r] for r in REFUSAL_REASONS}

    def instanceObjects(self) -> _Objects:
        """
        Every instance object without the pseudo-instance (for metrics and health).
        """
        return [self._object(i) for i in self._instances.values() if not i.deleted]

    @property
    def masterAlias(self) -> str:
        return self._master.alias

    def setMasterAlias(self, alias: str) -> Deferred[None]:
        """
        Set the master alias (C{POST P/info}, §12); no event.

        @raise RegistryError: 400 C{Master alias exceeds maximum length 256}.
        """

        async def run() -> None:
            if tooLong(alias):
                raise InvalidRequest(MASTER_ALIAS_TOO_LONG)
            async with self._locked(self._masterLock):
                before = self._master.alias
                self._master = await self._store.setMaster(alias=alias)
                if self._master.alias != before:
                    self._announceMaster("alias")

        return Deferred.fromCoroutine(run())

    def setMasterAliasFromBody(self, body: Mapping[str, Any]) -> Deferred[None]:
        """
        L{setMasterAlias} from a decoded C{POST P/info} body: a missing or null C{alias}
        clears it; any other type is 400 C{Invalid request body}.
        """
        _, alias = bodyField(requireObject(body), "alias")
        if alias is not None and not isinstance(alias, str):
            return fail(InvalidRequest(INVALID_BODY))
        return self.setMasterAlias(alias or "")

    # -- boot ----------------------------------------------------------------------------------

    def load(self, autoStart: bool = True) -> Deferred[LoadResult]:
        """
        Restore the state at boot (§11.4, §12): make sure the API key and master ID exist
        (and are in memory at once, not Go's bug a16) and restore every instance as
        C{stopped} (an empty C{config} is rendered again and saved).  With C{autoStart}, then
        wait for L{autoStart}; the master passes C{False} and runs it in the background, so
        the API answers while a long list of instances is being started.
        """

        async def run() -> LoadResult:
            result = await self._load()
            if autoStart:
                await self.autoStart()
            return result

        return Deferred.fromCoroutine(run())

    def autoStart(self) -> Deferred[None]:
        """
        Start the C{restart=true} instances in creation order with a short pause between
        them (§11.4).  An instance changed through the API meanwhile keeps that change: the
        start guard leaves running ones alone, and deleted ones are skipped.
        """
        return Deferred.fromCoroutine(self._autoStart())

    async def _load(self) -> LoadResult:
        state = await self._store.load()
        master = state.master
        createdKey: str | None = None
        if not master.keyDigest:
            createdKey = self._newKey()
            master = await self._store.setMaster(keyDigest=keyDigest(createdKey))
        if not master.masterID:
            master = await self._store.setMaster(masterID=self._newMasterId())
        self._master = master
        self._keyChecker = KeyChecker(master.keyDigest)
        for record in state.instances:
            if not record.config:
                try:
                    record = _evolve(record, config=self._render(record.url))
                    await self._store.put(record)
                except URLError as e:
                    log.warn(
                        "Cannot render the config of instance {id}: {why}",
                        id=record.id,
                        why=str(e),
                    )
            self._instances[record.id] = _Instance(record, _restoredTraffic(record))
        return LoadResult(createdKey=createdKey, instances=len(self._instances))

    async def _autoStart(self) -> None:
        first = True
        for instance in list(self._instances.values()):
            if not instance.record.restart or instance.deleted or self._closing:
                continue
            if not first and self._bootStartDelay > 0:
                await deferLater(self._clock, self._bootStartDelay, lambda: None)
            first = False
            id = instance.record.id
            async with self._locked(self._lock(id)):
                if instance.deleted or self._closing:
                    continue
                log.info("Auto-starting instance [{id}]", id=id)
                await self.supervisor.start(id, instance.record.url)

    # -- reading -------------------------------------------------------------------------------

    def snapshot(self, key: str = "") -> _Objects:
        """
        Every instance object, the pseudo-instance first (C{type} and C{status} C{""}, C{url}
        C{key}), then creation order: for C{GET P/instances} and the SSE C{initial} events.

        @param key: what the pseudo-instance shows in C{url}: the key the caller of a
            direct request authenticated with, never anything in an event stream (C{""}).
        """
        return [self._pseudoObject(key), *self.instanceObjects()]

    def list(self, key: str = "") -> Deferred[_Objects]:
        """
        C{GET P/instances} (§8.1).

        @param key: the key the caller authenticated with, shown in the pseudo-instance's
            C{url} as Go does (front-ends read it there); the caller already holds it.
        """
        return Deferred.fromCoroutine(self._async(lambda: self.snapshot(key)))

    def get(self, id: str, key: str = "") -> Deferred[dict[str, Any]]:
        """
        C{GET P/instances/{id}} (§8.3); C{********} is the pseudo-instance with C{key} (the
        caller's own key, see L{list}) in C{url}.

        @raise RegistryError: 400 C{Instance ID is required}, 404 C{Instance not found}.
        """

        def find() -> dict[str, Any]:
            if self._isPseudo(id):
                return self._pseudoObject(key)
            return self._object(self._find(id))

        return Deferred.fromCoroutine(self._async(find))

    # -- POST ----------------------------------------------------------------------------------

    def create(self, url: str | None, alias: str | None = None) -> Deferred[dict[str, Any]]:
        """
        C{POST P/instances} (§8.2): validate, persist, emit C{create}, then start.

        @return: the new instance object (status C{stopped}: the start runs afterwards).
        @raise RegistryError: 400 C{Invalid request body} (no url or not strings),
            C{Invalid URL format}, C{Invalid URL scheme}, C{Instance alias exceeds maximum
            length 256}; 409 C{Instance ID already exists}; 503 while shutting down.
        """
        return Deferred.fromCoroutine(self._create(url, alias))

    def createFromBody(self, body: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """
        L{create} from a decoded request body (C{url}, C{alias}; other fields ignored).
        """

        async def run() -> dict[str, Any]:
            url = urlOf(body)
            _, alias = bodyField(body, "alias")
            if alias is not None and not isinstance(alias, str):
                raise InvalidRequest(INVALID_BODY)
            return await self._create(url, alias)

        return Deferred.fromCoroutine(run())

    async def _create(self, url: str | None, alias: str | None) -> dict[str, Any]:
        if not isinstance(url, str) or not url:
            raise InvalidRequest(INVALID_BODY)
        if alias is not None and not isinstance(alias, str):
            raise InvalidRequest(INVALID_BODY)
        scheme, enhanced, config = self._normalise(url)
        alias = alias or ""
        if tooLong(alias):
            raise InvalidRequest(ALIAS_TOO_LONG)
        self._checkOpen()
        id = self._freshId()
        record = StoredInstance(
            id=id, alias=alias, type=scheme, url=enhanced, config=config, restart=True
        )
        async with self._locked(self._lock(id)):
            await self._store.put(record)
            instance = self._instances[id] = _Instance(record, Traffic())
            created = self._object(instance)
            self._hub.publish("create", created)
            self._background(self.supervisor.start(id, enhanced), "start", id)
        return created

    def _freshId(self) -> str:
        for _ in range(ID_ATTEMPTS):
            id = self._newId()
            if id not in self._instances and id not in self._locks and id != PSEUDO_ID:
                return id
        raise Conflict(ID_EXISTS)

    # -- PATCH ---------------------------------------------------------------------------------

    def patch(self, id: str, body: Mapping[str, Any], key: str = "") -> Deferred[dict[str, Any]]:
        """
        C{PATCH P/instances/{id}} (§8.4, §5).

        The whole body is validated first; then alias, reset, restart flag and meta are
        applied, persisted in one write and announced with one C{update}; then the action
        (start/stop/restart) is started and not waited for.  C{{"action":"status"}} and an
        empty body change nothing.

        On C{********}, C{{"action":"restart"}} regenerates the API key: the new digest is
        persisted, the old key stops working at once, an C{update} (without the key) is
        published, every SSE stream gets C{shutdown}, and the returned object carries the new
        key in C{url}.  Anything else on C{********} is ignored and answered with the
        pseudo-instance showing C{key}, the caller's own key (see L{list}).

        @raise RegistryError: 400 (C{Instance ID is required}, C{Invalid request body},
            C{Invalid action: <a>}, the alias and meta messages), 404 C{Instance not found}.
        """
        return Deferred.fromCoroutine(self._patch(id, body, key))

    async def _patch(self, id: str, body: Mapping[str, Any], key: str) -> dict[str, Any]:
        if self._isPseudo(id):
            return await self._patchPseudo(body, key)
        self._find(id)
        patch = validatePatch(body)
        async with self._locked(self._lock(id)):
            instance = self._find(id)  # it may have been deleted while we waited
            if patch.action in ("start", "stop", "restart"):
                self._checkOpen()
            record = instance.record
            changes: dict[str, Any] = {}
            if patch.alias and patch.alias != record.alias:
                changes["alias"] = patch.alias
            if patch.restart is not None and patch.restart != record.restart:
                changes["restart"] = patch.restart
            if patch.meta is not None:
                changes["meta"] = mergedMeta(record.meta, patch.meta)
            reset = patch.action == "reset"
            # Go announces a valid meta part even when nothing changed (§8.4).
            announce = bool(changes) or reset
            if announce:
                newRecord = _evolve(record, **changes)
                traffic = instance.traffic
                if reset:
                    traffic = _copyTraffic(traffic)
                    traffic.reset()
                candidate = _Instance(newRecord, traffic)
                await self._store.put(candidate.stored())
                instance.record = newRecord
                instance.traffic = traffic
                instance.trafficDirty = False
                if reset:
                    log.info("Traffic stats reset [{id}]", id=id)
                    self._zeroCounters(instance)
            before = self._object(instance)
            if announce:
                self._hub.publish("update", before)
            self._act(instance, patch.action)
        return before

    def _zeroCounters(self, instance: _Instance) -> None:
        """
        After a C{reset}, have a hosted instance zero its own counters too (the totals are
        already right; this keeps its raw figures small and exact).
        """

        def zeroed(raw: Mapping[str, int] | None) -> None:
            if raw is not None and not instance.deleted:
                instance.traffic.zeroed(raw)
                instance.trafficDirty = True

        d = self.supervisor.resetCounters(instance.record.id).addCallback(zeroed)
        self._background(d, "counter reset", instance.record.id)

    def _act(self, instance: _Instance, action: str | None) -> None:
        id, url = instance.record.id, instance.record.url
        status = self.supervisor.status(id)
        if action == "start" and status is Status.STOPPED:
            self._background(self.supervisor.start(id, url), "start", id)
        elif action == "stop" and status is not Status.STOPPED:
            self._background(self.supervisor.stop(id), "stop", id)
        elif action == "restart":
            self._background(self.supervisor.restart(id, url), "restart", id)

    async def _patchPseudo(self, body: Mapping[str, Any], callerKey: str) -> dict[str, Any]:
        requireObject(body)
        _, action = bodyField(body, "action")
        if action != "restart":
            return self._pseudoObject(callerKey)
        async with self._locked(self._masterLock):
            key = self._newKey()
            self._master = await self._store.setMaster(keyDigest=keyDigest(key))
            self.keyChecker.replaceDigest(self._master.keyDigest)
            log.info("API Key regenerated")
            self._hub.publish("update", self._pseudoObject())
            self._hub.shutdown()
            self._announceMaster("key")
            return self._pseudoObject(key)

    # -- PUT -----------------------------------------------------------------------------------

    def put(self, id: str, url: str | None) -> Deferred[dict[str, Any]]:
        """
        C{PUT P/instances/{id}} (§8.5): stop if needed, apply the new URL (type and config
        follow), persist, emit C{update}, then start whatever the previous status was.

        @raise RegistryError: 400 C{Instance ID is required}, 404 C{Instance not found},
            403 C{Forbidden: API Key}, 400 C{Invalid request body}, C{Invalid URL format},
            C{Invalid URL scheme}, 409 C{Instance URL conflict}, 503 while shutting down.
        """
        return Deferred.fromCoroutine(self._put(id, url))

    def putFromBody(self, id: str, body: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """
        L{put} from a decoded request body; the checks keep the order of §8.5.
        """

        async def run() -> dict[str, Any]:
            self.checkReplaceable(id)
            return await self._put(id, urlOf(body))

        return Deferred.fromCoroutine(run())

    def connections(self, id: str) -> Deferred[_Objects]:
        """
        C{GET P/instances/{id}/connections}: the instance's open TCP relays and UDP flows.

        @raise RegistryError: 400 C{Instance ID is required}, 404 C{Instance not found} (and
            for C{********}), 501 when the instance runs in a process of its own.
        """

        async def run() -> _Objects:
            self._findReal(id)
            try:
                return await self.supervisor.connections(id)
            except ConnectionsUnavailable as e:
                raise Unsupported(str(e)) from None

        return Deferred.fromCoroutine(run())

    def closeConnection(self, id: str, connection: str) -> Deferred[None]:
        """
        C{DELETE P/instances/{id}/connections/{cid}}: close one (its user sees the close).

        @raise RegistryError: as L{connections}, and 404 C{Connection not found}.
        """

        async def run() -> None:
            self._findReal(id)
            try:
                closed = await self.supervisor.closeConnection(id, connection)
            except ConnectionsUnavailable as e:
                raise Unsupported(str(e)) from None
            if not closed:
                raise NotFound(CONNECTION_NOT_FOUND)
            log.info("Connection {cid} closed through the API [{id}]", cid=connection, id=id)

        return Deferred.fromCoroutine(run())

    def _findReal(self, id: str) -> _Instance:
        if not id:
            raise InvalidRequest(ID_REQUIRED)
        if id == PSEUDO_ID:
            raise NotFound(NOT_FOUND)
        return self._find(id)

    def checkReplaceable(self, id: str) -> None:
        """
        The checks of PUT and DELETE that come before the request body is read (§8.5,
        §8.6): 400 C{Instance ID is required}, 403 C{Forbidden: API Key} for C{********},
        404 C{Instance not found}.

        @raise RegistryError: as above.
        """
        if not id:
            raise InvalidRequest(ID_REQUIRED)
        if id == PSEUDO_ID:
            raise Forbidden(FORBIDDEN_KEY)
        self._find(id)

    async def _put(self, id: str, url: str | None) -> dict[str, Any]:
        self.checkReplaceable(id)
        if not isinstance(url, str) or not url:
            raise InvalidRequest(INVALID_BODY)
        scheme, enhanced, config = self._normalise(url)
        async with self._locked(self._lock(id)):
            instance = self._find(id)
            if enhanced == instance.record.url:
                raise Conflict(URL_CONFLICT)
            self._checkOpen()
            if self.supervisor.status(id) is not Status.STOPPED:
                await self.supervisor.stop(id)
                if self._putRestartDelay > 0:
                    await deferLater(self._clock, self._putRestartDelay, lambda: None)
            newRecord = _evolve(instance.record, type=scheme, url=enhanced, config=config)
            await self._store.put(_Instance(newRecord, instance.traffic).stored())
            instance.record = newRecord
            instance.trafficDirty = False
            result = self._object(instance)
            self._hub.publish("update", result)
            self._background(self.supervisor.start(id, enhanced), "start", id)
        return result

    # -- DELETE --------------------------------------------------------------------------------

    def delete(self, id: str) -> Deferred[None]:
        """
        C{DELETE P/instances/{id}} (§8.6): mark deleted (no more C{log} or checkpoint
        events), stop and forget the child (its stop emits C{update}), remove the record,
        then emit C{delete} with the last instance object.

        @raise RegistryError: 400 C{Instance ID is required}, 404 C{Instance not found},
            403 C{Forbidden: API Key}.
        """
        return Deferred.fromCoroutine(self._delete(id))

    async def _delete(self, id: str) -> None:
        self.checkReplaceable(id)
        lock = self._lock(id)
        async with self._locked(lock):
            instance = self._find(id)
            instance.deleted = True
            try:
                await self.supervisor.remove(id)
                await self._store.delete(id)
            except BaseException:
                instance.deleted = False
                raise
            last = self._object(instance)
            del self._instances[id]
            if self._locks.get(id) is lock:
                del self._locks[id]
            self._hub.publish("delete", last)

    # -- periodic tasks and shutdown -----------------------------------------------------------

    def retryErrored(self) -> Deferred[None]:
        """
        The periodic error retry (§11.5): restart every instance in C{error}, whatever its
        C{restart} flag (§17 a26).  Fires when every restart has spawned (or failed).
        """

        async def retry(instance: _Instance) -> None:
            id = instance.record.id
            async with self._locked(self._lock(id)):
                if instance.deleted or self._closing:
                    return
                if self.supervisor.status(id) is not Status.ERROR:
                    return
                log.info("Retrying instance in error [{id}]", id=id)
                await self.supervisor.restart(id, instance.record.url)

        errored = [
            i
            for i in self._instances.values()
            if not i.deleted and self.supervisor.status(i.record.id) is Status.ERROR
        ]
        d = gatherResults([Deferred.fromCoroutine(retry(i)) for i in errored], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def flushTraffic(self) -> Deferred[int]:
        """
        Persist the traffic totals that changed since the last flush (§11.6: every 60 s while
        any changed, and at shutdown).

        @return: how many instances were written.
        """
        dirty = {
            id: i.storedTraffic()
            for id, i in self._instances.items()
            if i.trafficDirty and not i.deleted
        }
        for id in dirty:
            self._instances[id].trafficDirty = False
        if not dirty:
            return Deferred.fromCoroutine(self._async(lambda: 0))

        def failed(reason: Any) -> Any:
            for id in dirty:
                if id in self._instances:
                    self._instances[id].trafficDirty = True
            return reason

        return self._store.updateTrafficMany(dirty).addErrback(failed)

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> Deferred[None]:
        """
        Master shutdown (§14): refuse further changes, send C{shutdown} to every SSE stream,
        save the traffic, stop every child (waiting at most C{timeout} seconds), save again.
        """
        return Deferred.fromCoroutine(self._shutdown(timeout))

    async def _shutdown(self, timeout: float) -> None:
        self._closing = True
        self._hub.shutdown()
        await self._flushLogged()
        stopping = self.supervisor.stopAll()
        stopping.addTimeout(timeout, self._clock)
        try:
            await stopping
        except Exception:
            killed = self.supervisor.killAll()
            log.warn(
                "Not every instance stopped within {timeout:.1f}s: {killed} killed",
                timeout=timeout,
                killed=killed,
            )
        await self._flushLogged()

    async def _flushLogged(self) -> None:
        try:
            await self.flushTraffic()
        except Exception:
            log.failure("Cannot save the traffic counters")

    # -- ISupervisorObserver -------------------------------------------------------------------

    def spawning(self, instanceId: str) -> None:
        instance = self._instances.get(instanceId)
        if instance is not None:
            instance.traffic.spawned()
            instance.spawns += 1
            for reason in REFUSAL_REASONS:
                instance.refusedBase[reason] += instance.refusedNow[reason]
                instance.refusedNow[reason] = 0

    def statusChanged(self, instanceId: str, status: Status, cause: Event) -> None:
        instance = self._instances.get(instanceId)
        if instance is None:
            return
        if cause is Event.ERROR_LINE or status is Status.STOPPED:
            instance.zeroGauges()
        self._hub.publish("update", self._object(instance))

    def checkpointReceived(self, instanceId: str, checkpoint: Checkpoint) -> None:
        instance = self._instances.get(instanceId)
        if instance is None:
            return
        for name in ("mode", "ping", "pool", "tcps", "udps"):
            value = getattr(checkpoint, name)
            if value is not None:
                setattr(instance, name, value)
        for reason in REFUSAL_REASONS:
            value = getattr(checkpoint, "refused" + reason.capitalize())
            if value is not None:
                instance.refusedNow[reason] = value
        before = instance.traffic.totals()
        instance.traffic.checkpoint(checkpoint)
        if instance.traffic.totals() != before:
            instance.trafficDirty = True
        if not instance.deleted:
            self._hub.publish("update", self._object(instance))

    def lineReceived(self, instanceId: str, line: str) -> None:
        instance = self._instances.get(instanceId)
        if instance is None:
            return
        line = truncateLogLine(line)
        if self._output is not None:
            self._output(f"{line} [{instanceId}]")
        else:
            log.info("{line} [{id}]", line=line, id=instanceId)
        if not instance.deleted:  # a deleted instance's last lines reach stdout only (§9.2)
            self._hub.publish("log", self._object(instance), line)

    # -- helpers -------------------------------------------------------------------------------

    def _isPseudo(self, id: str) -> bool:
        if not id:
            raise InvalidRequest(ID_REQUIRED)
        return id == PSEUDO_ID

    def _find(self, id: str) -> _Instance:
        if not id:
            raise InvalidRequest(ID_REQUIRED)
        instance = self._instances.get(id)
        if instance is None or instance.deleted:
            raise NotFound(NOT_FOUND)
        return instance

    def _checkOpen(self) -> None:
        if self._closing:
            raise Unavailable(SHUTTING_DOWN)

    def _lock(self, id: str) -> DeferredLock:
        lock = self._locks.get(id)
        if lock is None:
            lock = self._locks[id] = DeferredLock()
        return lock

    @staticmethod
    @asynccontextmanager
    async def _locked(lock: DeferredLock) -> Any:
        await lock.acquire()
        try:
            yield
        finally:
            lock.release()

    @staticmethod
    async def _async(function: Callable[[], _T]) -> _T:
        return function()

    def _announceMaster(self, action: str) -> None:
        if self._masterChanged is None:
            return
        try:
            self._masterChanged(action)
        except Exception:
            log.failure("Announcing the master change {action} failed", action=action)

    def _background(self, d: Deferred[None], what: str, id: str) -> None:
        d.addErrback(lambda f: log.failure("Instance {what} failed [{id}]", f, what=what, id=id))

    def _normalise(self, url: str) -> tuple[str, str, str]:
        """
        Validate C{url} (§7) and return its scheme, C{enhance(url)} and the rendered config.
        """
        if _SCHEME.match(url) is None and ":" not in url.split("/", 1)[0]:
            # Go parses a text without a scheme (and no colon in its first segment) as a
            # bare path: the scheme check is what fails.
            raise InvalidRequest(INVALID_URL_SCHEME, "no scheme")
        try:
            parsed = parse(url)
        except URLError as e:
            if e.param == "scheme":
                raise InvalidRequest(INVALID_URL_SCHEME, str(e)) from None
            raise InvalidRequest(INVALID_URL_FORMAT, str(e)) from None
        if parsed.scheme not in ("server", "client"):
            raise InvalidRequest(INVALID_URL_SCHEME, f"scheme {parsed.scheme!r}")
        try:
            enhanced = enhance(url, **self._masterArgs())
            config = self._render(enhanced)
        except URLError as e:
            raise InvalidRequest(INVALID_URL_FORMAT, str(e)) from None
        return parsed.scheme, enhanced, config

    def _render(self, url: str) -> str:
        return render(parse(url), **self._masterArgs())

    def _masterArgs(self) -> dict[str, str]:
        s = self._settings
        return {"masterLog": s.log, "masterTLS": s.tls, "masterCrt": s.crt, "masterKey": s.key}

    def _object(self, instance: _Instance) -> dict[str, Any]:
        record = instance.record
        return instanceObject(
            record.id,
            record.alias,
            record.type,
            str(self.supervisor.status(record.id)),
            record.url,
            record.config,
            record.restart,
            record.meta,
            (instance.mode, instance.ping, instance.pool, instance.tcps, instance.udps),
            instance.traffic.totals(),
        )

    def _pseudoObject(self, key: str = "") -> dict[str, Any]:
        return pseudoObject(self._master.alias, self._master.masterID, key)


def _evolve(record: StoredInstance, **changes: Any) -> StoredInstance:
    return attrs.evolve(record, **changes)


def _copyTraffic(traffic: Traffic) -> Traffic:
    copy = Traffic()
    for name, counter in traffic.counters.items():
        target = copy.counters[name]
        target.total, target.base = counter.total, counter.base
        target.offset, target.last = counter.offset, counter.last
    return copy
