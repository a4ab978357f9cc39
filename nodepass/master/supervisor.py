"""The instance supervisor of master mode (master spec §9, §6.2, §14, §17 a9, a11-a13, a15, a21).

Every instance runs as a child process: ``python -m nodepass`` started through
L{nodepass.master.launch} (own process group, killed when the master dies).  The URL travels
in the C{NP_INSTANCE_URL} environment variable, never on the command line, where other local
users could read the key (dataplane spec §16.6).

Pieces, from the bottom up:

 - L{LineBuffer}: bytes to lines, one buffer per stream, lines capped at 8 KiB;
 - L{nodepass.stats.parseCheckpoint}: the CHECK_POINT line of §9.2 (next to its writer);
 - L{InstanceProcess}: the C{ProcessProtocol}; it sorts lines into checkpoints, error lines
   and log lines and tells L{InstanceProcess.whenEnded} waiters how the child ended;
 - L{transition}: the pure status state machine (public L{Status} plus an internal L{Phase});
 - L{Traffic}: the traffic accounting of §9.4 (baselines at spawn, offsets at reset);
 - L{Supervisor}: spawns, watches (liveness monitor of §9.3) and stops children, one
   L{DeferredLock} per instance so that start, stop and restart never overlap (§17 a15).

The registry learns what happens through an L{ISupervisorObserver}.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import Enum, StrEnum
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, DeferredLock, fail, gatherResults, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from nodepass.settings import Settings
from nodepass.stats import UINT64_MAX, Checkpoint, parseCheckpoint

log = Logger()

#: The environment variable that carries the instance URL to the child.
URL_VARIABLE = "NP_INSTANCE_URL"

#: Longest line kept from a child, in bytes; the rest of the line is dropped (§9.2, §18).
MAX_LINE = 8192

#: Extra time a child gets on top of its own NP_SHUTDOWN_TIMEOUT before SIGKILL.
KILL_MARGIN = 1.0

#: A checkpoint is stale after this many report intervals without a new one (§9.3).
STALE_INTERVALS = 3

#: Substrings that mark a failed run loop of a server or a client (§9.2).
ERROR_MARKERS = ("Server error:", "Client error:")


# -- lines and checkpoints ---------------------------------------------------------------------


class LineBuffer:
    """
    Split one output stream into lines.

    A trailing C{\\r} is stripped.  A line longer than C{limit} bytes keeps its first C{limit}
    bytes; the rest, up to the next newline, is dropped, so the buffer never grows past
    C{limit}.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._partial = False

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._append(data[start:])
                return lines
            self._append(data[start:end])
            lines.append(self._take())
            start = end + 1

    def flush(self) -> list[bytes]:
        """
        The unterminated last line, if any (call when the stream ends).
        """
        return [self._take()] if self._partial else []

    def _append(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._partial = True
        room = self._limit - len(self._buffer)
        if room > 0:
            self._buffer += chunk[:room]

    def _take(self) -> bytes:
        line = bytes(self._buffer)
        self._buffer.clear()
        self._partial = False
        return line[:-1] if line.endswith(b"\r") else line


def isErrorLine(line: str) -> bool:
    return any(marker in line for marker in ERROR_MARKERS)


@frozen
class ExitStatus:
    """
    How a child ended: its exit code, or the signal that killed it.
    """

    code: int | None
    signal: int | None
    #: The instance ran in an instance host that died: not the instance's own failure.
    hostLost: bool = False

    @property
    def clean(self) -> bool:
        return self.code == 0 and self.signal is None and not self.hostLost

    @classmethod
    def fromReason(cls, reason: Failure) -> ExitStatus:
        value = reason.value
        if isinstance(value, ProcessDone):
            return cls(0, None)
        if isinstance(value, ProcessTerminated):
            return cls(value.exitCode, value.signal)
        return cls(None, None)


# -- the process protocol ----------------------------------------------------------------------


class InstanceProcess(ProcessProtocol):
    """
    One child process.  stdout and stderr have separate L{LineBuffer}s and are handled alike:
    a CHECK_POINT line goes to C{onCheckpoint} only; a line with an error marker goes to
    C{onError} and to C{onLine}; every other line goes to C{onLine}.  Lines are decoded as
    UTF-8 with replacement.
    """

    def __init__(
        self,
        onCheckpoint: Callable[[Checkpoint], None],
        onError: Callable[[str], None],
        onLine: Callable[[str], None],
    ) -> None:
        self._onCheckpoint = onCheckpoint
        self._onError = onError
        self._onLine = onLine
        self._buffers: dict[int, LineBuffer] = {}
        self._waiters: list[Deferred[ExitStatus]] = []
        self.exitStatus: ExitStatus | None = None

    def connectionMade(self) -> None:
        # The child reads nothing; EOF on stdin is better than a pipe nobody writes to.
        assert self.transport is not None
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self._buffers.get(childFD)
        if buffer is None:
            buffer = self._buffers[childFD] = LineBuffer()
        for line in buffer.feed(data):
            self._handle(line)

    def childConnectionLost(self, childFD: int) -> None:
        buffer = self._buffers.get(childFD)
        if buffer is not None:
            for line in buffer.flush():
                self._handle(line)

    def _handle(self, raw: bytes) -> None:
        self.feedLine(raw.decode("utf-8", "replace"))

    def feedLine(self, line: str) -> None:
        """
        One complete output line of the instance (from a child's pipe or an instance host).
        """
        checkpoint = parseCheckpoint(line)
        if checkpoint is not None:
            self._onCheckpoint(checkpoint)
            return
        if isErrorLine(line):
            self._onError(line)
        self._onLine(line)

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]
        for fd in sorted(self._buffers):
            self.childConnectionLost(fd)
        self.ended(ExitStatus.fromReason(reason))

    def ended(self, status: ExitStatus) -> None:
        """
        The instance is gone (reaped child, or an instance host's report): wake the waiters.
        """
        if self.exitStatus is not None:
            return
        self.exitStatus = status
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.exitStatus)

    def whenEnded(self) -> Deferred[ExitStatus]:
        """
        A new Deferred that fires with the L{ExitStatus} once the child has been reaped.
        """
        if self.exitStatus is not None:
            return succeed(self.exitStatus)
        waiter: Deferred[ExitStatus] = Deferred()
        self._waiters.append(waiter)
        return waiter


