"""Pool transports: discovery of the installed ones.

Transports are Twisted plugins providing L{INodePassTransport}; the
built-ins are registered by ``twisted/plugins/nodepass_transports.py`` and
third-party packages add their own the same way (docs/plugins.md).

The built-ins are registered by reference (L{TransportReference}: a name, a type code and
where the object lives), so that L{forType} imports only the module of the transport asked
for: a ``type=0`` instance never loads the QUIC, WebSocket or HTTP/2 code (nor the C{ssl}
module the QUIC one imports).  L{available} loads them all.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

from attrs import frozen
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

from nodepass.errors import NodePassError
from nodepass.transports.interface import ILoggingTransport, INodePassTransport, PoolAddress

__all__ = [
    "ILoggingTransport",
    "INodePassTransport",
    "ITransportReference",
    "PoolAddress",
    "TransportError",
    "TransportReference",
    "available",
    "forInstance",
    "forType",
]


class TransportError(NodePassError):
    """
    A transport is unknown, or two plugins claim the same name or type.
    """


class ITransportReference(Interface):
    """
    A pool transport named by a plugin module without being imported by it.
    """

    name = Attribute("The transport's name (its C{INodePassTransport.name}).")
    typeCode = Attribute("The C{type=} code it serves (its C{INodePassTransport.typeCode}).")
    location = Attribute('Where the transport is: C{"package.module:attribute"}.')

    def load() -> INodePassTransport:
        """
        The transport itself; imports its module.

        @raise TransportError: it cannot be imported, or is not what the reference says.
        """


@implementer(IPlugin, ITransportReference)
@frozen
class TransportReference:
    """
    A transport at C{location} (C{"package.module:attribute"}), with the name and type
    code it declares.
    """

    name: str
    typeCode: str
    location: str

    def load(self) -> INodePassTransport:
        moduleName, _, attribute = self.location.partition(":")
        try:
            transport = getattr(importlib.import_module(moduleName), attribute)
        except (ImportError, AttributeError) as error:
            raise TransportError(
                f"pool transport {self.name!r} ({self.location}) cannot be loaded: {error}"
            ) from error
        found = (getattr(transport, "name", None), getattr(transport, "typeCode", None))
        if found != (self.name, self.typeCode) or not INodePassTransport.providedBy(transport):
            raise TransportError(
                f"{self.location} is not pool transport {self.name!r} (type {self.typeCode})"
            )
        return transport  # type: ignore[no-any-return]


def _scan() -> list[Any]:
    from twisted.plugin import getPlugins

    import twisted.plugins

    found: list[Any] = list(getPlugins(ITransportReference, twisted.plugins))
    found.extend(getPlugins(INodePassTransport, twisted.plugins))
    return found


def _load(plugin: Any) -> INodePassTransport:
    if ITransportReference.providedBy(plugin):
        return plugin.load()  # type: ignore[no-any-return]
    return plugin  # type: ignore[no-any-return]


def _same(one: Any, other: Any) -> bool:
    """
    Whether two plugins are one transport (found twice, or once by reference).
    """
    if one is other or (ITransportReference.providedBy(one) and one == other):
        return True
    if ITransportReference.providedBy(one) or ITransportReference.providedBy(other):
        return _load(one) is _load(other)
    return False


def _table(plugins: Iterable[Any]) -> dict[str, Any]:
    """
    The plugins by C{typeCode}, loading none; two claiming the same name or type code fail
    loudly, naming both.
    """
    byType: dict[str, Any] = {}
    byName: dict[str, Any] = {}
    for plugin in plugins:
        _check(plugin)
        for key, table in ((plugin.typeCode, byType), (plugin.name, byName)):
            other = table.get(key)
            if other is not None and not _same(other, plugin):
                raise TransportError(
                    f"pool transports {_describe(other)} and {_describe(plugin)} both claim {key!r}"
                )
            table.setdefault(key, plugin)
    return byType


def available(plugins: Iterable[Any] | None = None) -> dict[str, INodePassTransport]:
    """
    The installed transports by C{typeCode}, every one loaded.  Two plugins claiming the
    same name or type code fail loudly, naming both.  (A plugin module that fails to
    import is logged by Twisted and skipped: only its transport is gone.)
    """
    table = _table(_scan() if plugins is None else plugins)
    return {code: _load(plugin) for code, plugin in table.items()}


_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_BUILTIN_CODES = ("0", "1", "2", "3")


def _check(plugin: Any) -> None:
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


def _describe(plugin: Any) -> str:
    if ITransportReference.providedBy(plugin):
        return f"{plugin.name!r} ({plugin.location.replace(':', '.')})"
    kind = type(plugin)
    return f"{plugin.name!r} ({kind.__module__}.{kind.__qualname__})"


def forType(typeCode: str, plugins: Iterable[Any] | None = None) -> INodePassTransport:
    """
    The transport serving C{type=typeCode} (only its module is imported);
    L{TransportError} lists the available ones when there is none.
    """
    table = _table(_scan() if plugins is None else plugins)
    plugin = table.get(typeCode)
    if plugin is None:
        choices = ", ".join(f"{code} ({p.name})" for code, p in sorted(table.items()))
        raise TransportError(
            f"no pool transport for type={typeCode}; available: {choices or 'none'}"
        )
    return _load(plugin)


def forInstance(transport: Any, log: Logger) -> Any:
    """
    C{transport} as one instance uses it: L{ILoggingTransport.withLogger}
    when the transport provides it, else the transport itself.
    """
    if ILoggingTransport.providedBy(transport):
        return transport.withLogger(log)
    return transport
