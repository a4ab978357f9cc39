"""The built-in TCP pool transport (``type=0``), inside TLS for ``tls=1/2``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from nodepass.transports.interface import INodePassTransport, PoolAddress


@implementer(IPlugin, INodePassTransport)
class TCPTransport:
    """
    Pool connections are TCP connections to the tunnel port, wrapped in TLS
    when the tunnel runs TLS (dataplane spec §4.2).
    """

    name = "tcp"
    typeCode = "0"
    halfClose = True
    minimumTLS = 0
    readyAfterHandshake = True

    def serverFactory(
        self, reactor: Any, poolFactory: IProtocolFactory, tls: Any
    ) -> IProtocolFactory:
        if tls is None:
            return poolFactory
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return TLSMemoryBIOFactory(tls, False, poolFactory)

    def connect(
        self, reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        from twisted.internet.endpoints import (
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            connectProtocol,
            wrapClientTLS,
        )

        kind = TCP6ClientEndpoint if ":" in address.ip else TCP4ClientEndpoint
        endpoint: Any = kind(reactor, address.ip, address.port, timeout)
        if tls is not None:
            endpoint = wrapClientTLS(tls, endpoint)
        return connectProtocol(endpoint, protocol)  # type: ignore[no-any-return]


tcp = TCPTransport()
