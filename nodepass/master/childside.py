"""The child's side of an isolated instance's control channel (see L{nodepass.master.childcontrol}).

Light on purpose: an instance process imports this only when its master gave it a channel
(C{NP_CONTROL_FDS} in its environment), and nothing of the master comes with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from twisted.protocols import amp

from nodepass.master.hostproto import CloseConnection, ListConnections, connectionsPage

__all__ = ["ANSWER_FD", "COMMAND_FD", "CONTROL_VARIABLE", "serveChild"]

#: Tells a child which descriptors carry its control channel (commands in, answers out).
CONTROL_VARIABLE: Final = "NP_CONTROL_FDS"
COMMAND_FD: Final = 3
ANSWER_FD: Final = 4


class _InstanceControl(amp.AMP):
    """
    The child's side: answers for its one instance (the id in a command is ignored).
    """

    def __init__(self, root: Any) -> None:
        super().__init__()
        self._root = root

    @ListConnections.responder
    def listConnections(self, id: str, start: int) -> dict[str, Any]:
        return connectionsPage(list(self._root.connections()), start)

    @CloseConnection.responder
    def closeConnection(self, id: str, connection: str) -> dict[str, bool]:
        return {"closed": bool(self._root.closeConnection(connection))}


def serveChild(root: Any, reactor: Any, environ: Mapping[str, str]) -> bool:
    """
    Serve the control channel when the master gave one (C{NP_CONTROL_FDS}); C{False}
    otherwise (a standalone instance).
    """
    spec = environ.get(CONTROL_VARIABLE, "").split(",")
    if len(spec) != 2 or not all(part.strip().isdigit() for part in spec):
        return False
    from twisted.internet.stdio import StandardIO

    commands, answers = (int(part) for part in spec)
    StandardIO(  # type: ignore[call-arg]
        _InstanceControl(root), stdin=commands, stdout=answers, reactor=reactor
    )
    return True
