"""
Instance hosts in memory: the AMP protocol both ways, placement, and what a host's death or
silence does (no processes, no sockets: L{tests.fakes}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.error import CannotListenError

from nodepass.master.host import HostProtocol, settingsFromJSON, settingsToJSON
from nodepass.master.hostproto import (
    InstanceExited,
    InstanceLines,
    Ping,
    ResetCounters,
    StartInstance,
    StopInstance,
)
from nodepass.master.hosts import (
    HEARTBEAT,
    HEARTBEAT_TIMEOUT,
    SUSPECT_DEATHS,
    HostPool,
)
from nodepass.master.supervisor import (
    Checkpoint,
    Event,
    ExitStatus,
    InstanceProcess,
    Status,
    Supervisor,
)
from nodepass.settings import Settings
from tests.fakes import HostReactor, InstanceReactor, Pump

FORWARD = "client://127.0.0.1:18080/127.0.0.1:18081?mode=1&log=info"


# -- the host's side, driven by a fake master ----------------------------------------------------


class FakeMaster:
    """
    A master's AMP peer for one L{HostProtocol}: records every report.
    """

    def __init__(self, reactor: Any = None) -> None:
        from twisted.protocols import amp

        self.pump = Pump()
        self.reactor = reactor if reactor is not None else InstanceReactor()
        self.host = HostProtocol(self.reactor)
        self.lines: list[tuple[str, str]] = []
        self.exits: list[tuple[str, int | None, int | None]] = []
        master = self

        class Side(amp.AMP):
            @InstanceLines.responder
            def lines(self, id: str, lines: list[str]) -> dict[str, Any]:
                master.lines.extend((id, line) for line in lines)
                return {}

            @InstanceExited.responder
            def exited(self, id: str, code: int | None, signal: int | None) -> dict[str, Any]:
                master.exits.append((id, code, signal))
                return {}

        self.side = Side()

        class Wire:
            disconnecting = False

            def __init__(self, deliver: Any) -> None:
                self.deliver = deliver

            def write(self, data: bytes) -> None:
                master.pump.put(self.deliver, data)

            def writeSequence(self, data: list[bytes]) -> None:
                self.write(b"".join(data))

            def loseConnection(self) -> None:
                pass

            def getPeer(self) -> str:
                return "peer"

            def getHost(self) -> str:
                return "here"

        self.host.makeConnection(Wire(self.side.dataReceived))  # type: ignore[arg-type]
        self.side.makeConnection(Wire(self.host.dataReceived))  # type: ignore[arg-type]

    def call(self, command: Any, **arguments: Any) -> Any:
        results: list[Any] = []
        self.side.callRemote(command, **arguments).addBoth(results.append)
        self.pump.flush()
        assert results, "no answer"
        return results[0]

    def linesOf(self, id: str) -> list[str]:
        return [line for who, line in self.lines if who == id]


def start(master: FakeMaster, id: str = "a1", url: str = FORWARD) -> Any:
    return master.call(StartInstance, id=id, url=url, settings=settingsToJSON(Settings()))


def test_settingsTravelWhole() -> None:
    """
    The master's settings reach the host unchanged; unknown names are ignored.
    """
    settings = Settings(reportInterval=2.0, shutdownTimeout=7.0, semaphoreLimit=10)
    assert settingsFromJSON(settingsToJSON(settings)) == settings
    text = json.dumps({"reportInterval": 3.0, "fromAFutureMaster": 1})
    assert settingsFromJSON(text) == Settings(reportInterval=3.0)


def test_startBindsAndReportsTheInstanceLines() -> None:
    """
    StartInstance builds the instance's tree on the host's reactor, binds it, and sends the
    lines a child would print, tagged with the instance id.
    """
    master = FakeMaster()
    assert start(master) == {"started": True}
    ports = [port for port, *_ in master.reactor.tcpServers]
    assert ports == [18080]
    lines = master.linesOf("a1")
    assert any("  INFO  Client started: client://" in line for line in lines), lines
    assert all("\x1b[" not in line for line in lines)
    assert master.call(Ping) == {"instances": 1}


def test_checkpointLinesCarryTheCounters() -> None:
    """
    The instance's CHECK_POINT line arrives as text the supervisor parses, with the figures
    of that instance's own counters; ResetCounters zeroes them.
    """
    from nodepass.stats import parseCheckpoint

    master = FakeMaster()
    start(master)
    slot = master.host.slots["a1"]
    slot.root.counters.tcprx = 1234
    master.reactor.advance(Settings().reportInterval)
    master.pump.flush()
    points = [parseCheckpoint(line) for line in master.linesOf("a1")]
    found = [p for p in points if p is not None]
    assert found and found[-1].tcprx == 1234
    raw = master.call(ResetCounters, id="a1")
    assert raw == {"tcprx": 1234, "tcptx": 0, "udprx": 0, "udptx": 0}
    assert slot.root.counters.tcprx == 0
    assert master.call(ResetCounters, id="gone") == dict.fromkeys(raw, 0)


def test_twoInstancesLogApart() -> None:
    """
    Lines of one instance never carry another's id.
    """
    master = FakeMaster()
    start(master, "one", "client://127.0.0.1:18090/127.0.0.1:1?mode=1")
    start(master, "two", "client://127.0.0.1:18091/127.0.0.1:1?mode=1")
    one, two = master.linesOf("one"), master.linesOf("two")
    assert any(":18090" in line for line in one) and not any(":18091" in line for line in one)
    assert any(":18091" in line for line in two) and not any(":18090" in line for line in two)


class RefusingReactor(InstanceReactor):
    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


def test_failedBindIsThatInstanceAlone() -> None:
    """
    A bind that fails ends that instance with status 1 after its error lines (the marker
    the supervisor looks for, and the "Error:" line); the host keeps serving.
    """
    master = FakeMaster(RefusingReactor())
    assert start(master) == {"started": False}
    lines = master.linesOf("a1")
    assert any("Client error: cannot listen on 127.0.0.1:18080" in line for line in lines)
    assert any(line.startswith("Error: cannot listen on 127.0.0.1:18080") for line in lines)
    assert master.exits == [("a1", 1, None)]
    assert master.call(Ping) == {"instances": 0}


def test_badURLIsThatInstanceAlone() -> None:
    master = FakeMaster()
    assert start(master, "bad", "client://") == {"started": False}
    assert master.exits == [("bad", 1, None)]
    assert any(line.startswith("Error: ") for line in master.linesOf("bad"))
    assert start(master, "good") == {"started": True}


def test_stopIsGracefulAndForceIsImmediate() -> None:
    master = FakeMaster()
    start(master, "a")
    start(master, "b", "client://127.0.0.1:18082/127.0.0.1:1?mode=1")
    master.call(StopInstance, id="a", force=False)
    master.pump.flush()
    assert ("a", 0, None) in master.exits
    master.call(StopInstance, id="b", force=True)
    assert ("b", None, 9) in master.exits
    assert master.call(Ping) == {"instances": 0}


# -- the master's side: HostPool over fake host processes -----------------------------------------


class Reports:
    """
    An InstanceProcess per launch, with what it heard.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.checkpoints: list[Checkpoint] = []
        self.errors: list[str] = []

    def process(self) -> InstanceProcess:
        return InstanceProcess(self.checkpoints.append, self.errors.append, self.lines.append)