# -- the status state machine ------------------------------------------------------------------


class Status(StrEnum):
    """
    The only values ever published (§6.2).
    """

    STOPPED = "stopped"
    RUNNING = "running"
    ERROR = "error"


class Phase(Enum):
    """
    Internal: where the process is.  Never published.
    """

    IDLE = "idle"  # no process
    STARTING = "starting"
    ALIVE = "alive"
    STOPPING = "stopping"


class Event(Enum):
    START = "start"
    SPAWNED = "spawned"
    SPAWN_FAILED = "spawn-failed"
    CHECKPOINT = "checkpoint"
    ERROR_LINE = "error-line"
    STALE = "stale"
    STOP = "stop"
    EXITED_CLEAN = "exited-clean"
    EXITED_FAILED = "exited-failed"
    HOST_LOST = "host-lost"


@frozen
class State:
    status: Status = Status.STOPPED
    phase: Phase = Phase.IDLE


def canStart(state: State) -> bool:
    """
    Start guard (§9.1, §17 a26): only a stopped instance without a process starts.
    """
    return state.status is Status.STOPPED and state.phase is Phase.IDLE


def transition(state: State, event: Event) -> State:
    """
    The next state.  Events that do not apply leave the state unchanged.
    """
    status, phase = state.status, state.phase
    if event is Event.START:
        return State(status, Phase.STARTING) if canStart(state) else state
    if event is Event.SPAWNED:
        return State(Status.RUNNING, Phase.ALIVE)
    if event is Event.SPAWN_FAILED:
        return State(Status.ERROR, Phase.IDLE)
    if event is Event.CHECKPOINT:
        if phase is Phase.ALIVE and status is Status.ERROR:
            return State(Status.RUNNING, phase)
        return state
    if event is Event.ERROR_LINE:
        if phase is Phase.ALIVE and status is not Status.ERROR:
            return State(Status.ERROR, phase)
        return state
    if event is Event.STALE:
        if phase is Phase.ALIVE and status is Status.RUNNING:
            return State(Status.ERROR, phase)
        return state
    if event is Event.STOP:
        if phase is Phase.ALIVE:
            return State(status, Phase.STOPPING)
        if phase is Phase.IDLE:
            return State(Status.STOPPED, phase)
        return state
    if event is Event.HOST_LOST:
        # The instance host died: not the instance's fault, so never an error.
        return State(Status.STOPPED, Phase.IDLE)
    if event in (Event.EXITED_CLEAN, Event.EXITED_FAILED):
        if phase is Phase.STOPPING:
            return State(Status.STOPPED, Phase.IDLE)
        if status is Status.RUNNING:
            clean = event is Event.EXITED_CLEAN
            return State(Status.STOPPED if clean else Status.ERROR, Phase.IDLE)
        return State(status, Phase.IDLE)
    raise ValueError(event)


