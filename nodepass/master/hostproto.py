"""The AMP commands between a master and its instance hosts.

An instance host (L{nodepass.master.host}) is a process that runs many instances, each the
same service tree a standalone C{nodepass URL} runs.  The master talks to it over two pipes
(the host's descriptors 3 and 4) with L{twisted.protocols.amp}; every message about an
instance carries its id.

Master to host:

  - L{StartInstance}: build and start an instance; answered once its listeners are bound
    (or failed), after the lines it printed on the way;
  - L{StopInstance}: stop it gracefully (or, with C{force}, at once);
  - L{ResetCounters}: zero its traffic counters;
  - L{ListConnections}: its open TCP relays and UDP flows, one page of JSON at a time;
  - L{CloseConnection}: close one of them;
  - L{Ping}: the heartbeat; a host that does not answer in time is replaced.

Host to master (no answers: the stream is ordered, and a lost host is noticed anyway):

  - L{InstanceLines}: output lines, exactly as a child process would print them (the
    master reads checkpoints and error markers from them);
  - L{InstanceExited}: the instance is gone, with the exit status a child would have had.

Only this module and the standard library are imported here, so the host stays small.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.protocols import amp

__all__ = [
    "CloseConnection",
    "InstanceExited",
    "InstanceLines",
    "ListConnections",
    "Ping",
    "ResetCounters",
    "StartInstance",
    "StopInstance",
    "allConnections",
    "connectionsPage",
]

#: Longest text AMP carries in one value (its limit is 65,535 bytes); longer lines are cut.
MAX_VALUE = 60_000


class StartInstance(amp.Command):
    arguments = [
        (b"id", amp.Unicode()),
        (b"url", amp.Unicode()),
        # The master's NP_* settings, read once, as JSON (field name -> value).
        (b"settings", amp.Unicode()),
    ]
    response = [(b"started", amp.Boolean())]


class StopInstance(amp.Command):
    arguments = [(b"id", amp.Unicode()), (b"force", amp.Boolean())]
    response = []  # type: ignore[var-annotated]


class ResetCounters(amp.Command):
    arguments = [(b"id", amp.Unicode())]
    # The raw counters at the moment they were zeroed (all 0 for an unknown id): the master
    # counts the bytes since its last checkpoint from them, so a reset loses nothing.
    response = [
        (b"tcprx", amp.Integer()),
        (b"tcptx", amp.Integer()),
        (b"udprx", amp.Integer()),
        (b"udptx", amp.Integer()),
    ]


class ListConnections(amp.Command):
    """
    One page of the instance's open connections: a JSON list of objects, at most about
    L{MAX_VALUE} bytes, starting at entry C{start}; C{next} is where the next page starts, or
    -1 after the last one.  An unknown instance has none.
    """

    arguments = [(b"id", amp.Unicode()), (b"start", amp.Integer())]
    response = [(b"page", amp.Unicode()), (b"next", amp.Integer())]


class CloseConnection(amp.Command):
    arguments = [(b"id", amp.Unicode()), (b"connection", amp.Unicode())]
    response = [(b"closed", amp.Boolean())]


def connectionsPage(entries: list[Any], start: int) -> dict[str, Any]:
    """
    The L{ListConnections} answer for C{entries} from index C{start}: as many as fit under
    L{MAX_VALUE} bytes of JSON.
    """
    page: list[str] = []
    size, index = 2, max(0, start)
    while index < len(entries):
        text = json.dumps(entries[index], separators=(",", ":"))
        if page and size + len(text) + 1 > MAX_VALUE:
            break
        page.append(text)
        size += len(text) + 1
        index += 1
    return {"page": "[" + ",".join(page) + "]", "next": index if index < len(entries) else -1}


async def allConnections(
    ask: Callable[[int], Awaitable[Mapping[str, Any] | None]],
) -> list[Any]:
    """
    Every page of L{ListConnections}, asked through C{ask(start)}; an answer of L{None} (the
    other side went away) ends the list there.
    """
    found: list[Any] = []
    start = 0
    while start >= 0:
        answer = await ask(start)
        if answer is None:
            break
        found.extend(json.loads(answer["page"]))
        start = answer["next"]
    return found


class Ping(amp.Command):
    arguments = []  # type: ignore[var-annotated]
    response = [(b"instances", amp.Integer())]


class InstanceLines(amp.Command):
    arguments = [(b"id", amp.Unicode()), (b"lines", amp.ListOf(amp.Unicode()))]
    requiresAnswer = False


class InstanceExited(amp.Command):
    arguments = [
        (b"id", amp.Unicode()),
        (b"code", amp.Integer(optional=True)),
        (b"signal", amp.Integer(optional=True)),
    ]
    requiresAnswer = False
