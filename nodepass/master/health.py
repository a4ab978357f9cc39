"""Health and readiness of the master (``GET /health``, ``GET P/v1/health``, ``GET /ready``).

Both answer without the API key, so they say nothing secret: counts and yes/no answers, no
instance ids, URLs, paths or keys.

- Health is C{ok} (200) or C{degraded} (503) with one entry per check:
  - C{store}: the state directory takes a write right now (a probe file is written, synced
    and removed in the store's thread);
  - C{instances}: no instance that should run (C{restart=true}) is in C{error};
  - C{hosts}: no instance waits for an instance host, and no host is being replaced.
- Ready (200) once the state is loaded and the API serves; 503 while starting or shutting
  down, so a load balancer or an orchestrator sends nothing before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["HealthChecks"]

log = Logger()


class HealthChecks:
    """
    The checks behind C{/health} and C{/ready}.

    @param probeStore: fires once the state directory took a test write (fails otherwise).
    @param instances: the instance objects (C{status} and C{restart} are read).
    @param hosts: the instance hosts' state (L{nodepass.master.hosts.HostPool.health}), or
        L{None} when instances run one process each.
    @param ready: whether the state is loaded and the API serves.
    @param stopping: whether the master is shutting down.
    """

    def __init__(
        self,
        probeStore: Callable[[], Deferred[None]],
        instances: Callable[[], Iterable[Mapping[str, Any]]],
        hosts: Callable[[], Mapping[str, Any]] | None,
        ready: Callable[[], bool],
        stopping: Callable[[], bool],
    ) -> None:
        self._probeStore = probeStore
        self._instances = instances
        self._hosts = hosts
        self._ready = ready
        self._stopping = stopping

    def isReady(self) -> bool:
        return self._ready() and not self._stopping()

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """
        C{(healthy, body)} for C{/health}.
        """
        checks = {
            "store": await self._store(),
            "instances": self._instanceCheck(),
            "hosts": self._hostCheck(),
        }
        healthy = all(check["status"] == "ok" for check in checks.values())
        return healthy, {"status": "ok" if healthy else "degraded", "checks": checks}

    async def _store(self) -> dict[str, Any]:
        try:
            await self._probeStore()
        except Exception as e:
            # The reason goes to the log; the unauthenticated answer stays free of paths.
            log.warn("Health: the state cannot be written: {error}", error=str(e))
            return {"status": "fail", "writable": False}
        return {"status": "ok", "writable": True}

    def _instanceCheck(self) -> dict[str, Any]:
        counts = {"running": 0, "stopped": 0, "error": 0}
        failing = 0
        total = 0
        for item in self._instances():
            total += 1
            status = str(item.get("status", ""))
            if status in counts:
                counts[status] += 1
            if status == "error" and item.get("restart"):
                failing += 1
        return {
            "status": "ok" if failing == 0 else "fail",
            "total": total,
            **counts,
            "failing": failing,
        }

    def _hostCheck(self) -> dict[str, Any]:
        if self._hosts is None:
            return {"status": "ok", "mode": "isolated"}
        state = dict(self._hosts())
        missing = state.get("waiting", 0) > 0 or bool(state.get("replacing", False))
        return {"status": "fail" if missing else "ok", "mode": "hosted", **state}