# -- traffic accounting ------------------------------------------------------------------------


@define
class _Counter:
    total: int = 0
    base: int = 0
    offset: int = 0
    last: int = 0

    def spawned(self) -> None:
        self.base = self.total
        self.offset = 0
        self.last = 0

    def checkpoint(self, raw: int) -> None:
        self.last = raw
        if raw >= self.offset:
            total = self.base + raw - self.offset
        else:
            # The child's counter went back: it restarted its counting by itself.
            total = self.base + raw
            self.offset = 0
        self.total = min(total, UINT64_MAX)

    def reset(self) -> None:
        self.offset = self.last
        self.total = 0
        self.base = 0


TRAFFIC_FIELDS = ("tcprx", "tcptx", "udprx", "udptx")


@define
class Traffic:
    """
    Traffic totals of one instance across child restarts (§9.4; not Go's bugs a10, a11).

    Call L{spawned} right before each spawn, L{checkpoint} for every checkpoint and L{reset}
    for the PATCH C{reset} action.  L{totals} are the exposed, persisted values.
    """

    counters: dict[str, _Counter] = field(factory=lambda: {n: _Counter() for n in TRAFFIC_FIELDS})

    @classmethod
    def restored(cls, tcprx: int = 0, tcptx: int = 0, udprx: int = 0, udptx: int = 0) -> Traffic:
        traffic = cls()
        for name, value in zip(TRAFFIC_FIELDS, (tcprx, tcptx, udprx, udptx), strict=True):
            traffic.counters[name].total = value
            traffic.counters[name].base = value
        return traffic

    def spawned(self) -> None:
        for counter in self.counters.values():
            counter.spawned()

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        for name, counter in self.counters.items():
            raw = getattr(checkpoint, name)
            if raw is not None:
                counter.checkpoint(raw)

    def reset(self) -> None:
        for counter in self.counters.values():
            counter.reset()

    def zeroed(self, raw: Mapping[str, int]) -> None:
        """
        The instance zeroed its own counters (after a L{reset}), reporting C{raw}, their
        values at that moment: count up to C{raw}, then count on from zero.
        """
        for name, counter in self.counters.items():
            counter.checkpoint(raw[name])
            counter.spawned()

    def totals(self) -> dict[str, int]:
        return {name: counter.total for name, counter in self.counters.items()}


# -- the supervisor ----------------------------------------------------------------------------


#: Why an instance of a foreign core cannot list its connections.
UNAVAILABLE_ISOLATED = (
    "Connections are listed only for NodePass instances, not for the core in NP_CORE_BIN"
)