def pool(count: int = 2) -> tuple[HostReactor, HostPool]:
    reactor = HostReactor()
    hosts = HostPool(reactor, {}, Settings(), count, killGroup=reactor.killGroup)
    hosts.startService()
    return reactor, hosts


def test_hostsStartLazilyAndTakeTheLeastLoaded() -> None:
    """
    No host before the first instance; then up to C{count}, each new instance on the host
    with the fewest; the hosts are started through the launcher with the AMP descriptors.
    """
    reactor, hosts = pool(2)
    assert reactor.spawned == []
    handles = []
    for n in range(5):
        handles.append(
            hosts.launch(
                f"i{n}",
                f"client://127.0.0.1:{18100 + n}/127.0.0.1:1?mode=1",
                None,
                Reports().process(),
            )
        )
    reactor.pump.flush()
    assert len(reactor.spawned) == 2
    sizes = sorted(len(host.instances) for host in hosts.hosts)
    assert sizes == [2, 3]
    fake = reactor.spawned[0]
    assert fake.argv[1:3] == ["-m", "nodepass.master.launch"]
    assert fake.argv[-2:] == ["-m", "nodepass.master.host"]
    assert fake.childFDs[3] == "w" and fake.childFDs[4] == "r"
    assert all(h.pid == fake.pid for h in handles if h.host is hosts.hosts[0])


def test_linesAndExitsReachTheInstanceProcess() -> None:
    reactor, hosts = pool(1)
    reports = Reports()
    process = reports.process()
    handle = hosts.launch("x", FORWARD, None, process)
    reactor.pump.flush()
    assert any("Client started" in line for line in reports.lines)
    reactor.spawned[0].hostReactor.advance(Settings().reportInterval)
    reactor.pump.flush()
    assert reports.checkpoints
    ended: list[ExitStatus] = []
    process.whenEnded().addCallback(ended.append)
    handle.terminate()
    reactor.pump.flush()
    assert ended == [ExitStatus(0, None)]


