"""
The instance supervisor of master mode (master spec §9, §6.2, §14): line splitting and
parsing, the status state machine, traffic accounting, spawning with the URL in the
environment, TERM then KILL, the liveness monitor, serialisation and shutdown.

Everything but the last test runs on a recording fake process reactor and a Clock (the model
is procmon's DummyProcessReactor); the last one spawns a real ``python -m nodepass``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessProtocol, IProcessTransport, IReactorProcess
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nodepass.master import launch
from nodepass.master.supervisor import (
    MAX_LINE,
    URL_VARIABLE,
    Event,
    ExitStatus,
    InstanceProcess,
    ISupervisorObserver,
    LineBuffer,
    Phase,
    State,
    Status,
    Supervisor,
    Traffic,
    canStart,
    transition,
)
from nodepass.settings import Settings
from nodepass.stats import Checkpoint, parseCheckpoint
from tests.support import LOOPBACK, ROOT, freePort, waitFor

URL = "client://127.0.0.1:10101/127.0.0.1:10102?log=debug"
CHECK = "CHECK_POINT|MODE=1|PING=7ms|POOL=0|TCPS=2|UDPS=3|TCPRX=100|TCPTX=200|UDPRX=300|UDPTX=400"


# -- fakes -------------------------------------------------------------------------------------


@implementer(IProcessTransport)
class FakeProcess:
    """
    A recording process transport: signals are recorded, the test decides when it exits.
    """

    def __init__(self, reactor: FakeReactor, proto: Any, pid: int) -> None:
        self.reactor = reactor
        self.proto = proto
        self.pid: int | None = pid
        self.signals: list[str] = []
        self.stdinClosed = False

    def closeStdin(self) -> None:
        self.stdinClosed = True

    def signalProcess(self, signalID: str | int) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(str(signalID))

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def writeToChild(self, childFD: int, data: bytes) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: Iterable[bytes]) -> None:
        pass

    def getHost(self) -> Any:
        return None

    def getPeer(self) -> Any:
        return None

    def output(self, data: bytes, fd: int = 1) -> None:
        self.proto.childDataReceived(fd, data)

    def exit(self, code: int | None = 0, signal: int | None = None) -> None:
        self.pid = None
        reason: Exception
        if code == 0 and signal is None:
            reason = ProcessDone(0)
        else:
            reason = ProcessTerminated(code, signal)
        self.proto.processEnded(Failure(reason))


@implementer(IReactorProcess)
class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []
        self.processes: list[FakeProcess] = []
        self.spawnError: Exception | None = None

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[Any, Any] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport:
        if self.spawnError is not None:
            raise self.spawnError
        self.spawned.append(
            {
                "executable": executable,
                "args": list(args),
                "env": dict(env) if env is not None else None,
                "path": path,
                "usePTY": usePTY,
                "childFDs": childFDs,
            }
        )
        process = FakeProcess(self, processProtocol, 4000 + len(self.processes))
        self.processes.append(process)
        processProtocol.makeConnection(process)
        return process

    @property
    def last(self) -> FakeProcess:
        return self.processes[-1]


@implementer(ISupervisorObserver)
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def spawning(self, instanceId: str) -> None:
        self.events.append(("spawning", instanceId))

    def statusChanged(self, instanceId: str, status: Status, cause: Event) -> None:
        self.events.append(("status", instanceId, status, cause))

    def checkpointReceived(self, instanceId: str, checkpoint: Checkpoint) -> None:
        self.events.append(("checkpoint", instanceId, checkpoint))

    def lineReceived(self, instanceId: str, line: str) -> None:
        self.events.append(("line", instanceId, line))

    def statuses(self) -> list[Status]:
        return [event[2] for event in self.events if event[0] == "status"]

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [event for event in self.events if event[0] == kind]


def make(
    report: float = 5.0, shutdown: float = 5.0, killGroup: Any = None
) -> tuple[Supervisor, FakeReactor, Recorder]:
    reactor = FakeReactor()
    observer = Recorder()
    supervisor = Supervisor(
        reactor,
        observer,
        environ={"PATH": "/usr/bin", "NP_REPORT_INTERVAL": "5s"},
        settings=Settings(reportInterval=report, shutdownTimeout=shutdown),
        killGroup=killGroup,
    )
    return supervisor, reactor, observer


def fired(d: Deferred[Any]) -> bool:
    results: list[object] = []
    d.addBoth(results.append)
    if results and isinstance(results[0], Failure):
        results[0].raiseException()
    return bool(results)


# -- lines -------------------------------------------------------------------------------------


def test_lineBufferSplitsAcrossChunksAndStripsCarriageReturn() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"hel") == []
    assert buffer.feed(b"lo\r\nwor") == [b"hello"]
    assert buffer.feed(b"ld\n\n") == [b"world", b""]
    assert buffer.flush() == []
    assert buffer.feed(b"tail") == []
    assert buffer.flush() == [b"tail"]


def test_lineBufferCapsLongLines() -> None:
    buffer = LineBuffer()
    lines = buffer.feed(b"x" * (MAX_LINE - 10))
    lines += buffer.feed(b"y" * 5000)
    lines += buffer.feed(b"z" * 100 + b"\nnext\n")
    assert lines[0] == b"x" * (MAX_LINE - 10) + b"y" * 10
    assert len(lines[0]) == MAX_LINE
    assert lines[1] == b"next"


def record() -> tuple[InstanceProcess, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []
    process = InstanceProcess(
        onCheckpoint=lambda c: calls.append(("checkpoint", c)),
        onError=lambda line: calls.append(("error", line)),
        onLine=lambda line: calls.append(("line", line)),
    )
    return process, calls


def test_processKeepsSeparateBuffersPerStream() -> None:
    process, calls = record()
    process.childDataReceived(1, b"out-")
    process.childDataReceived(2, b"err-")
    process.childDataReceived(1, b"one\n")
    process.childDataReceived(2, b"two\r\n")
    assert calls == [("line", "out-one"), ("line", "err-two")]


def test_checkpointWithColourCodesIsParsedAndNotLogged() -> None:
    process, calls = record()
    line = f"\x1b[90m2025-01-02 03:04:05.678\x1b[0m  \x1b[35mEVENT\x1b[0m  {CHECK}\x1b[0m\n"
    process.childDataReceived(2, line.encode())
    assert calls == [("checkpoint", Checkpoint(1, 7, 0, 2, 3, 100, 200, 300, 400))]


def test_checkpointValuesOutOfRangeAreNone() -> None:
    parsed = parseCheckpoint(CHECK.replace("PING=7ms", "PING=99999999999ms"))
    assert parsed is not None
    assert parsed.ping is None
    assert parsed.mode == 1
    assert parseCheckpoint("CHECK_POINT|MODE=1") is None


def test_errorMarkersGoToErrorAndLog() -> None:
    process, calls = record()
    process.childDataReceived(1, b"x ERROR Client error: dial tcp refused\nServer error: y\n")
    assert calls == [
        ("error", "x ERROR Client error: dial tcp refused"),
        ("line", "x ERROR Client error: dial tcp refused"),
        ("error", "Server error: y"),
        ("line", "Server error: y"),
    ]


def test_invalidUTF8IsReplaced() -> None:
    process, calls = record()
    process.childDataReceived(1, b"caf\xc3\xa9 \xff\n")
    assert calls == [("line", "caf\u00e9 \ufffd")]


def test_processEndedFlushesPartialLinesAndFiresWaiters() -> None:
    process, calls = record()
    first = process.whenEnded()
    second = process.whenEnded()
    process.childDataReceived(1, b"no newline")
    process.processEnded(Failure(ProcessTerminated(None, 9)))
    assert calls == [("line", "no newline")]
    assert first.result == ExitStatus(None, 9)  # type: ignore[attr-defined]
    assert second.result == ExitStatus(None, 9)  # type: ignore[attr-defined]
    assert process.whenEnded().result == ExitStatus(None, 9)  # type: ignore[attr-defined]
    assert ExitStatus.fromReason(Failure(ProcessDone(0))).clean


# -- state machine -----------------------------------------------------------------------------


def test_transitions() -> None:
    idle = State()
    assert canStart(idle)
    starting = transition(idle, Event.START)
    assert starting == State(Status.STOPPED, Phase.STARTING)
    assert transition(starting, Event.SPAWN_FAILED) == State(Status.ERROR, Phase.IDLE)
    alive = transition(starting, Event.SPAWNED)
    assert alive == State(Status.RUNNING, Phase.ALIVE)
    assert transition(alive, Event.EXITED_CLEAN) == State(Status.STOPPED, Phase.IDLE)
    assert transition(alive, Event.EXITED_FAILED) == State(Status.ERROR, Phase.IDLE)
    erred = transition(alive, Event.ERROR_LINE)
    assert erred == State(Status.ERROR, Phase.ALIVE)
    assert transition(erred, Event.CHECKPOINT) == alive
    assert transition(erred, Event.EXITED_CLEAN) == State(Status.ERROR, Phase.IDLE)
    assert transition(alive, Event.STALE) == erred
    assert transition(erred, Event.STALE) == erred
    stopping = transition(erred, Event.STOP)
    assert stopping == State(Status.ERROR, Phase.STOPPING)
    assert transition(stopping, Event.ERROR_LINE) == stopping
    assert transition(stopping, Event.CHECKPOINT) == stopping
    assert transition(stopping, Event.EXITED_FAILED) == State(Status.STOPPED, Phase.IDLE)
    # start guard: an error instance without a process does not start (a26)
    failed = State(Status.ERROR, Phase.IDLE)
    assert not canStart(failed)
    assert transition(failed, Event.START) == failed
    assert transition(failed, Event.STOP) == idle


# -- traffic -----------------------------------------------------------------------------------


def cp(tcprx: int, tcptx: int = 0, udprx: int = 0, udptx: int = 0) -> Checkpoint:
    return Checkpoint(0, 0, 0, 0, 0, tcprx, tcptx, udprx, udptx)


def test_trafficAcrossRestartsAndResets() -> None:
    traffic = Traffic.restored(tcprx=1000)
    traffic.spawned()
    traffic.checkpoint(cp(50, 5))
    assert traffic.totals() == {"tcprx": 1050, "tcptx": 5, "udprx": 0, "udptx": 0}
    traffic.reset()
    assert traffic.totals()["tcprx"] == 0
    traffic.checkpoint(cp(80))
    assert traffic.totals()["tcprx"] == 30
    traffic.reset()  # a second reset in the same process (not Go's bug a10)
    traffic.checkpoint(cp(100))
    assert traffic.totals()["tcprx"] == 20
    traffic.checkpoint(cp(7))  # the child's counter went back
    assert traffic.totals()["tcprx"] == 7
    traffic.spawned()  # the offset is cleared at spawn (not Go's bug a11)
    traffic.checkpoint(cp(3))
    assert traffic.totals()["tcprx"] == 10
    traffic.checkpoint(Checkpoint(0, 0, 0, 0, 0, None, None, None, None))
    assert traffic.totals()["tcprx"] == 10


# -- spawning ----------------------------------------------------------------------------------


def test_startSpawnsThroughTheLauncherWithTheURLOnlyInTheEnvironment() -> None:
    supervisor, reactor, observer = make()
    d = supervisor.start("abcd0123", URL, {"NP_EXTRA": "1"})
    assert fired(d)
    [spawn] = reactor.spawned
    assert spawn["executable"] == sys.executable
    assert spawn["args"] == [
        sys.executable,
        "-m",
        "nodepass.master.launch",
        str(os.getpid()),
        sys.executable,
        "-m",
        "nodepass",
    ]
    assert all(URL not in arg and "10101" not in arg for arg in spawn["args"])
    assert spawn["env"] == {
        "PATH": "/usr/bin",
        "NP_REPORT_INTERVAL": "5s",
        "NP_EXTRA": "1",
        URL_VARIABLE: URL,
    }
    assert spawn["usePTY"] is False
    assert reactor.last.stdinClosed
    assert observer.events == [
        ("spawning", "abcd0123"),
        ("status", "abcd0123", Status.RUNNING, Event.SPAWNED),
    ]
    assert supervisor.status("abcd0123") is Status.RUNNING
    assert supervisor.pid("abcd0123") == 4000


def test_startWithoutLauncherRunsTheCommandItself() -> None:
    reactor = FakeReactor()
    supervisor = Supervisor(reactor, Recorder(), {}, command=["/opt/np", "-x"], launcher=False)
    supervisor.start("i", URL)
    assert reactor.spawned[0]["args"] == ["/opt/np", "-x"]
    assert reactor.spawned[0]["executable"] == "/opt/np"


def test_urlArgumentAsksTheLauncherToPassIt() -> None:
    reactor = FakeReactor()
    supervisor = Supervisor(reactor, Recorder(), {}, command=["/opt/np"], urlArgument=True)
    supervisor.start("i", URL)
    [spawn] = reactor.spawned
    assert spawn["args"][-2:] == ["--url-argument", "/opt/np"]
    assert spawn["env"][URL_VARIABLE] == URL  # the launcher moves it to the argument


def test_startGuard() -> None:
    supervisor, reactor, _ = make()
    supervisor.start("i", URL)
    supervisor.start("i", URL)
    assert len(reactor.spawned) == 1


def test_spawnFailureIsAnError() -> None:
    supervisor, reactor, observer = make()
    reactor.spawnError = OSError("no")
    assert fired(supervisor.start("i", URL))
    assert observer.statuses() == [Status.ERROR]
    assert supervisor.status("i") is Status.ERROR
    # an error instance without a process does not start; restart does (PUT, retry)
    reactor.spawnError = None
    supervisor.start("i", URL)
    assert reactor.spawned == []
    supervisor.restart("i", URL)
    assert len(reactor.spawned) == 1
    assert observer.statuses() == [Status.ERROR, Status.STOPPED, Status.RUNNING]


def test_outputReachesTheObserver() -> None:
    supervisor, reactor, observer = make()
    supervisor.start("i", URL)
    reactor.last.output(b"hello\n" + CHECK.encode() + b"\nbad Client error: x\n")
    assert observer.of("line") == [("line", "i", "hello"), ("line", "i", "bad Client error: x")]
    assert len(observer.of("checkpoint")) == 1
    assert observer.statuses() == [Status.RUNNING, Status.ERROR]
    assert observer.of("status")[-1][3] is Event.ERROR_LINE
    # a checkpoint recovers the instance
    reactor.last.output(CHECK.encode() + b"\n", fd=2)
    assert observer.statuses() == [Status.RUNNING, Status.ERROR, Status.RUNNING]


@pytest.mark.parametrize(
    ("code", "sig", "status"),
    [(0, None, Status.STOPPED), (1, None, Status.ERROR), (None, 9, Status.ERROR)],
)
def test_exitWhileRunning(code: int | None, sig: int | None, status: Status) -> None:
    supervisor, reactor, observer = make()
    supervisor.start("i", URL)
    reactor.last.exit(code, sig)
    assert observer.statuses() == [Status.RUNNING, status]
    assert supervisor.pid("i") is None
    assert not reactor.getDelayedCalls()  # the monitor is gone


# -- stopping ----------------------------------------------------------------------------------


def test_stopSendsTermAndNoKillWhenTheChildExitsInTime() -> None:
    supervisor, reactor, observer = make(shutdown=5.0)
    supervisor.start("i", URL)
    process = reactor.last
    d = supervisor.stop("i")
    assert process.signals == ["TERM"]
    reactor.advance(supervisor.gracePeriod - 0.5)
    assert not fired(d)
    process.exit(0)
    assert fired(d)
    reactor.advance(100)
    assert process.signals == ["TERM"]
    assert observer.statuses() == [Status.RUNNING, Status.STOPPED]
    assert not reactor.getDelayedCalls()


def test_stopKillsAfterTheGracePeriod() -> None:
    supervisor, reactor, observer = make(shutdown=5.0)
    supervisor.start("i", URL)
    process = reactor.last
    d = supervisor.stop("i")
    assert supervisor.gracePeriod == 6.0
    reactor.advance(5.9)
    assert process.signals == ["TERM"]
    reactor.advance(0.2)
    assert process.signals == ["TERM", "KILL"]
    assert not fired(d)  # fires when the child is reaped, not when KILL is sent
    process.exit(None, signal.SIGKILL)
    assert fired(d)
    assert observer.statuses() == [Status.RUNNING, Status.STOPPED]


def test_stopHandlesProcessExitedAlready() -> None:
    supervisor, reactor, observer = make()
    supervisor.start("i", URL)
    process = reactor.last
    process.pid = None  # reaped, but processEnded not delivered yet
    d = supervisor.stop("i")
    reactor.advance(supervisor.gracePeriod + 1)
    assert process.signals == []
    process.exit(0)
    assert fired(d)
    assert observer.statuses() == [Status.RUNNING, Status.STOPPED]


def test_stopSignalsTheProcessGroup() -> None:
    calls: list[tuple[int, int]] = []

    def killGroup(pid: int, signum: int) -> None:
        calls.append((pid, signum))
        if len(calls) == 1:
            raise ProcessLookupError()  # no group yet: fall back to the process

    supervisor, reactor, _ = make(killGroup=killGroup)
    supervisor.start("i", URL)
    supervisor.stop("i")
    reactor.advance(supervisor.gracePeriod)
    assert calls == [(4000, signal.SIGTERM), (4000, signal.SIGKILL)]
    assert reactor.last.signals == ["TERM"]


def test_stopWithoutProcess() -> None:
    supervisor, reactor, observer = make()
    assert fired(supervisor.stop("unknown"))
    reactor.spawnError = OSError("no")
    supervisor.start("i", URL)
    assert fired(supervisor.stop("i"))
    assert observer.statuses() == [Status.ERROR, Status.STOPPED]
    assert fired(supervisor.stop("i"))
    assert observer.statuses() == [Status.ERROR, Status.STOPPED]


# -- liveness ----------------------------------------------------------------------------------


def test_noCheckpointYetIsNotStale() -> None:
    supervisor, reactor, observer = make(report=5.0)
    supervisor.start("i", URL)
    reactor.pump([5.0] * 20)
    assert observer.statuses() == [Status.RUNNING]


def test_staleAfterThreeReportIntervalsOnce() -> None:
    supervisor, reactor, observer = make(report=5.0)
    supervisor.start("i", URL)
    reactor.last.output(CHECK.encode() + b"\n")
    reactor.pump([5.0] * 3)  # 15 s: not yet more than 3 x report
    assert observer.statuses() == [Status.RUNNING]
    reactor.advance(5.0)
    assert observer.statuses() == [Status.RUNNING, Status.ERROR]
    assert observer.of("status")[-1][3] is Event.STALE
    reactor.pump([5.0] * 5)
    assert observer.statuses() == [Status.RUNNING, Status.ERROR]  # not re-sent (a12)
    reactor.last.output(CHECK.encode() + b"\n")
    assert observer.statuses() == [Status.RUNNING, Status.ERROR, Status.RUNNING]


def test_lastCheckpointClearedAtRespawn() -> None:
    supervisor, reactor, observer = make(report=5.0)
    supervisor.start("i", URL)
    reactor.last.output(CHECK.encode() + b"\n")
    d = supervisor.stop("i")
    reactor.last.exit(0)
    assert fired(d)
    reactor.advance(60)  # long past the old checkpoint
    supervisor.start("i", URL)
    reactor.pump([5.0] * 10)
    assert observer.statuses() == [Status.RUNNING, Status.STOPPED, Status.RUNNING]


# -- serialisation and shutdown ----------------------------------------------------------------


def test_startWhileStoppingWaitsForTheReap() -> None:
    supervisor, reactor, observer = make()
    supervisor.start("i", URL)
    first = reactor.last
    stopping = supervisor.stop("i")
    starting = supervisor.start("i", URL)
    stopAgain = supervisor.stop("i")
    assert len(reactor.spawned) == 1
    assert not fired(starting)
    first.exit(0)
    assert fired(stopping)
    assert fired(starting)
    assert len(reactor.spawned) == 2
    # the queued stop runs after the start
    assert reactor.last.signals == ["TERM"]
    assert not fired(stopAgain)
    reactor.last.exit(0)
    assert fired(stopAgain)
    assert observer.statuses() == [
        Status.RUNNING,
        Status.STOPPED,
        Status.RUNNING,
        Status.STOPPED,
    ]


def test_twoConcurrentStopsSignalOnce() -> None:
    supervisor, reactor, _ = make()
    supervisor.start("i", URL)
    one, two = supervisor.stop("i"), supervisor.stop("i")
    assert reactor.last.signals == ["TERM"]
    reactor.last.exit(0)
    assert fired(one) and fired(two)
    assert reactor.last.signals == ["TERM"]


def test_removeSilencesTheInstance() -> None:
    supervisor, reactor, observer = make()
    supervisor.start("i", URL)
    d = supervisor.remove("i")
    reactor.last.output(b"last words\n")
    reactor.last.exit(0)
    assert fired(d)
    assert observer.of("line") == [("line", "i", "last words")]
    assert supervisor.status("i") is Status.STOPPED
    assert fired(supervisor.stop("i"))


def test_stopAllWaitsForEveryChildAndRefusesNewStarts() -> None:
    supervisor, reactor, _ = make()
    for name in ("a", "b", "c"):
        supervisor.start(name, URL)
    a, b, c = reactor.processes
    c.exit(1)  # already dead
    d = supervisor.stopAll()
    assert a.signals == ["TERM"] and b.signals == ["TERM"]
    a.exit(0)
    assert not fired(d)
    reactor.advance(supervisor.gracePeriod)
    assert b.signals == ["TERM", "KILL"]
    b.exit(None, 9)
    assert fired(d)
    supervisor.start("d", URL)
    assert len(reactor.spawned) == 3


def alive(pid: int) -> bool:
    """
    The process exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- the launcher ------------------------------------------------------------------------------


