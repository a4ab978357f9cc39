"""The built-in TCP pool transport (``type=0``), inside TLS for ``tls=1/2``.

With TLS, pool connections run over L{nodepass.fasttls} (the stdlib C{ssl} module) when the
connection creator has a stdlib equivalent and the fast path is on and available
(L{nodepass._compat.fasttls}); otherwise over Twisted's L{TLSMemoryBIOProtocol}.  Both speak
the same TLS, so the two ends need not agree on which they use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.plugin import IPlugin
from zope.interface import implementer

from nodepass.transports.interface import (
    INodePassTransport,
    IPoolTLSTransport,
    PoolAddress,
    creatorOf,
)


def _fast(tls: Any) -> bool:
    """
    Whether connections with the creator C{tls} take the fast TLS path.
    """
    from nodepass._compat import fasttls as compat
    from nodepass.fasttls import IStdlibTLS

    return IStdlibTLS.providedBy(tls) and compat.available()


@implementer(IStreamClientEndpoint)
class _TwistedTLSClientEndpoint:
    """
    What C{wrapClientTLS} does, with the TLS layer's write timer on our reactor rather than
    the global one.
    """

    def __init__(self, endpoint: Any, wrap: Callable[[IProtocolFactory], Any]) -> None:
        self._endpoint = endpoint
        self._wrap = wrap

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting: Deferred[Any] = self._endpoint.connect(self._wrap(protocolFactory))
        return connecting.addCallback(lambda wrapper: wrapper.wrappedProtocol)


@implementer(IPlugin, INodePassTransport, IPoolTLSTransport)
class TCPTransport:
    """
    Pool connections are TCP connections to the tunnel port, wrapped in TLS
    when the tunnel runs TLS (dataplane spec §4.2).  C{tls} is a L{PoolTLS
    <nodepass.transports.interface.PoolTLS>} or, from older callers, the
    pyOpenSSL creator (L{None}: no TLS).
    """

    name = "tcp"
    typeCode = "0"
    halfClose = True
    minimumTLS = 0
    readyAfterHandshake = True

    def serverFactory(
        self, reactor: Any, poolFactory: IProtocolFactory, tls: Any
    ) -> IProtocolFactory:
        tls = creatorOf(tls)
        if tls is None:
            return poolFactory
        if _fast(tls):
            from nodepass._compat.fasttls import sender
            from nodepass.fasttls import FastTLSFactory

            return FastTLSFactory(tls, False, poolFactory, sender, reactor)
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return TLSMemoryBIOFactory(tls, False, poolFactory, clock=reactor)

    def connect(
        self, reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        from twisted.internet.endpoints import (
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            connectProtocol,
        )

        kind = TCP6ClientEndpoint if ":" in address.ip else TCP4ClientEndpoint
        endpoint: Any = kind(reactor, address.ip, address.port, timeout)
        tls = creatorOf(tls)
        if tls is not None:
            if _fast(tls):
                from nodepass._compat.fasttls import sender
                from nodepass.fasttls import FastTLSClientEndpoint

                endpoint = FastTLSClientEndpoint(tls, endpoint, sender, reactor)
            else:
                from twisted.protocols.tls import TLSMemoryBIOFactory

                endpoint = _TwistedTLSClientEndpoint(
                    endpoint,
                    lambda factory: TLSMemoryBIOFactory(tls, True, factory, clock=reactor),
                )
        return connectProtocol(endpoint, protocol)  # type: ignore[no-any-return]


tcp = TCPTransport()