def test_hostDeathEndsItsInstancesAsHostLost() -> None:
    """
    A host killed from outside: each of its instances ends with hostLost (not its fault);
    those on the other host are untouched.
    """
    reactor, hosts = pool(2)
    processes = {}
    for n in range(4):
        processes[n] = Reports().process()
        hosts.launch(
            f"i{n}", f"client://127.0.0.1:{18200 + n}/127.0.0.1:1?mode=1", None, processes[n]
        )
    reactor.pump.flush()
    doomed = hosts.hosts[0]
    onDoomed = set(doomed.instances)
    reactor.spawned[0].signalProcess("KILL")
    for n, process in processes.items():
        if f"i{n}" in onDoomed:
            assert process.exitStatus == ExitStatus(None, None, hostLost=True)
        else:
            assert process.exitStatus is None
    assert doomed not in hosts.hosts


def test_silentHostIsKilledAndReplaced() -> None:
    """
    A host whose reactor stops answering the heartbeat for longer than the timeout is
    killed; its instances end as hostLost; the next instance gets a fresh host.
    """
    reactor, hosts = pool(1)
    process = Reports().process()
    hosts.launch("x", FORWARD, None, process)
    reactor.pump.flush()
    fake = reactor.spawned[0]
    fake.blocked = True
    for _ in range(int((HEARTBEAT_TIMEOUT + 2 * HEARTBEAT) / HEARTBEAT) + 1):
        reactor.advance(HEARTBEAT)
        reactor.pump.flush()
    assert fake.signals == ["KILL"]
    assert process.exitStatus == ExitStatus(None, None, hostLost=True)
    hosts.launch("y", FORWARD, None, Reports().process())
    reactor.pump.flush()
    assert len(reactor.spawned) == 2


def test_answeringHostIsKept() -> None:
    reactor, hosts = pool(1)
    hosts.launch("x", FORWARD, None, Reports().process())
    reactor.pump.flush()
    for _ in range(10):
        reactor.advance(HEARTBEAT)
        reactor.pump.flush()
    assert reactor.spawned[0].signals == []


def test_hostsDyingInARowBackOff() -> None:
    """
    The first death is replaced at once; the next ones after a doubling delay, during which
    new instances wait (and then start).
    """
    reactor, hosts = pool(1)
    hosts.launch("a", FORWARD, None, Reports().process())
    reactor.pump.flush()
    reactor.spawned[-1].signalProcess("KILL")
    hosts.launch("a", FORWARD, None, Reports().process())
    reactor.pump.flush()
    assert len(reactor.spawned) == 2  # at once
    reactor.spawned[-1].signalProcess("KILL")
    waiting = Reports()
    handle = hosts.launch("a", FORWARD, None, waiting.process())
    reactor.pump.flush()
    assert len(reactor.spawned) == 2 and handle.host is None
    reactor.advance(0.5)
    reactor.pump.flush()
    assert len(reactor.spawned) == 3 and handle.host is not None
    assert any("Client started" in line for line in waiting.lines)


def test_instanceThatKeepsKillingItsHostIsIsolated() -> None:
    """
    After SUSPECT_DEATHS host deaths with it aboard, an instance goes to the isolated runner.
    """
    launched: list[str] = []

    class Isolated:
        def launch(self, instanceId: str, url: str, env: Any, process: Any) -> Any:
            launched.append(instanceId)
            return object()

    reactor = HostReactor()
    hosts = HostPool(
        reactor,
        {},
        Settings(),
        1,
        isolated=Isolated(),  # type: ignore[arg-type]
        killGroup=reactor.killGroup,
    )
    hosts.startService()
    for _ in range(SUSPECT_DEATHS):
        hosts.launch("bad", FORWARD, None, Reports().process())
        reactor.pump.flush()
        reactor.advance(60)  # past any respawn delay
        reactor.pump.flush()
        reactor.spawned[-1].signalProcess("KILL")
    hosts.launch("bad", FORWARD, None, Reports().process())
    assert launched == ["bad"]


def test_stopClosesTheChannelsAndWaitsForTheHosts() -> None:
    reactor, hosts = pool(2)
    for n in range(2):
        hosts.launch(
            f"i{n}", f"client://127.0.0.1:{18300 + n}/127.0.0.1:1?mode=1", None, Reports().process()
        )
    reactor.pump.flush()
    done: list[Any] = []
    hosts.stopService().addBoth(done.append)
    reactor.pump.flush()
    assert done == [None]
    assert all(fake.ended for fake in reactor.spawned)


# -- the supervisor over hosts -------------------------------------------------------------------


class Observer:
    def __init__(self) -> None:
        self.statuses: list[tuple[str, Status, Event]] = []

    def spawning(self, instanceId: str) -> None:
        pass

    def statusChanged(self, instanceId: str, status: Status, cause: Event) -> None:
        self.statuses.append((instanceId, status, cause))

    def checkpointReceived(self, instanceId: str, checkpoint: Checkpoint) -> None:
        pass

    def lineReceived(self, instanceId: str, line: str) -> None:
        pass