class ConnectionsUnavailable(Exception):
    """
    The instance runs where the master cannot ask for its connections.
    """


class ISupervisorObserver(Interface):
    """
    What the registry hears from the L{Supervisor}.  Nothing is reported for an instance after
    L{Supervisor.remove}.
    """

    def spawning(instanceId: str) -> None:
        """
        A child is about to be spawned: record the traffic baselines (L{Traffic.spawned}).
        """

    def statusChanged(instanceId: str, status: Status, cause: Event) -> None:
        """
        The public status changed.  Emit an C{update} event.  Zero C{ping}, C{pool},
        C{tcps} and C{udps} when C{cause} is L{Event.ERROR_LINE} or the new status is
        L{Status.STOPPED} (§9.2, §9.5).  A checkpoint that recovers an
        C{error} instance is reported here first, then to L{checkpointReceived}.
        """

    def checkpointReceived(instanceId: str, checkpoint: Checkpoint) -> None:
        """
        Set the gauges, update the traffic (L{Traffic.checkpoint}), emit an C{update}.
        """

    def lineReceived(instanceId: str, line: str) -> None:
        """
        A raw output line (error lines included, checkpoints excluded): write it to the
        master's output as C{<line> [<id>]} and emit a C{log} event.
        """


def _killGroup(pid: int, signum: int) -> None:
    os.killpg(pid, signum)


class IInstanceHandle(Interface):
    """
    One launched instance, whatever runs it: a child process of its own or an instance host.
    Its end is reported to the L{InstanceProcess} it was launched with.
    """

    pid: int | None
    """The process the instance runs in (its own, or its host's), when known."""

    def terminate() -> None:
        """
        Ask for a graceful stop (SIGTERM for a child).

        @raise ProcessExitedAlready: the instance has already ended.
        """

    def kill() -> None:
        """
        End it now (SIGKILL for a child), without a grace period.

        @raise ProcessExitedAlready: the instance has already ended.
        """

    def connections() -> Deferred[list[dict[str, Any]]]:
        """
        The instance's open TCP relays and UDP flows (C{id}, C{proto}, C{remote},
        C{target}, C{rx}, C{tx}, C{since}).

        @raise ConnectionsUnavailable: (as the Deferred's failure) the instance runs where
            the master cannot ask (a process of its own).
        """

    def closeConnection(connection: str) -> Deferred[bool]:
        """
        Close one of its connections; C{False} when it is not open (any more).

        @raise ConnectionsUnavailable: as for L{connections}.
        """

    def resetCounters() -> Deferred[Mapping[str, int] | None]:
        """
        Zero the instance's own traffic counters, where it can be told to.

        @return: fires with the raw counters (C{tcprx}, C{tcptx}, C{udprx}, C{udptx}) as
            they were when zeroed, or L{None} when nothing was zeroed (a child process of
            its own has no channel for it: the master's offsets make its reset exact).
        """


class IInstanceRunner(Interface):
    """
    Where instances run (L{ProcessRunner}: a process each; L{nodepass.master.hosts}: many per
    instance host).
    """

    def launch(
        instanceId: str, url: str, env: Mapping[str, str] | None, process: InstanceProcess
    ) -> IInstanceHandle:
        """
        Start the instance now.  Its output lines go to C{process.feedLine} (or its pipes) and
        its end to C{process.ended}/C{processEnded}.

        @raise Exception: it could not be started at all (the status becomes C{error}).
        """


