"""
In-memory fakes shared by the tests of the instance hosts (no processes, no sockets).

L{HostReactor} is the master's reactor: C{spawnProcess} of an instance host gives the
master's L{nodepass.master.hosts.HostProcess} a L{FakeHostTransport} whose descriptors 3
and 4 are wired, through a L{Pump}, to a real L{nodepass.master.host.HostProtocol} running
on its own L{MemoryReactorClock}.  Killing the fake host ends it as a killed process.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from nodepass.master.host import HostProtocol


class Pump:
    """
    Bytes waiting in both directions between a master and its fake hosts; L{flush} delivers
    them until nothing is left (each delivery may queue answers).
    """

    def __init__(self) -> None:
        self.queue: list[tuple[Any, bytes]] = []

    def put(self, deliver: Any, data: bytes) -> None:
        self.queue.append((deliver, data))

    def flush(self) -> None:
        rounds = 0
        while self.queue:
            rounds += 1
            assert rounds < 100_000, "the pump never drains"
            deliver, data = self.queue.pop(0)
            deliver(data)


class _HostSide:
    """
    The host protocol's transport: what it writes reaches the master's descriptor 4.
    """

    disconnecting = False

    def __init__(self, fake: FakeHostTransport) -> None:
        self._fake = fake

    def write(self, data: bytes) -> None:
        if not self._fake.ended:
            self._fake.pump.put(lambda d: self._fake.toMaster(d), data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True

    def getPeer(self) -> str:
        return "master"

    def getHost(self) -> str:
        return "host"


class FakeHostTransport:
    """
    The master's view of one fake instance host process.
    """

    def __init__(
        self, protocol: Any, pid: int, pump: Pump, argv: list[str], childFDs: dict[int, str]
    ) -> None:
        self.protocol = protocol
        self.pid: int | None = pid
        self.pump = pump
        self.argv = argv
        self.childFDs = childFDs
        self.signals: list[str] = []
        self.ended = False
        self.hostReactor = InstanceReactor()
        self.host = HostProtocol(self.hostReactor, onLost=lambda: self.exit(ProcessDone(0)))
        #: While True, the host reads nothing (a blocked reactor).
        self.blocked = False
        self._held: list[bytes] = []
        self.host.makeConnection(_HostSide(self))  # type: ignore[arg-type]

    def toMaster(self, data: bytes) -> None:
        if not self.ended:
            self.protocol.childDataReceived(4, data)

    def _toHost(self, data: bytes) -> None:
        if self.ended:
            return
        if self.blocked:
            self._held.append(data)
        else:
            self.host.dataReceived(data)

    def unblock(self) -> None:
        self.blocked = False
        held, self._held = self._held, []
        for data in held:
            self.pump.put(self._toHost, data)

    # IProcessTransport, as far as the master uses it

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == 3, fd
        self.pump.put(self._toHost, data)

    def closeStdin(self) -> None:
        pass

    def closeChildFD(self, fd: int) -> None:
        # The master closed the command channel: the host stops and exits.
        if not self.ended:
            self.pump.put(lambda _: self._hostLost(), b"")

    def _hostLost(self) -> None:
        # The host sees its channel close; it then exits (its onLost).
        if not self.ended:
            self.host.connectionLost(Failure(ProcessDone(0)))

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)
        if name == "KILL" and not self.ended:
            self.exit(ProcessTerminated(signal=9))

    def exit(self, reason: Exception) -> None:
        if self.ended:
            return
        self.ended = True
        self.pid = None
        self.protocol.childConnectionLost(4)
        self.protocol.processEnded(Failure(reason))


class HostReactor(MemoryReactorClock):
    """
    The master's reactor for host tests: time, and instance hosts that live in memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pump = Pump()
        self.spawned: list[FakeHostTransport] = []
        self._pid = 1000

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: Any,
        args: Any = (),
        env: Any = None,
        path: Any = None,
        uid: Any = None,
        gid: Any = None,
        usePTY: Any = False,
        childFDs: Any = None,
    ) -> FakeHostTransport:
        self._pid += 1
        fake = FakeHostTransport(processProtocol, self._pid, self.pump, list(args), childFDs)
        self.spawned.append(fake)
        processProtocol.makeConnection(fake)
        return fake

    def killGroup(self, transport: Any) -> None:
        transport.signalProcess("KILL")


class _UDPPort:
    def __init__(self, reactor: InstanceReactor, port: int, protocol: Any) -> None:
        self._reactor = reactor
        self.port = port
        self.protocol = protocol
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False

    def stopReading(self) -> None:
        pass

    def startReading(self) -> None:
        pass

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", "127.0.0.1", self.port)

    def write(self, data: bytes, addr: Any = None) -> None:
        pass