def test_launcherRefusesBadArguments() -> None:
    assert launch.main([]) == 2
    assert launch.main(["notapid", "/bin/true"]) == 2
    assert launch.main(["1", "--url-argument"]) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_launcherMovesTheURLToTheLastArgument() -> None:
    program = "import os, sys; print(sys.argv[1:], os.environ.get('NP_INSTANCE_URL'))"
    script = (
        "import os, subprocess, sys\n"
        "subprocess.run([sys.executable, '-m', 'nodepass.master.launch', str(os.getpid()),"
        f" '--url-argument', sys.executable, '-c', {program!r}, 'first'], check=True)\n"
    )
    environ = {**os.environ, URL_VARIABLE: URL, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{['first', URL]!r} None\n"


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_launchedChildDiesWithItsParent() -> None:
    """
    A master killed with SIGKILL leaves no child behind (a21).
    """
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-m', 'nodepass.master.launch',"
            " str(os.getpid()), sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        waitFor(lambda: os.getpgid(child) == child, what="the child's own process group")
        assert alive(child)
    finally:
        parent.kill()
        parent.wait()
    waitFor(lambda: not alive(child), what="the orphan to die")


# -- one real child ----------------------------------------------------------------------------


@implementer(ISupervisorObserver)
class Waiting(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.firstCheckpoint: Deferred[Checkpoint] = Deferred()

    def checkpointReceived(self, instanceId: str, checkpoint: Checkpoint) -> None:
        super().checkpointReceived(instanceId, checkpoint)
        if not self.firstCheckpoint.called:
            self.firstCheckpoint.callback(checkpoint)


@pytest.mark.integration
class RealChildTests(TestCase):
    timeout = 60

    async def test_realChildReportsAndStops(self) -> None:
        from twisted.internet import reactor

        environ = dict(os.environ)
        environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
        environ["NP_REPORT_INTERVAL"] = "1s"
        observer = Waiting()
        supervisor = Supervisor(
            reactor,  # type: ignore[arg-type]
            observer,
            environ,
            settings=Settings(reportInterval=1.0, shutdownTimeout=5.0),
        )
        listen, target = freePort(), freePort()
        url = f"client://{LOOPBACK}:{listen}/{LOOPBACK}:{target}"
        await supervisor.start("real0001", url)
        self.addCleanup(supervisor.stopAll)
        pid = supervisor.pid("real0001")
        assert pid is not None
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            assert str(listen).encode() not in cmdline.read()
        checkpoint = await observer.firstCheckpoint.addTimeout(20, reactor)  # type: ignore[arg-type]
        assert checkpoint.mode == 1
        assert checkpoint.pool == 0
        assert os.getpgid(pid) == pid  # its own process group
        await supervisor.stop("real0001")
        assert supervisor.pid("real0001") is None
        assert not alive(pid)
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing is left in its group
        assert observer.statuses()[-1] is Status.STOPPED
        assert Status.ERROR not in observer.statuses()