@implementer(IInstanceHandle)
class ChildHandle:
    """
    A child process of its own: signals for stop and kill; nothing reaches inside it.
    """

    def __init__(
        self, transport: IProcessTransport, killGroup: Callable[[int, int], None] | None
    ) -> None:
        self._transport = transport
        self._killGroup = killGroup

    @property
    def pid(self) -> int | None:
        pid: int | None = self._transport.pid
        return pid

    def terminate(self) -> None:
        self._signal("TERM")

    def kill(self) -> None:
        self._signal("KILL")

    def resetCounters(self) -> Deferred[Mapping[str, int] | None]:
        return succeed(None)

    def connections(self) -> Deferred[list[dict[str, Any]]]:
        return fail(ConnectionsUnavailable(UNAVAILABLE_ISOLATED))

    def closeConnection(self, connection: str) -> Deferred[bool]:
        return fail(ConnectionsUnavailable(UNAVAILABLE_ISOLATED))

    def _signal(self, name: str) -> None:
        """
        Signal the child's process group, or the child alone when it has no group (yet).
        """
        pid = self._transport.pid
        if pid is None:
            raise ProcessExitedAlready()
        if self._killGroup is not None:
            try:
                self._killGroup(pid, getattr(signal, "SIG" + name))
                return
            except ProcessLookupError:
                pass  # the launcher has not called setpgid yet
        self._transport.signalProcess(name)