class InstanceReactor(MemoryReactorClock):
    """
    A memory reactor an instance's whole tree can start on: TCP and UDP listeners are
    recorded (C{tcpServers}, C{udpServers}), nothing is bound.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpServers: list[tuple[int, Any, str, int]] = []

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> _UDPPort:
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        udp = _UDPPort(self, port, protocol)
        protocol.makeConnection(udp)
        return udp


# -- the data plane: UDP sockets, pool connections, target dials ---------------------------


class DatagramSocket:
    """
    A UDP port as the data plane uses it: C{connect}, C{write} (recorded in C{written} with
    the address given), C{stopReading}/C{startReading} (C{reading}), C{stopListening}.
    """

    def __init__(self, port: int = 0, interface: str = "") -> None:
        self.port = port
        self.interface = interface
        self.connectedTo: tuple[str, int] | None = None
        self.written: list[tuple[bytes, Any]] = []
        self.reading = True
        self.listening = True

    def connect(self, host: str, port: int) -> None:
        self.connectedTo = (host, port)

    def write(self, data: bytes, addr: Any = None) -> None:
        self.written.append((data, addr))

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def stopListening(self) -> None:
        self.listening = False

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", "127.0.0.1", self.port)


class DatagramReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose C{listenUDP} connects the protocol to a L{DatagramSocket}
    (all of them in C{sockets}, with the arguments in C{udpServers}).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sockets: list[DatagramSocket] = []
        self.udpServers: list[tuple[int, Any, str, int]] = []

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> DatagramSocket:
        socket = DatagramSocket(port, interface)
        self.sockets.append(socket)
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        protocol.makeConnection(socket)
        return socket


class FakePoolConnection:
    """
    A pool connection as a consumer sees it: C{write} (into C{written}), C{close},
    C{attach}; C{lose} ends it from the far side.
    """

    def __init__(self, ident: str = "1a2b3c4d") -> None:
        self.ident = ident
        self.written: list[bytes] = []
        self.closed = False
        self.consumer: Any = None
        self.halfClose = True
        #: What a transport-reading callback (the peer fingerprint) is given.
        self.transport: Any = ("transport", ident)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def attach(self, consumer: Any) -> None:
        self.consumer = consumer

    def lose(self) -> None:
        self.closed = True
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            consumer.connectionLost()


class FakeTargetDialer:
    """
    A L{nodepass.balance.TargetDialer} stand-in over real L{nodepass.balance.Targets}:
    C{resolve} answers from C{addresses} (host -> IP, an exception to fail) or with the host
    itself; C{connect} connects the protocol to a L{StringTransportWithDisconnection} whose
    peer is C{peer}, or fails with C{failure}.
    """

    def __init__(self, clock: Any, targets: Any, peer: Any = None) -> None:
        from nodepass.balance import Targets

        self.targets = Targets(targets, 0, clock)
        self.addresses: dict[str, Any] = {}
        self.peer = peer
        self.failure: Exception | None = None
        self.connected: list[tuple[Any, Any]] = []
        self.pendingResolve: Any = None

    async def resolve(self, index: int) -> str:
        host = self.targets.targets[index].host
        answer = self.addresses.get(host, host)
        if isinstance(answer, Exception):
            raise answer
        if self.pendingResolve is not None:
            await self.pendingResolve
        return str(answer)

    async def connect(self, protocol: Any) -> tuple[Any, int]:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransportWithDisconnection

        if self.failure is not None:
            raise self.failure
        peer = self.peer or IPv4Address("TCP", "10.0.0.5", 8080)
        transport = StringTransportWithDisconnection(peerAddress=peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.connected.append((protocol, transport))
        return protocol, 0


class FakePool:
    """
    A pool as its users see it: idle L{FakePoolConnection}s by ID in arrival order;
    C{incomingGet} (oldest or newest) and C{outgoingGet} (by ID) answer at once when they
    can, else wait for L{park}; L{expire} fails every waiting request as a timeout would.
    """

    def __init__(self) -> None:
        self.idle: dict[str, FakePoolConnection] = {}
        self.waiting: list[tuple[str | None, Any]] = []

    def park(self, conn: FakePoolConnection) -> None:
        # A request for this very ID first, then any request.
        for wanted in (conn.ident, None):
            for waiter in self.waiting:
                ident, d = waiter
                if ident == wanted:
                    self.waiting.remove(waiter)
                    d.callback(conn)
                    return
        self.idle[conn.ident] = conn

    def incomingGet(self, newest: bool = False) -> Any:
        from twisted.internet.defer import Deferred, succeed

        if self.idle:
            ident = list(self.idle)[-1 if newest else 0]
            return succeed(self.idle.pop(ident))
        d: Deferred[FakePoolConnection] = Deferred()
        self.waiting.append((None, d))
        return d

    def outgoingGet(self, ident: str, timeout: float | None = None) -> Any:
        from twisted.internet.defer import Deferred, succeed

        if ident in self.idle:
            return succeed(self.idle.pop(ident))
        d: Deferred[FakePoolConnection] = Deferred()
        self.waiting.append((ident, d))
        return d

    def expire(self) -> None:
        waiting, self.waiting = self.waiting, []
        for ident, d in waiting:
            what = "incomingGet" if ident is None else f"outgoingGet {ident}"
            d.errback(TimeoutError(f"{what}: no pool connection within 5s"))
