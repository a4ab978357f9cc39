"""The ``NP_*`` environment tunables (dataplane spec §12), read once at start.

Integers are accepted when they are non-negative decimals and durations when
they parse with Go's duration syntax and are not negative; anything else
falls back to the default, as in the reference.  A report interval of zero
would make the reference crash; here it falls back to the default too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from attrs import field, fields, frozen

from nodepass.errors import URLError
from nodepass.url import parseDuration


@frozen
class Settings:
    semaphoreLimit: int = field(default=65536, metadata={"env": "NP_SEMAPHORE_LIMIT"})
    tcpBufferSize: int = field(default=16384, metadata={"env": "NP_TCP_DATA_BUF_SIZE"})
    udpBufferSize: int = field(default=16384, metadata={"env": "NP_UDP_DATA_BUF_SIZE"})
    handshakeTimeout: float = field(default=5.0, metadata={"env": "NP_HANDSHAKE_TIMEOUT"})
    tcpDialTimeout: float = field(default=5.0, metadata={"env": "NP_TCP_DIAL_TIMEOUT"})
    udpDialTimeout: float = field(default=5.0, metadata={"env": "NP_UDP_DIAL_TIMEOUT"})
    udpReadTimeout: float = field(default=30.0, metadata={"env": "NP_UDP_READ_TIMEOUT"})
    poolGetTimeout: float = field(default=5.0, metadata={"env": "NP_POOL_GET_TIMEOUT"})
    minPoolInterval: float = field(default=0.1, metadata={"env": "NP_MIN_POOL_INTERVAL"})
    maxPoolInterval: float = field(default=1.0, metadata={"env": "NP_MAX_POOL_INTERVAL"})
    reportInterval: float = field(default=5.0, metadata={"env": "NP_REPORT_INTERVAL"})
    serviceCooldown: float = field(default=3.0, metadata={"env": "NP_SERVICE_COOLDOWN"})
    shutdownTimeout: float = field(default=5.0, metadata={"env": "NP_SHUTDOWN_TIMEOUT"})
    reloadInterval: float = field(default=3600.0, metadata={"env": "NP_RELOAD_INTERVAL"})


_DECIMAL = re.compile(r"[0-9]+")


def _convert(text: str, kind: type) -> float | int | None:
    text = text.strip()
    if kind is int:
        return int(text) if _DECIMAL.fullmatch(text) else None
    try:
        return parseDuration(text)
    except URLError:
        return None


def fromEnvironment(environ: Mapping[str, str]) -> Settings:
    """
    Build L{Settings} from an environment mapping such as C{os.environ}.
    """
    values: dict[str, float | int] = {}
    for attribute in fields(Settings):
        raw = environ.get(attribute.metadata["env"])
        if raw is None:
            continue
        kind = int if isinstance(attribute.default, int) else float
        value = _convert(raw, kind)
        if value is None or value < 0:
            continue
        zeroIsDefault = ("reportInterval", "reloadInterval", "tcpBufferSize", "udpBufferSize")
        if attribute.name in zeroIsDefault and not value:
            continue
        values[attribute.name] = value
    return Settings(**values)  # type: ignore[arg-type]