@implementer(IInstanceRunner)
class ProcessRunner:
    """
    One child process per instance (master spec §9.1): C{command} started through
    L{nodepass.master.launch} (own process group, SIGKILL when the master dies), the URL in
    C{NP_INSTANCE_URL}.

    @param reactor: provides L{IReactorProcess}.
    @param environ: the environment every child inherits; copied at every spawn.
    @param command: the child program, an explicit argv (no C{PATH} lookup).
    @param launcher: start C{command} through the launcher.
    @param killGroup: signals a process group (C{os.killpg}); L{None} signals the process only.
    @param urlArgument: hand the URL to C{command} as its last argument, as the Go master
        does (for a core that does not read C{NP_INSTANCE_URL}); needs the launcher.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        environ: Mapping[str, str],
        command: Sequence[str] = (sys.executable, "-m", "nodepass"),
        launcher: bool = True,
        killGroup: Callable[[int, int], None] | None = _killGroup,
        urlArgument: bool = False,
    ) -> None:
        self._reactor = reactor
        self._environ = dict(environ)
        self._command = list(command)
        self._launcher = launcher
        self._killGroup = killGroup
        self._urlArgument = urlArgument and launcher

    def _argv(self) -> list[str]:
        if not self._launcher:
            return list(self._command)
        return launcherArgv(self._command, urlArgument=self._urlArgument)

    def _environment(self, url: str, env: Mapping[str, str] | None) -> dict[str, str]:
        environment = dict(self._environ)
        if env is not None:
            environment.update(env)
        environment[URL_VARIABLE] = url
        return environment

    def launch(
        self, instanceId: str, url: str, env: Mapping[str, str] | None, process: InstanceProcess
    ) -> IInstanceHandle:
        argv = self._argv()
        transport = self._reactor.spawnProcess(
            process, argv[0], argv, env=self._environment(url, env), path=None, usePTY=False
        )
        return ChildHandle(transport, self._killGroup)


def launcherArgv(command: Sequence[str], urlArgument: bool = False) -> list[str]:
    """
    The argv that starts C{command} through L{nodepass.master.launch}: its own process group,
    and SIGKILL when this process dies.
    """
    launch = [sys.executable, "-m", "nodepass.master.launch", str(os.getpid())]
    if urlArgument:
        launch.append("--url-argument")
    return launch + list(command)


@define(eq=False)
class _Instance:
    instanceId: str
    lock: DeferredLock = field(factory=DeferredLock)
    state: State = field(factory=State)
    process: InstanceProcess | None = None
    handle: IInstanceHandle | None = None
    monitor: LoopingCall | None = None
    lastCheckpoint: float | None = None
    removed: bool = False
    #: What the last start used, for a restart after its instance host died.
    url: str = ""
    env: Mapping[str, str] | None = None


class Supervisor:
    """
    Start, watch and stop instance children.

    @param reactor: provides L{IReactorProcess} and L{IReactorTime}.
    @param observer: told about every change (L{ISupervisorObserver}).
    @param environ: the environment every child inherits (the master's, with its C{NP_*}
        tunables); it is copied at every spawn, never changed.
    @param settings: C{reportInterval} drives the liveness monitor, C{shutdownTimeout} (plus
        L{KILL_MARGIN}) is the grace period between SIGTERM and SIGKILL.
    @param command: the child program, an explicit argv (no C{PATH} lookup).
    @param launcher: start C{command} through L{nodepass.master.launch} (own process group,
        SIGKILL when the master dies).
    @param killGroup: signals a process group (C{os.killpg}); L{None} signals the process only.
    @param urlArgument: hand the URL to C{command} as its last argument, as the Go master
        does (for a core that does not read C{NP_INSTANCE_URL}); needs the launcher.
    @param runner: where instances run; by default a L{ProcessRunner} built from C{environ},
        C{command}, C{launcher}, C{killGroup} and C{urlArgument}.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        observer: ISupervisorObserver,
        environ: Mapping[str, str],
        settings: Settings | None = None,
        command: Sequence[str] = (sys.executable, "-m", "nodepass"),
        launcher: bool = True,
        killGroup: Callable[[int, int], None] | None = _killGroup,
        urlArgument: bool = False,
        runner: IInstanceRunner | None = None,
    ) -> None:
        self._clock = IReactorTime(reactor)
        self._observer = observer
        self._settings = settings if settings is not None else Settings()
        if runner is None:
            runner = ProcessRunner(reactor, environ, command, launcher, killGroup, urlArgument)
        self._runner = runner
        self._instances: dict[str, _Instance] = {}
        self._closing = False

    # -- public API ----------------------------------------------------------------------------

    @property
    def gracePeriod(self) -> float:
        return self._settings.shutdownTimeout + KILL_MARGIN

    def status(self, instanceId: str) -> Status:
        instance = self._instances.get(instanceId)
        return instance.state.status if instance is not None else Status.STOPPED

    def pid(self, instanceId: str) -> int | None:
        instance = self._instances.get(instanceId)
        if instance is None or instance.handle is None:
            return None
        return instance.handle.pid

    def setStatus(self, instanceId: str, status: Status) -> None:
        """
        Seed the status of an instance without a process (state restore: always C{stopped};
        kept for a registry that needs to reflect an C{error} it restored).
        """
        instance = self._instance(instanceId)
        if instance.state.phase is Phase.IDLE:
            instance.state = State(status, Phase.IDLE)

    def start(
        self, instanceId: str, url: str, env: Mapping[str, str] | None = None
    ) -> Deferred[None]:
        """
        Spawn the instance unless it is not C{stopped} (start guard).  Fires once the spawn
        succeeded or failed (the status tells which); waits for any earlier action.
        """
        instance = self._instance(instanceId)
        return self._serialised(instance, lambda: self._start(instance, url, env))

    def stop(self, instanceId: str) -> Deferred[None]:
        """
        SIGTERM the process group, SIGKILL after L{gracePeriod}; fires once the child has been
        reaped and the status is C{stopped}.
        """
        instance = self._instances.get(instanceId)
        if instance is None:
            return succeed(None)
        return self._serialised(instance, lambda: self._stop(instance))

    def restart(
        self, instanceId: str, url: str, env: Mapping[str, str] | None = None
    ) -> Deferred[None]:
        """
        Stop (whatever the status), then start, as one action.
        """
        instance = self._instance(instanceId)

        async def both() -> None:
            await self._stop(instance)
            await self._start(instance, url, env)

        return self._serialised(instance, both)

    def remove(self, instanceId: str) -> Deferred[None]:
        """
        Stop the instance and forget it; the observer hears nothing more about it.
        """
        instance = self._instances.get(instanceId)
        if instance is None:
            return succeed(None)

        async def removeIt() -> None:
            await self._stop(instance)
            instance.removed = True
            if self._instances.get(instanceId) is instance:
                del self._instances[instanceId]

        return self._serialised(instance, removeIt)

    def connections(self, instanceId: str) -> Deferred[list[dict[str, Any]]]:
        """
        The open connections of a running instance; none when it has no process.
        """
        instance = self._instances.get(instanceId)
        handle = instance.handle if instance is not None else None
        if handle is None:
            return succeed([])
        return handle.connections()

    def closeConnection(self, instanceId: str, connection: str) -> Deferred[bool]:
        """
        Close one connection of a running instance; C{False} when it is not open.
        """
        instance = self._instances.get(instanceId)
        handle = instance.handle if instance is not None else None
        if handle is None:
            return succeed(False)
        return handle.closeConnection(connection)

    def resetCounters(self, instanceId: str) -> Deferred[Mapping[str, int] | None]:
        """
        Have the running instance zero its own traffic counters (see
        L{IInstanceHandle.resetCounters}); L{None} when it has no process or it ended (or
        was replaced) before answering.
        """
        instance = self._instances.get(instanceId)
        handle = instance.handle if instance is not None else None
        if instance is None or handle is None:
            return succeed(None)

        def current(raw: Mapping[str, int] | None) -> Mapping[str, int] | None:
            return raw if instance.handle is handle else None

        return handle.resetCounters().addCallback(current)

    def stopAll(self) -> Deferred[None]:
        """
        Shutdown (§14): refuse further starts, stop every instance in parallel, fire when every
        child has been reaped.
        """
        self._closing = True
        stops = [self.stop(instanceId) for instanceId in list(self._instances)]
        d = gatherResults(stops, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def killAll(self) -> int:
        """
        SIGKILL every child that is still running (the last step of a shutdown whose time is
        up).  The exits are reported as usual.

        @return: how many children were signalled.
        """
        killed = 0
        for instance in list(self._instances.values()):
            handle = instance.handle
            if handle is None or instance.process is None:
                continue
            try:
                handle.kill()
            except ProcessExitedAlready:
                continue
            killed += 1
        return killed

    # -- internals -----------------------------------------------------------------------------

    def _instance(self, instanceId: str) -> _Instance:
        instance = self._instances.get(instanceId)
        if instance is None:
            instance = self._instances[instanceId] = _Instance(instanceId)
        return instance

    def _serialised(self, instance: _Instance, action: Callable[[], Any]) -> Deferred[None]:
        async def locked() -> None:
            await instance.lock.acquire()
            try:
                result = action()
                if hasattr(result, "__await__"):
                    await result
            finally:
                instance.lock.release()

        return Deferred.fromCoroutine(locked())

    def _apply(self, instance: _Instance, event: Event) -> None:
        before = instance.state
        instance.state = transition(before, event)
        if instance.state.status is not before.status and not instance.removed:
            self._observer.statusChanged(instance.instanceId, instance.state.status, event)

    async def _start(self, instance: _Instance, url: str, env: Mapping[str, str] | None) -> None:
        if instance.removed or self._closing or not canStart(instance.state):
            return
        self._apply(instance, Event.START)
        if not instance.removed:
            self._observer.spawning(instance.instanceId)
        process = InstanceProcess(
            onCheckpoint=lambda checkpoint: self._checkpoint(instance, process, checkpoint),
            onError=lambda line: self._errorLine(instance, process, line),
            onLine=lambda line: self._line(instance, line),
        )
        instance.url, instance.env = url, env
        try:
            handle = self._runner.launch(instance.instanceId, url, env, process)
        except Exception:
            log.failure("Instance spawn failed [{instanceId}]", instanceId=instance.instanceId)
            self._apply(instance, Event.SPAWN_FAILED)
            return
        instance.process = process
        instance.handle = handle
        instance.lastCheckpoint = None  # not Go's bug a12
        self._apply(instance, Event.SPAWNED)
        log.info(
            "Instance started [{instanceId}] pid={pid}",
            instanceId=instance.instanceId,
            pid=handle.pid,
        )
        instance.monitor = self._startMonitor(instance)
        process.whenEnded().addCallback(self._ended, instance, process)

    def _startMonitor(self, instance: _Instance) -> LoopingCall:
        monitor = LoopingCall(self._check, instance)
        monitor.clock = self._clock
        monitor.start(self._settings.reportInterval, now=False).addErrback(
            lambda failure: log.failure(
                "Instance monitor failed [{instanceId}]",
                failure,
                instanceId=instance.instanceId,
            )
        )
        return monitor

    def _stopMonitor(self, instance: _Instance) -> None:
        monitor, instance.monitor = instance.monitor, None
        if monitor is not None and monitor.running:
            monitor.stop()

    def _check(self, instance: _Instance) -> None:
        last = instance.lastCheckpoint
        threshold = STALE_INTERVALS * self._settings.reportInterval
        if last is not None and self._clock.seconds() - last > threshold:
            self._apply(instance, Event.STALE)

    def _checkpoint(
        self, instance: _Instance, process: InstanceProcess, checkpoint: Checkpoint
    ) -> None:
        if instance.process is not process:
            return
        instance.lastCheckpoint = self._clock.seconds()
        self._apply(instance, Event.CHECKPOINT)
        if not instance.removed:
            self._observer.checkpointReceived(instance.instanceId, checkpoint)

    def _errorLine(self, instance: _Instance, process: InstanceProcess, line: str) -> None:
        if instance.process is process:
            self._apply(instance, Event.ERROR_LINE)

    def _line(self, instance: _Instance, line: str) -> None:
        if not instance.removed:
            self._observer.lineReceived(instance.instanceId, line)

    def _ended(self, status: ExitStatus, instance: _Instance, process: InstanceProcess) -> None:
        if instance.process is not process:
            return
        self._stopMonitor(instance)
        instance.process = None
        instance.handle = None
        instance.lastCheckpoint = None
        if status.hostLost:
            stopping = instance.state.phase is Phase.STOPPING
            log.warn(
                "Instance host lost [{instanceId}]{then}",
                instanceId=instance.instanceId,
                then="" if stopping or self._closing else ": starting it again",
            )
            self._apply(instance, Event.HOST_LOST)
            if not stopping and not instance.removed and not self._closing:
                # Not the instance's fault: it runs again at once (on a fresh host).
                self.start(instance.instanceId, instance.url, instance.env).addErrback(
                    lambda f: log.failure(
                        "Restart after host loss failed [{instanceId}]",
                        f,
                        instanceId=instance.instanceId,
                    )
                )
            return
        log.info(
            "Instance exited [{instanceId}] code={code} signal={signal}",
            instanceId=instance.instanceId,
            code=status.code,
            signal=status.signal,
        )
        self._apply(instance, Event.EXITED_CLEAN if status.clean else Event.EXITED_FAILED)

    async def _stop(self, instance: _Instance) -> None:
        process, handle = instance.process, instance.handle
        if process is None or handle is None:
            self._apply(instance, Event.STOP)
            return
        self._apply(instance, Event.STOP)
        self._stopMonitor(instance)
        ended = process.whenEnded()
        forced = False

        def kill() -> None:
            nonlocal forced
            forced = True
            try:
                handle.kill()
            except ProcessExitedAlready:
                pass

        try:
            handle.terminate()
        except ProcessExitedAlready:
            pass
        killer: IDelayedCall = self._clock.callLater(self.gracePeriod, kill)
        try:
            await ended
        finally:
            if killer.active():
                killer.cancel()
        if forced:
            log.warn("Instance force killed [{instanceId}]", instanceId=instance.instanceId)
        else:
            log.info("Instance stopped [{instanceId}]", instanceId=instance.instanceId)
