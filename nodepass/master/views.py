"""The JSON shapes of the master API (master spec §6.1).

An instance object has exactly the fields of §6.1, in that order, and never a null; the
C{********} pseudo-instance is one of them with empty C{type} and C{status}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodepass.master.store import PSEUDO_ID, defaultMeta

__all__ = ["InstanceObject", "instanceObject", "pseudoObject"]

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
