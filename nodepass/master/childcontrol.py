"""A control channel to an instance that runs in a process of its own (``NP_ISOLATE=1``).

An instance host answers the master's AMP commands for many instances; an isolated child is
an instance host of one, for the commands that reach inside an instance: its open
connections (L{ListConnections}, L{CloseConnection}).  The child gets the channel on its
descriptors 3 (commands in) and 4 (answers out), as a host does, and learns it from
C{NP_CONTROL_FDS=3,4} in its environment (L{nodepass.master.childside.serveChild}, called
by the CLI).  Its output
and exit status still travel as they always did (stdout, stderr, the exit code), so
everything else about an isolated instance is unchanged.

A foreign core (C{NP_CORE_BIN}) has no such channel: its runner stays
L{nodepass.master.supervisor.ProcessRunner}, and asking for its connections answers 501.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass.master.childside import ANSWER_FD, COMMAND_FD, CONTROL_VARIABLE
from nodepass.master.hostproto import CloseConnection, ListConnections, allConnections
from nodepass.master.supervisor import (
    ChildHandle,
    IInstanceHandle,
    IInstanceRunner,
    InstanceProcess,
    ProcessRunner,
)

__all__ = ["ChildPipe", "ControlledRunner"]


class ChildPipe:
    """
    The master's side of an AMP channel to a child (an instance host, or an isolated
    instance): writes go to the child's descriptor 3, closing closes it.
    """

    disconnecting = False

    def __init__(self, transport: IProcessTransport, peer: str) -> None:
        self._transport = transport
        self._peer = peer

    def write(self, data: bytes) -> None:
        self._transport.writeToChild(COMMAND_FD, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        try:
            self._transport.closeChildFD(COMMAND_FD)
        except OSError:
            pass

    def getPeer(self) -> str:
        return self._peer

    def getHost(self) -> str:
        return "master"


class _ControlledProcess(ProcessProtocol):
    """
    The child's process protocol: its output and its end go to the supervisor's
    L{InstanceProcess} as before; descriptor 4 feeds the control channel.
    """

    def __init__(self, process: InstanceProcess) -> None:
        self.process = process
        self.amp = amp.AMP()
        self.open = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.process.makeConnection(transport)
        self.amp.makeConnection(ChildPipe(transport, "isolated-instance"))  # type: ignore[arg-type]
        self.open = True

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == ANSWER_FD:
            self.amp.dataReceived(data)
        else:
            self.process.childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == ANSWER_FD:
            self._closed()
        else:
            self.process.childConnectionLost(childFD)

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]
        self._closed()
        self.process.processEnded(reason)

    def _closed(self) -> None:
        if self.open:
            self.open = False
            self.amp.connectionLost(Failure(ConnectionDone()))


@implementer(IInstanceHandle)
class _ControlledHandle(ChildHandle):
    def __init__(self, transport: IProcessTransport, killGroup: Any, child: _ControlledProcess):
        super().__init__(transport, killGroup)
        self._child = child

    def _call(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        if not self._child.open:
            return succeed(None)
        d: Deferred[Any] = self._child.amp.callRemote(command, **arguments)
        return d.addErrback(lambda _: None)  # the child went away: it has no connections

    def connections(self) -> Deferred[list[dict[str, Any]]]:
        return Deferred.fromCoroutine(
            allConnections(lambda start: self._call(ListConnections, id="", start=start))
        )

    def closeConnection(self, connection: str) -> Deferred[bool]:
        d = self._call(CloseConnection, id="", connection=connection)
        return d.addCallback(lambda answer: bool(answer and answer["closed"]))


@implementer(IInstanceRunner)
class ControlledRunner(ProcessRunner):
    """
    L{ProcessRunner} for our own core, with the control channel on the child's fds 3 and 4.
    """

    def launch(
        self, instanceId: str, url: str, env: Mapping[str, str] | None, process: InstanceProcess
    ) -> IInstanceHandle:
        argv = self._argv()
        environment = self._environment(url, env)
        environment[CONTROL_VARIABLE] = f"{COMMAND_FD},{ANSWER_FD}"
        child = _ControlledProcess(process)
        transport = self._reactor.spawnProcess(
            child,
            argv[0],
            argv,
            env=environment,
            path=None,
            usePTY=False,
            childFDs={0: "w", 1: "r", 2: "r", COMMAND_FD: "w", ANSWER_FD: "r"},
        )
        return _ControlledHandle(transport, self._killGroup, child)