def test_supervisorRestartsInstancesOfALostHostAsStoppedThenRunning() -> None:
    """
    A host's death: each instance on it goes stopped (never error) and running again on a
    fresh host at once; an instance being stopped stays stopped.
    """
    reactor, hosts = pool(1)
    observer = Observer()
    supervisor = Supervisor(reactor, observer, {}, Settings(), runner=hosts)  # type: ignore[arg-type]
    supervisor.start("a", FORWARD)
    reactor.pump.flush()
    assert supervisor.status("a") is Status.RUNNING
    observer.statuses.clear()
    reactor.spawned[0].signalProcess("KILL")
    reactor.pump.flush()
    assert observer.statuses == [
        ("a", Status.STOPPED, Event.HOST_LOST),
        ("a", Status.RUNNING, Event.SPAWNED),
    ]
    assert len(reactor.spawned) == 2
    assert supervisor.pid("a") == reactor.spawned[1].pid


def test_supervisorResetsAHostedInstancesCounters() -> None:
    """
    Supervisor.resetCounters reaches the instance in its host and answers its raw counters
    as they were when zeroed; an instance without a process answers None.
    """
    reactor, hosts = pool(1)
    supervisor = Supervisor(reactor, Observer(), {}, Settings(), runner=hosts)  # type: ignore[arg-type]
    supervisor.start("a", FORWARD)
    reactor.pump.flush()
    counters = reactor.spawned[0].host.slots["a"].root.counters
    counters.tcprx, counters.udptx = 500, 7
    answers: list[Any] = []
    supervisor.resetCounters("a").addBoth(answers.append)
    supervisor.resetCounters("nobody").addBoth(answers.append)
    reactor.pump.flush()
    assert answers == [None, {"tcprx": 500, "tcptx": 0, "udprx": 0, "udptx": 7}]
    assert (counters.tcprx, counters.udptx) == (0, 0)


def test_supervisorStopsAHostedInstance() -> None:
    reactor, hosts = pool(1)
    observer = Observer()
    supervisor = Supervisor(reactor, observer, {}, Settings(), runner=hosts)  # type: ignore[arg-type]
    supervisor.start("a", FORWARD)
    reactor.pump.flush()
    stopped: list[Any] = []
    supervisor.stop("a").addBoth(stopped.append)
    reactor.pump.flush()
    assert stopped == [None]
    assert supervisor.status("a") is Status.STOPPED
    assert observer.statuses[-1] == ("a", Status.STOPPED, Event.EXITED_CLEAN)


class ListedRoot:
    """
    An instance root with open connections (what NodePassService offers the host).
    """

    def __init__(self, count: int) -> None:
        self.entries = [
            {
                "id": f"{n:x}",
                "proto": "tcp",
                "remote": f"127.0.0.1:{40000 + n}",
                "target": "127.0.0.1:18081",
                "rx": n,
                "tx": 2 * n,
                "since": 1765152000.5,
            }
            for n in range(count)
        ]
        self.closed: list[str] = []

    def connections(self) -> list[dict[str, Any]]:
        return list(self.entries)

    def closeConnection(self, connection: str) -> bool:
        found = [e for e in self.entries if e["id"] == connection]
        self.entries = [e for e in self.entries if e["id"] != connection]
        self.closed.append(connection)
        return bool(found)


def test_connectionsTravelInPages() -> None:
    """
    ListConnections answers pages that stay under AMP's value limit; the master's side
    joins them into the whole list, in order.
    """
    from nodepass.master.hostproto import MAX_VALUE, ListConnections

    master = FakeMaster()
    start(master)
    root = ListedRoot(2000)
    master.host.slots["a1"].root = root
    first = master.call(ListConnections, id="a1", start=0)
    assert len(first["page"]) <= MAX_VALUE and 0 < first["next"] < 2000
    assert master.call(ListConnections, id="nobody", start=0) == {"page": "[]", "next": -1}
    reactor, hosts = pool(1)
    supervisor = Supervisor(reactor, Observer(), {}, Settings(), runner=hosts)  # type: ignore[arg-type]
    supervisor.start("a", FORWARD)
    reactor.pump.flush()
    reactor.spawned[0].host.slots["a"].root = root
    found: list[Any] = []
    supervisor.connections("a").addBoth(found.append)
    reactor.pump.flush()
    assert found == [root.entries]
    closed: list[Any] = []
    supervisor.closeConnection("a", "7").addBoth(closed.append)
    supervisor.closeConnection("a", "7").addBoth(closed.append)
    reactor.pump.flush()
    assert closed == [True, False] and root.closed == ["7", "7"]
    assert supervisor.connections("nobody").result == []  # type: ignore[attr-defined]
