"""An instance host: ``python -m nodepass.master.host [--test-hooks]``.

A master starts a few of these (one per CPU core by default) through
L{nodepass.master.launch}, so each is in its own process group and dies with the master.
A host runs many instances on one reactor; each is the service tree of L{buildService},
with its own settings, logger, counters and TLS material, exactly what a standalone
C{nodepass URL} runs.  The host reads AMP commands (L{nodepass.master.hostproto}) on
descriptor 3 and writes on descriptor 4; its own stdout and stderr carry only the host's
messages (Twisted's, or an error that no instance owns).

An instance's output reaches the master as the lines a child process would print: the
same format, level and colour rules (none: not a terminal), C{Error: ... [pid]} when its
start fails.  One instance's bad URL, failed bind or exception affects that instance only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from attrs import fields
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from nodepass.errors import StartupError, URLError
from nodepass.log import NodePassLogObserver
from nodepass.master.hostproto import (
    MAX_VALUE,
    CloseConnection,
    InstanceExited,
    InstanceLines,
    ListConnections,
    Ping,
    ResetCounters,
    StartInstance,
    StopInstance,
    connectionsPage,
)
from nodepass.settings import Settings

__all__ = ["HostProtocol", "main"]

log = Logger()

#: Where the host reads commands and writes reports (set up by the master's spawn).
COMMAND_FD = 3
REPORT_FD = 4

#: SIGKILL's number: the status of an instance stopped with C{force}, as a killed child's.
KILLED = 9

#: The AMP error code of a command whose box could not be parsed or handled.
BAD_COMMAND = b"BAD_COMMAND"


def settingsFromJSON(text: str) -> Settings:
    """
    The master's L{Settings}, from L{settingsToJSON}'s text; unknown names are ignored.
    """
    values = json.loads(text) if text else {}
    known = {attribute.name for attribute in fields(Settings)}
    return Settings(**{name: value for name, value in values.items() if name in known})


def settingsToJSON(settings: Settings) -> str:
    return json.dumps({a.name: getattr(settings, a.name) for a in fields(Settings)})


class _Lines:
    """
    The text stream an instance's log observer writes to: whole lines, sent to the master.
    """

    def __init__(self, send: Any, instanceId: str) -> None:
        self._send = send
        self._id = instanceId

    def write(self, text: str) -> None:
        lines = text.splitlines()
        batch: list[str] = []
        size = 0
        for line in lines:
            line = line[:MAX_VALUE]
            if batch and size + len(line) > MAX_VALUE:
                self._send(self._id, batch)
                batch, size = [], 0
            batch.append(line)
            size += len(line) + 8
        if batch:
            self._send(self._id, batch)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _Slot:
    def __init__(self, instanceId: str, root: Any) -> None:
        self.instanceId = instanceId
        self.root = root
        self.ended = False


class HostProtocol(amp.AMP):
    """
    The host's side of the AMP channel: runs the instances the master asks for.

    @param reactor: the host's reactor (everything the instances need).
    @param onLost: called when the master's channel closes.
    """

    def __init__(self, reactor: Any, onLost: Any = None) -> None:
        super().__init__()
        self._reactor = reactor
        self._onLost = onLost
        self.slots: dict[str, _Slot] = {}
        self._gone = False

    # -- robustness against bad boxes ---------------------------------------------------------

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """
        Only commands reach the dispatcher: the host asks nothing that is answered (its
        reports need no answer), so an answer, an error or a box with none of AMP's keys can
        only be a broken master's, and is dropped with a line instead of ending the channel
        (which would end the host and every instance in it).
        """
        if amp.COMMAND not in box:
            log.warn("Instance host: a box that is not a command was ignored")
            return
        super().ampBoxReceived(box)

    def locateResponder(self, name: bytes) -> Any:
        """
        The responder of a command, guarded: a box whose arguments do not parse (missing,
        not UTF-8, not a number) or whose handling fails gets an error answer for that
        command alone.  Unguarded, AMP would answer such a box by closing the channel, which
        ends the host.
        """
        if not name.isascii():
            # No command of ours has such a name (and AMP's lookup would raise on it):
            # answered as an unknown command.
            return None
        responder = super().locateResponder(name)
        if responder is None:
            return None

        def guarded(box: amp.AmpBox) -> Deferred[Any]:
            def failed(failure: Failure) -> Failure:
                if failure.check(amp.RemoteAmpError):
                    return failure
                command = name.decode("ascii", "replace")
                log.warn(
                    "Instance host: command {command} refused: {reason}",
                    command=command,
                    reason=failure.getErrorMessage(),
                )
                return Failure(
                    amp.RemoteAmpError(BAD_COMMAND, f"{command}: {failure.getErrorMessage()}")
                )

            return maybeDeferred(responder, box).addErrback(failed)

        return guarded

    def unhandledError(self, failure: Failure) -> None:
        """
        A command that asked for no answer failed (its box was bad, or it is not one the
        host serves): that command alone is lost, with a line.  Anything else is AMP's own
        trouble, and ends the channel as AMP does.
        """
        if failure.check(amp.RemoteAmpError):
            log.warn(
                "Instance host: a command without an answer failed: {reason}",
                reason=failure.getErrorMessage(),
            )
            return
        super().unhandledError(failure)

    # -- reports -------------------------------------------------------------------------------

    def _sendLines(self, instanceId: str, lines: list[str]) -> None:
        if not self._gone:
            self.callRemote(InstanceLines, id=instanceId, lines=lines)

    def _exited(self, slot: _Slot, code: int | None = None, signal: int | None = None) -> None:
        if slot.ended:
            return
        slot.ended = True
        if self.slots.get(slot.instanceId) is slot:
            del self.slots[slot.instanceId]
        if not self._gone:
            self.callRemote(InstanceExited, id=slot.instanceId, code=code, signal=signal)

    # -- commands ------------------------------------------------------------------------------

    @StartInstance.responder
    def startInstance(self, id: str, url: str, settings: str) -> dict[str, bool]:
        from nodepass.service import buildService
        from nodepass.url import parse

        out = _Lines(self._sendLines, id)
        old = self.slots.get(id)
        if old is not None:
            # The master never does this (one start per stop); treat it as a replacement.
            self._stopSlot(old, force=True)
        slot = _Slot(id, None)
        self.slots[id] = slot
        try:
            config = parse(url)
        except URLError as error:
            out.write(f"Error: {error} [{os.getpid()}]\nRun 'nodepass --help' for usage.\n")
            self._exited(slot, code=1)
            return {"started": False}
        observer = NodePassLogObserver(out, config.log, color=False)  # type: ignore[arg-type]
        instanceLog = Logger(namespace="nodepass", observer=observer)
        try:
            root = buildService(
                config, self._reactor, settingsFromJSON(settings), instanceLog, observer
            )
            slot.root = root
            root.privilegedStartService()
            root.startService()
        except StartupError as error:
            out.write(f"Error: {error} [{os.getpid()}]\n")
            self._release(slot)
            self._exited(slot, code=1)
            return {"started": False}
        except Exception:
            instanceLog.failure("Instance failed to start")
            self._release(slot)
            self._exited(slot, code=1)
            return {"started": False}
        return {"started": True}

    @StopInstance.responder
    def stopInstance(self, id: str, force: bool) -> dict[str, Any]:
        slot = self.slots.get(id)
        if slot is not None:
            self._stopSlot(slot, force)
        return {}

    @ResetCounters.responder
    def resetCounters(self, id: str) -> dict[str, Any]:
        raw = dict.fromkeys(("tcprx", "tcptx", "udprx", "udptx"), 0)
        slot = self.slots.get(id)
        if slot is not None and slot.root is not None:
            counters = slot.root.counters
            for name in raw:
                raw[name] = getattr(counters, name)
                setattr(counters, name, 0)
        return raw

    @ListConnections.responder
    def listConnections(self, id: str, start: int) -> dict[str, Any]:
        slot = self.slots.get(id)
        entries: list[Any] = []
        if slot is not None and slot.root is not None:
            entries = list(slot.root.connections())
        return connectionsPage(entries, start)

    @CloseConnection.responder
    def closeConnection(self, id: str, connection: str) -> dict[str, bool]:
        slot = self.slots.get(id)
        if slot is None or slot.root is None:
            return {"closed": False}
        return {"closed": bool(slot.root.closeConnection(connection))}

    @Ping.responder
    def ping(self) -> dict[str, int]:
        return {"instances": len(self.slots)}

    # -- stopping ------------------------------------------------------------------------------

    def _stopSlot(self, slot: _Slot, force: bool) -> Deferred[Any]:
        if self.slots.get(slot.instanceId) is slot:
            del self.slots[slot.instanceId]
        stopped = self._release(slot)
        if force:
            # The listeners are closed already; open connections get the tree's own
            # grace and abort, but the master hears at once, as of a killed child.
            self._exited(slot, signal=KILLED)
        else:
            stopped.addBoth(lambda _: self._exited(slot, code=0))
        return stopped

    def _release(self, slot: _Slot) -> Deferred[Any]:
        root, slot.root = slot.root, None
        if root is None:
            return succeed(None)
        d = maybeDeferred(root.stopService)

        def failed(failure: Failure) -> None:
            log.failure("Instance stop failed [{id}]", failure, id=slot.instanceId)

        return d.addErrback(failed)

    def stopAll(self) -> Deferred[Any]:
        """
        Stop every instance gracefully (the host is shutting down).
        """
        stops = [self._stopSlot(slot, force=False) for slot in list(self.slots.values())]
        return gatherResults(stops, consumeErrors=True)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._gone = True
        super().connectionLost(reason)
        if self._onLost is not None:
            self._onLost()


def main(argv: Sequence[str]) -> int:
    from nodepass._compat import leantls

    # The same switches a standalone instance honours (NP_LEAN_IMPORTS, NP_SPLICE, ...).
    leantls.configure(os.environ)
    leantls.importReactorModules()
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import globalLogBeginner

    from nodepass.tap import configureCompat, raiseOpenFileLimit

    configureCompat(os.environ)

    testHooks = "--test-hooks" in argv
    if testHooks:
        import signal

        # Test-only: SIGUSR1 blocks the reactor for 30 s, which is what a stuck host looks
        # like to the master (a signal handler runs in the reactor's thread).
        signal.signal(signal.SIGUSR1, lambda signum, frame: time.sleep(30))
    # The host's own messages (Twisted's, anything no instance owns) go to stderr.
    globalLogBeginner.beginLoggingTo(
        [NodePassLogObserver(sys.stderr, "info", color=False)],
        discardBuffer=True,
        redirectStandardIO=False,
    )
    raiseOpenFileLimit()

    def lost() -> None:
        # The master is gone (or closed the channel to stop this host): stop and exit.
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]

    protocol = HostProtocol(reactor, onLost=lost)
    StandardIO(protocol, stdin=COMMAND_FD, stdout=REPORT_FD, reactor=reactor)  # type: ignore[call-arg]
    reactor.addSystemEventTrigger("before", "shutdown", protocol.stopAll)
    reactor.run()  # type: ignore[attr-defined]
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
