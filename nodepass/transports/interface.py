"""The contract of a pool transport.

A pool transport decides how the pool connections between a tunnel client
and server are carried (the URL's ``type=``, dataplane spec §4, §9): plain
TCP (optionally inside TLS), WebSocket, and whatever third parties add.  The
handshake always happens over plain HTTP on the tunnel TCP port first; a
transport then serves the pool on that same port (server side) and dials
pool connections to it (client side).

Whatever the carrier, the pool protocol on top is the same: the server
writes 4 ID bytes first on each new pool connection, the client reads them,
and the connection is then one byte stream (control lines or relayed data).
A transport must deliver exactly that stream in both directions, keep
write order, and report the end of the stream as the protocol's
C{connectionLost} (and C{readConnectionLost} when it supports half-close).

Optional extras a transport may offer (looked up with C{getattr}):

* C{alpn}: a list of ALPN protocol names both TLS ends must offer (HTTP/2);
* C{wantsCredentials}: when true, the server passes its
  L{nodepass.tls.ServerCredentials} (not a pyOpenSSL creator) as C{tls}, and
  the client passes the TLS mode (1 or 2) instead of a creator (QUIC builds
  its own TLS);
* C{listenPool(reactor, (host, port), poolFactory, tls, clientIP=None)}: the
  server calls it after the handshake to serve the pool on a listener of the
  transport's own (QUIC: the UDP port with the tunnel port's number) and
  stops the returned port when the session ends;
* C{disconnectAll()}: the client calls it when a session ends, to drop
  shared carrier connections (HTTP/2, QUIC) at once.

A transport that logs (the built-in WebSocket, HTTP/2 and QUIC ones) also
provides L{ILoggingTransport}: each tunnel then asks it, once, for a copy of
its own whose connections log through that NodePass instance's logger (many
instances may run in one process, and each line must name its instance).
A transport without it is used as it is, unchanged.

Implementations are plugins: objects providing both
L{twisted.plugin.IPlugin} and L{INodePassTransport}, made available from a
module in a ``twisted/plugins/`` directory (see docs/plugins.md).
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.logger import Logger
from zope.interface import Attribute, Interface


@frozen
class PoolAddress:
    """
    Where the client dials its pool connections.

    @ivar host: the tunnel host as written in the URL (no brackets); may be
        a name.
    @ivar ip: the address C{host} resolved to.
    @ivar port: the tunnel port.
    @ivar text: the tunnel address exactly as typed (``host:port``, IPv6 in
        brackets), as an HTTP-based transport puts it in its URL.
    @ivar serverName: the TLS server name (``sni``, else the host when it is a
        name, else C{"none"}).
    """

    host: str
    ip: str
    port: int
    text: str
    serverName: str


class INodePassTransport(Interface):
    """
    A way to carry pool connections.  Methods take the reactor explicitly and
    must not block.
    """

    name = Attribute("A lower-case token naming the transport: 'tcp', 'ws', ...")
    typeCode = Attribute(
        "The value of type= that selects it: '0' and '2' for the built-ins "
        "(the reference's numeric codes), the name itself for third-party transports."
    )
    halfClose = Attribute(
        "Whether one direction of a pool connection can end while the other "
        "goes on (only plain TCP can)."
    )
    minimumTLS = Attribute(
        "The TLS mode the transport needs at least: 0 when it follows tls=, "
        "1 when it always runs over TLS."
    )
    readyAfterHandshake = Attribute(
        "True when the pool protocol is connected before TLS is done and is "
        "told by IHandshakeListener.handshakeCompleted (TLS right over TCP); "
        "False when makeConnection already means the stream is ready.  With "
        "TLS, the transport given to the protocol must offer "
        "getPeerCertificate() (the verify exchange reads it)."
    )

    def serverFactory(reactor: Any, poolFactory: IProtocolFactory, tls: Any) -> IProtocolFactory:
        """
        The factory the server's tunnel TCP port uses once the handshake is
        done.

        @param poolFactory: builds the pool protocol for each new pool
            connection (it writes the ID first, then carries the stream).
        @param tls: an C{IOpenSSLServerConnectionCreator} when the tunnel runs
            TLS (``tls=1/2``), else L{None}.
        """

    def connect(
        reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        """
        Dial one pool connection to the server and connect C{protocol} to it
        (its C{makeConnection} is called once the stream is ready to carry
        bytes); fires with C{protocol}, or fails.

        @param tls: an C{IOpenSSLClientConnectionCreator} for ``tls=1/2``, else
            L{None}.
        @param timeout: seconds allowed for the whole connection set-up.
        """


class ILoggingTransport(INodePassTransport):
    """
    A pool transport whose connections log, and that can log through one
    NodePass instance's logger instead of the process-global log publisher.

    Optional: a tunnel server (once) and a tunnel client (once per type
    code) call L{withLogger} with their instance's logger and use what it
    returns in place of the plugin object for everything else.
    """

    def withLogger(log: Logger) -> INodePassTransport:
        """
        This transport for one NodePass instance: an object with the same
        name, type code and flags, whose connections (and the carrier
        connections it shares between them) log through C{log} and are kept
        apart from those of other instances.  The plugin object itself keeps
        logging where it did.
        """
