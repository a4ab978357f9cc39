"""The JSON shapes of the master API (master spec §6.1).

An instance object has exactly the fields of §6.1, in that order, and never a null; the
C{********} pseudo-instance is one of them with empty C{type} and C{status}.

A webhook object never carries its secret (only whether there is one, C{signed}).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodepass.master.events import formatTime
from nodepass.master.store import PSEUDO_ID, StoredWebhook, defaultMeta

__all__ = [
    "InstanceObject",
    "deliveryObject",
    "instanceObject",
    "pseudoObject",
    "webhookEvent",
    "webhookObject",
]

#: An instance object as the API shows it (§6.1).
InstanceObject = dict[str, Any]


def instanceObject(
    id: str,
    alias: str,
    type: str,
    status: str,
    url: str,
    config: str,
    restart: bool,
    meta: Mapping[str, Any] | None,
    gauges: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0),
    traffic: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """
    An instance object with exactly the fields of §6.1, in order, never null (§18 b10).
    """
    meta = meta or defaultMeta()
    peer = meta.get("peer") or {}
    tags = meta.get("tags") or {}
    totals = traffic or {}
    mode, ping, pool, tcps, udps = gauges
    return {
        "id": id,
        "alias": alias or "",
        "type": type,
        "status": status,
        "url": url,
        "config": config,
        "restart": bool(restart),
        "meta": {
            "peer": {
                "sid": peer.get("sid") or "",
                "type": peer.get("type") or "",
                "alias": peer.get("alias") or "",
            },
            "tags": dict(tags),
        },
        "mode": mode,
        "ping": ping,
        "pool": pool,
        "tcps": tcps,
        "udps": udps,
        "tcprx": int(totals.get("tcprx", 0)),
        "tcptx": int(totals.get("tcptx", 0)),
        "udprx": int(totals.get("udprx", 0)),
        "udptx": int(totals.get("udptx", 0)),
    }


def pseudoObject(alias: str, masterID: str, key: str = "") -> dict[str, Any]:
    """
    The C{********} pseudo-instance (§5, §12): the master alias in C{alias}, the master ID in
    C{config}, and C{key} in C{url} (the caller's own key, the new key after a regeneration,
    or C{""}).
    """
    return instanceObject(PSEUDO_ID, alias, "", "", key, masterID, False, None)


def webhookObject(hook: StoredWebhook, queued: int = 0, dropped: int = 0) -> dict[str, Any]:
    """
    A webhook as the API shows it: C{id}, C{url}, C{events}, C{created} (RFC 3339),
    C{signed} (whether deliveries carry a signature), C{queued} (events waiting) and
    C{dropped} (events lost to a full queue since the master started).  Never the secret.
    """
    return {
        "id": hook.id,
        "url": hook.url,
        "events": list(hook.events),
        "created": formatTime(hook.created),
        "signed": bool(hook.secret),
        "queued": queued,
        "dropped": dropped,
    }


def deliveryObject(
    event: str,
    time: float,
    attempt: int,
    status: int | None,
    error: str | None,
    duration: float,
) -> dict[str, Any]:
    """
    One delivery attempt: the event kind, when the attempt began (RFC 3339), its number
    (1 for the first try), the receiver's HTTP status (null when none came back), why it
    failed (null on success) and how long it took, in seconds.
    """
    return {
        "event": event,
        "time": formatTime(time),
        "attempt": attempt,
        "status": status,
        "error": error,
        "duration": round(duration, 6),
    }


def webhookEvent(
    event: str,
    time: float,
    instance: Mapping[str, Any] | None = None,
    master: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The JSON a webhook receives: C{event} and C{time}, then C{instance} (an instance object,
    never the pseudo-instance) or C{master} (C{id}, C{alias}, C{action}).
    """
    value: dict[str, Any] = {"event": event, "time": formatTime(time)}
    if instance is not None:
        value["instance"] = dict(instance)
    if master is not None:
        value["master"] = dict(master)
    return value
