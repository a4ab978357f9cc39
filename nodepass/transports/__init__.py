"""Pool transports: discovery of the installed ones.

Transports are Twisted plugins providing L{INodePassTransport}; the
built-ins are registered by ``twisted/plugins/nodepass_transports.py`` and
third-party packages add their own the same way (docs/plugins.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger

from nodepass.errors import NodePassError
from nodepass.transports.interface import ILoggingTransport, INodePassTransport, PoolAddress

__all__ = [
    "ILoggingTransport",
    "INodePassTransport",
    "PoolAddress",
    "TransportError",
    "available",
    "forInstance",
    "forType",
]


class TransportError(NodePassError):
    """
    A transport is unknown, or two plugins claim the same name or type.
    """


def _scan() -> Iterable[INodePassTransport]:
    from twisted.plugin import getPlugins

    import twisted.plugins

    return getPlugins(INodePassTransport, twisted.plugins)


def available(plugins: Iterable[INodePassTransport] | None = None) -> dict[str, INodePassTransport]:
    """
    The installed transports by C{typeCode}.  Two plugins claiming the same
    name or type code fail loudly, naming both.  (A plugin module that fails
    to import is logged by Twisted and skipped: only its transport is gone.)
    """
    byType: dict[str, INodePassTransport] = {}
    byName: dict[str, INodePassTransport] = {}
    for plugin in _scan() if plugins is None else plugins:
        _check(plugin)
        for key, table in ((plugin.typeCode, byType), (plugin.name, byName)):
            other = table.get(key)
            if other is not None and other is not plugin:
                raise TransportError(
                    f"pool transports {_describe(other)} and {_describe(plugin)} both claim {key!r}"
                )
            table[key] = plugin
    return byType


_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_BUILTIN_CODES = ("0", "1", "2", "3")


def _check(plugin: INodePassTransport) -> None:
    """
    A transport must be selectable from a URL: a lower-case token as its
    name, and as its type code either one of the reference's numeric codes
    or its own name.
    """
    name, code = getattr(plugin, "name", None), getattr(plugin, "typeCode", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TransportError(f"pool transport {plugin!r} has an invalid name {name!r}")
    if code not in _BUILTIN_CODES and code != name:
        raise TransportError(
            f"pool transport {_describe(plugin)} has type code {code!r}: "
            f"expected its name or one of {', '.join(_BUILTIN_CODES)}"
        )


def _describe(plugin: INodePassTransport) -> str:
    kind = type(plugin)
    return f"{plugin.name!r} ({kind.__module__}.{kind.__qualname__})"


def forType(
    typeCode: str, plugins: Iterable[INodePassTransport] | None = None
) -> INodePassTransport:
    """
    The transport serving C{type=typeCode}; L{TransportError} lists the
    available ones when there is none.
    """
    table = available(plugins)
    plugin = table.get(typeCode)
    if plugin is None:
        choices = ", ".join(f"{code} ({p.name})" for code, p in sorted(table.items()))
        raise TransportError(
            f"no pool transport for type={typeCode}; available: {choices or 'none'}"
        )
    return plugin


def forInstance(transport: Any, log: Logger) -> Any:
    """
    C{transport} as one instance uses it: L{ILoggingTransport.withLogger}
    when the transport provides it, else the transport itself.
    """
    if ILoggingTransport.providedBy(transport):
        return transport.withLogger(log)
    return transport
