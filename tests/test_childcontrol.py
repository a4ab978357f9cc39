"""
The control channel of an isolated instance, without processes: the master's runner and
protocol against the child's responders, wired in memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport

from nodepass.master.childcontrol import ControlledRunner
from nodepass.master.childside import CONTROL_VARIABLE, _InstanceControl, serveChild
from nodepass.master.supervisor import InstanceProcess
from tests.test_hosts import ListedRoot


class SpawningReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, protocol: Any, executable: Any, args: Any = (), **kwargs: Any) -> Any:
        class Process(StringTransport):
            pid = 4242

            def __init__(self) -> None:
                super().__init__()
                self.written: dict[int, bytes] = {}

            def writeToChild(self, fd: int, data: bytes) -> None:
                self.written[fd] = self.written.get(fd, b"") + data

            def closeStdin(self) -> None:
                pass

            def closeChildFD(self, fd: int) -> None:
                pass

        transport = Process()
        self.spawned.append({"protocol": protocol, "args": args, **kwargs, "transport": transport})
        protocol.makeConnection(transport)
        return transport


def test_runnerGivesTheChildItsChannel() -> None:
    reactor = SpawningReactor()
    lines: list[str] = []
    process = InstanceProcess(lambda c: None, lambda line: None, lines.append)
    runner = ControlledRunner(reactor, {"PATH": "/bin"})
    handle = runner.launch("a1", "client://127.0.0.1:1/127.0.0.1:2?mode=1", None, process)
    (spawn,) = reactor.spawned
    assert spawn["env"][CONTROL_VARIABLE] == "3,4"
    assert spawn["childFDs"] == {0: "w", 1: "r", 2: "r", 3: "w", 4: "r"}
    # Output still goes to the supervisor's process protocol.
    spawn["protocol"].childDataReceived(1, b"hello\n")
    assert lines == ["hello"]
    # A command written to fd 3 reaches a child's responder; its answer on fd 4 comes back.
    root = ListedRoot(3)
    child = _InstanceControl(root)
    childSide = StringTransport()
    child.makeConnection(childSide)
    found: list[Any] = []
    handle.connections().addBoth(found.append)  # type: ignore[attr-defined]
    child.dataReceived(spawn["transport"].written.pop(3))
    spawn["protocol"].childDataReceived(4, childSide.value())
    assert found == [root.entries]
    # The child's end: nothing more can be asked, and the answer is "none".
    spawn["protocol"].childConnectionLost(4)
    again: list[Any] = []
    handle.connections().addBoth(again.append)  # type: ignore[attr-defined]
    assert again == [[]]


def test_serveChildNeedsTheVariable() -> None:
    assert serveChild(ListedRoot(0), MemoryReactorClock(), {}) is False
    assert serveChild(ListedRoot(0), MemoryReactorClock(), {CONTROL_VARIABLE: "x"}) is False
