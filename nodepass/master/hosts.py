"""Instance hosts, the master's side: many instances per process (ARCHITECTURE decision 4).

L{HostPool} is the master's default L{IInstanceRunner}.  It starts up to C{count} host
processes (L{nodepass.master.host}, through L{nodepass.master.launch}: own process group,
SIGKILL when the master dies), lazily, when instances need them, and puts each new
instance on the host with the fewest.  It speaks AMP to each (L{nodepass.master.hostproto})
over the host's descriptors 3 and 4.

Faults:

  - a host that dies (its process ends or its channel closes) is seen at once; each of its
    instances ends with L{ExitStatus.hostLost}, which the supervisor answers by starting it
    again (on a fresh host) without calling it an error;
  - a host that does not answer the heartbeat (L{Ping} every L{HEARTBEAT} seconds) within
    L{HEARTBEAT_TIMEOUT} is killed, which is then a death like any other;
  - when hosts keep dying, new ones start after a doubling delay (capped at
    L{MAX_RESPAWN_DELAY}); instances launched meanwhile wait for it;
  - an instance that was on L{SUSPECT_DEATHS} dying hosts within L{SUSPECT_WINDOW} seconds
    runs in a process of its own from then on (the C{isolated} runner), where the usual
    rules of an instance's own failure apply.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ConnectionDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass.master.childcontrol import ChildPipe, ControlledRunner
from nodepass.master.host import COMMAND_FD, REPORT_FD, settingsToJSON
from nodepass.master.hostproto import (
    CloseConnection,
    InstanceExited,
    InstanceLines,
    ListConnections,
    Ping,
    ResetCounters,
    StartInstance,
    StopInstance,
    allConnections,
)
from nodepass.master.supervisor import (
    ExitStatus,
    IInstanceHandle,
    IInstanceRunner,
    InstanceProcess,
    LineBuffer,
    launcherArgv,
)
from nodepass.settings import Settings

__all__ = ["HostPool", "HostProcess", "HostedInstance"]

log = Logger()

#: Seconds between heartbeats, and how long an answer may take before the host is replaced.
HEARTBEAT: Final = 1.0
HEARTBEAT_TIMEOUT: Final = 2.0

#: Host deaths within this many seconds count as "in a row" for the respawn delay.
DEATH_WINDOW: Final = 60.0
FIRST_RESPAWN_DELAY: Final = 0.5
MAX_RESPAWN_DELAY: Final = 30.0

#: An instance on this many dying hosts within the window is moved to a process of its own.
SUSPECT_DEATHS: Final = 3
SUSPECT_WINDOW: Final = 300.0

#: A host asked to stop (its channel closed) gets this long before SIGKILL.
HOST_STOP_GRACE: Final = 2.0

#: What enables the hosts' test-only hook (SIGUSR1 blocks a host's reactor).
TEST_HOOKS_VARIABLE: Final = "NP_HOST_TEST_HOOKS"


def _cancel(result: object, call: IDelayedCall) -> object:
    if call.active():
        call.cancel()
    return result


class _MasterAMP(amp.AMP):
    """
    The master's side of one host's channel: routes reports to the instances.
    """

    def __init__(self, host: HostProcess) -> None:
        super().__init__()
        self._host = host

    @InstanceLines.responder
    def instanceLines(self, id: str, lines: list[str]) -> dict[str, Any]:
        handle = self._host.instances.get(id)
        if handle is not None:
            for line in lines:
                handle.process.feedLine(line)
        return {}

    @InstanceExited.responder
    def instanceExited(self, id: str, code: int | None, signal: int | None) -> dict[str, Any]:
        handle = self._host.instances.pop(id, None)
        if handle is not None:
            handle.end(ExitStatus(code, signal))
        return {}

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self._host.channelLost()


@implementer(IInstanceHandle)
class HostedInstance:
    """
    One instance on a host (or waiting for one).
    """

    def __init__(self, instanceId: str, url: str, process: InstanceProcess) -> None:
        self.instanceId = instanceId
        self.url = url
        self.process = process
        self.host: HostProcess | None = None
        self.ended = False

    @property
    def pid(self) -> int | None:
        return self.host.pid if self.host is not None else None

    def terminate(self) -> None:
        self._stop(force=False)

    def kill(self) -> None:
        self._stop(force=True)

    def connections(self) -> Deferred[list[dict[str, Any]]]:
        """
        The instance's open connections, every page of them (see L{ListConnections}).
        """

        def ask(start: int) -> Deferred[Any]:
            if self.host is None or self.ended:
                return succeed(None)  # the host went away: no connections left
            return self.host.call(ListConnections, id=self.instanceId, start=start)

        return Deferred.fromCoroutine(allConnections(ask))

    def closeConnection(self, connection: str) -> Deferred[bool]:
        if self.host is None or self.ended:
            return succeed(False)
        d = self.host.call(CloseConnection, id=self.instanceId, connection=connection)
        return d.addCallback(lambda answer: bool(answer and answer["closed"]))

    def resetCounters(self) -> Deferred[Mapping[str, int] | None]:
        if self.host is None or self.ended:
            return succeed(None)
        d: Deferred[Mapping[str, int] | None] = self.host.call(ResetCounters, id=self.instanceId)
        return d

    def _stop(self, force: bool) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        if self.host is None:
            # Still waiting for a host: it never ran.
            self.end(ExitStatus(None, 9) if force else ExitStatus(0, None))
            return
        self.host.call(StopInstance, id=self.instanceId, force=force)

    def end(self, status: ExitStatus) -> None:
        if not self.ended:
            self.ended = True
            self.process.ended(status)


class HostProcess(ProcessProtocol):
    """
    One instance host process and its AMP channel.
    """

    def __init__(self, pool: HostPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.instances: dict[str, HostedInstance] = {}
        self.amp = _MasterAMP(self)
        self.pid: int | None = None
        self.dead = False
        self.pingSent: float | None = None
        self._output = {1: LineBuffer(), 2: LineBuffer()}
        self.whenEnded: Deferred[None] = Deferred()

    # -- process events ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        self.transport.closeStdin()
        self.amp.makeConnection(ChildPipe(self.transport, "instance-host"))  # type: ignore[arg-type]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == REPORT_FD:
            self.amp.dataReceived(data)
            return
        buffer = self._output.get(childFD)
        if buffer is not None:
            for line in buffer.feed(data):
                self._hostLine(line)

    def _hostLine(self, raw: bytes) -> None:
        log.info(
            "Instance host {number}: {line}",
            number=self.number,
            line=raw.decode("utf-8", "replace"),
        )

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == REPORT_FD:
            self.amp.connectionLost(Failure(ConnectionDone()))

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]
        for buffer in self._output.values():
            for line in buffer.flush():
                self._hostLine(line)
        self.died(f"exited ({reason.getErrorMessage()})")
        if not self.whenEnded.called:
            self.whenEnded.callback(None)

    def channelLost(self) -> None:
        if not self.dead:
            self.died("closed its channel")
            self.kill()

    # -- commands ------------------------------------------------------------------------------

    def call(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        if self.dead:
            return succeed(None)
        d: Deferred[Any] = self.amp.callRemote(command, **arguments)
        # A lost channel is the host's death, handled there.
        d.addErrback(lambda f: None)
        return d

    def start(self, handle: HostedInstance, settings: str) -> None:
        self.instances[handle.instanceId] = handle
        handle.host = self
        self.call(StartInstance, id=handle.instanceId, url=handle.url, settings=settings)

    def ping(self, now: float) -> None:
        if self.dead or self.pingSent is not None:
            return
        self.pingSent = now

        def answered(_: Any) -> None:
            self.pingSent = None

        self.amp.callRemote(Ping).addCallbacks(answered, lambda f: None)

    def kill(self) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            self.pool.killGroup(transport)
        except ProcessExitedAlready:
            pass

    def died(self, why: str) -> None:
        if self.dead:
            return
        self.dead = True
        self.pool.hostDied(self, why)


@implementer(IInstanceRunner)
class HostPool(Service):
    """
    Runs instances in up to C{count} instance hosts.

    @param reactor: provides process spawning and time.
    @param environ: the hosts' environment (the master's).
    @param settings: the C{NP_*} tunables, handed to every instance.
    @param count: the most hosts at a time.
    @param isolated: where an instance goes once it is suspected of killing its hosts.
    @param command: the host program (tests may replace it).
    @param killGroup: SIGKILLs a host's process group, given its transport (tests replace it).
    """

    name = "hosts"

    def __init__(
        self,
        reactor: Any,
        environ: Mapping[str, str],
        settings: Settings,
        count: int,
        isolated: IInstanceRunner | None = None,
        command: list[str] | None = None,
        killGroup: Callable[[Any], None] | None = None,
    ) -> None:
        self.reactor = reactor
        if killGroup is not None:
            self.killGroup = killGroup  # type: ignore[method-assign,assignment]
        self.environ = dict(environ)
        self.settings = settings
        self.settingsJSON = settingsToJSON(settings)
        self.count = count
        if isolated is None:
            isolated = ControlledRunner(reactor, environ)
        self.isolated = isolated
        testHooks = self.environ.get(TEST_HOOKS_VARIABLE, "") not in ("", "0")
        self.command = command or [sys.executable, "-m", "nodepass.master.host"] + (
            ["--test-hooks"] if testHooks else []
        )
        self.hosts: list[HostProcess] = []
        self.waiting: list[HostedInstance] = []
        self.suspects: set[str] = set()
        self._numbers = 0
        self._deaths: deque[float] = deque()
        self._instanceDeaths: dict[str, deque[float]] = {}
        self._respawn: IDelayedCall | None = None
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor
        self._closing = False

    @property
    def runner(self) -> IInstanceRunner:
        return self

    def health(self) -> dict[str, Any]:
        """
        Counts for the master's health check: live hosts, the limit, hosted instances,
        instances waiting for a host, and whether a dead host is about to be replaced.
        """
        live = self._live()
        return {
            "alive": len(live),
            "limit": self.count,
            "instances": sum(len(host.instances) for host in live),
            "waiting": len(self.waiting),
            "replacing": self._respawn is not None and self._respawn.active(),
        }

    # -- service -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._heartbeat.start(HEARTBEAT, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Close every host's channel (a host then stops what it still runs and exits), SIGKILL
        those still there after L{HOST_STOP_GRACE}; fires when all are reaped.
        """
        super().stopService()
        self._closing = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._respawn is not None and self._respawn.active():
            self._respawn.cancel()
        for handle in self.waiting:
            handle.end(ExitStatus(0, None))
        self.waiting.clear()
        ends = []
        for host in list(self.hosts):
            ends.append(host.whenEnded)
            if host.transport is not None:
                host.amp.transport.loseConnection()  # type: ignore[union-attr]
            killer = self.reactor.callLater(HOST_STOP_GRACE, host.kill)
            host.whenEnded.addBoth(_cancel, killer)
        return gatherResults(ends, consumeErrors=True).addCallback(lambda _: None)

    # -- IInstanceRunner -----------------------------------------------------------------------

    def launch(
        self, instanceId: str, url: str, env: Mapping[str, str] | None, process: InstanceProcess
    ) -> IInstanceHandle:
        if self._closing:
            raise RuntimeError("the instance hosts are stopping")
        if instanceId in self.suspects:
            return self.isolated.launch(instanceId, url, env, process)
        handle = HostedInstance(instanceId, url, process)
        host = self._place()
        if host is None:
            self.waiting.append(handle)
        else:
            host.start(handle, self.settingsJSON)
        return handle

    # -- placement -----------------------------------------------------------------------------

    def _live(self) -> list[HostProcess]:
        return [host for host in self.hosts if not host.dead]

    def _place(self) -> HostProcess | None:
        live = self._live()
        if len(live) < self.count and (not live or min(len(h.instances) for h in live) > 0):
            fresh = self._spawn()
            if fresh is not None:
                return fresh
        if not live:
            return None
        return min(live, key=lambda host: len(host.instances))

    def _spawn(self) -> HostProcess | None:
        if self._respawn is not None and self._respawn.active():
            return None  # waiting out the backoff after deaths in a row
        self._numbers += 1
        host = HostProcess(self, self._numbers)
        argv = launcherArgv(self.command)
        try:
            self.reactor.spawnProcess(
                host,
                argv[0],
                argv,
                env=self.environ,
                path=None,
                childFDs={0: "w", 1: "r", 2: "r", COMMAND_FD: "w", REPORT_FD: "r"},
            )
        except Exception:
            log.failure("Cannot start an instance host")
            return None
        self.hosts.append(host)
        log.info("Instance host {number} started pid={pid}", number=host.number, pid=host.pid)
        return host

    def killGroup(self, transport: Any) -> None:
        pid = transport.pid
        if pid is None:
            raise ProcessExitedAlready()
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            transport.signalProcess("KILL")

    # -- faults --------------------------------------------------------------------------------

    def _beat(self) -> None:
        now = self.reactor.seconds()
        for host in self._live():
            if host.pingSent is not None and now - host.pingSent > HEARTBEAT_TIMEOUT:
                log.error(
                    "Instance host {number} stopped answering for {seconds:.1f}s: replacing it",
                    number=host.number,
                    seconds=now - host.pingSent,
                )
                host.died("stopped answering")
                host.kill()
            else:
                host.ping(now)

    def hostDied(self, host: HostProcess, why: str) -> None:
        now = self.reactor.seconds()
        if host in self.hosts:
            self.hosts.remove(host)
        victims = list(host.instances.values())
        host.instances.clear()
        if self._closing:
            for handle in victims:
                handle.end(ExitStatus(0, None))
            return
        log.error(
            "Instance host {number} lost ({why}) with {count} instances",
            number=host.number,
            why=why,
            count=len(victims),
        )
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > DEATH_WINDOW:
            self._deaths.popleft()
        for handle in victims:
            deaths = self._instanceDeaths.setdefault(handle.instanceId, deque())
            deaths.append(now)
            while deaths and now - deaths[0] > SUSPECT_WINDOW:
                deaths.popleft()
            if len(deaths) >= SUSPECT_DEATHS and handle.instanceId not in self.suspects:
                self.suspects.add(handle.instanceId)
                log.warn(
                    "Instance [{id}] was on {count} instance hosts that died: it runs in a"
                    " process of its own from now on",
                    id=handle.instanceId,
                    count=len(deaths),
                )
        if len(self._deaths) > 1 and (self._respawn is None or not self._respawn.active()):
            delay = min(MAX_RESPAWN_DELAY, FIRST_RESPAWN_DELAY * 2 ** (len(self._deaths) - 2))
            log.warn("Instance hosts keep dying: the next starts in {delay:.1f}s", delay=delay)
            self._respawn = self.reactor.callLater(delay, self._placeWaiting)
        for handle in victims:
            handle.end(ExitStatus(None, None, hostLost=True))

    def _placeWaiting(self) -> None:
        waiting, self.waiting = self.waiting, []
        for handle in waiting:
            if handle.ended:
                continue
            host = self._place()
            if host is None:
                self.waiting.append(handle)
            else:
                host.start(handle, self.settingsJSON)
