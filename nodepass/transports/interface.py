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

Optional abilities are interfaces of their own, each extending
L{INodePassTransport} (so the plugin scan still finds a transport that
declares only them); the tunnel checks them with C{providedBy}:

* L{IListeningPoolTransport}: the transport serves the pool on a listener of
  its own (QUIC: the UDP port with the tunnel port's number);
* L{ICredentialTransport}: it runs its own TLS stack, and wants the server's
  credentials and the client's TLS mode rather than pyOpenSSL creators;
* L{IALPNTransport}: both TLS ends must offer its ALPN names (HTTP/2);
* L{IDisconnectingTransport}: the client drops its shared carrier
  connections (HTTP/2, QUIC) when a session ends;
* L{IUncheckedPeerTransport}: the server does not compare the address of its
  pool connections with the handshake's (WebSocket);
* L{ILoggingTransport}: each tunnel asks it, once, for a copy of its own
  whose connections log through that NodePass instance's logger (many
  instances may run in one process, and each line must name its instance).

A transport without any of them is used as it is.  Plugins written before
these interfaces offered the first four as plain attributes (C{listenPool},
C{wantsCredentials}, C{alpn}, C{disconnectAll}); L{declareAbilities} turns
those into the declarations, so such plugins keep working.

How pool connections run TLS reaches a transport as its methods' C{tls}
argument: one L{PoolTLS} value for a transport providing
L{IPoolTLSTransport}; for any other, the form transports took before
L{PoolTLS} existed (L{tlsArgument}: L{None} without TLS, else a pyOpenSSL
creator, or for an L{ICredentialTransport} the server's credentials and the
client's mode).

Implementations are plugins: objects providing both
L{twisted.plugin.IPlugin} and L{INodePassTransport}, made available from a
module in a ``twisted/plugins/`` directory (see docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from attrs import field, frozen
from attrs.validators import in_
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory
from twisted.logger import Logger
from zope.interface import Attribute, Interface, alsoProvides
from zope.interface.interface import InterfaceClass

if TYPE_CHECKING:
    from nodepass.tls import ServerCredentials


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


def _names(alpn: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(alpn)


@frozen
class PoolTLS:
    """
    How one tunnel's pool connections run TLS, as the tunnel hands it to a
    transport providing L{IPoolTLSTransport} (the C{tls} argument of
    C{serverFactory}, C{connect} and C{listenPool}), in every mode, 0
    included.

    @ivar mode: C{0}: no TLS; C{1}: a self-signed server certificate, not
        verified by the client (the fingerprint exchange authenticates it);
        C{2}: a certificate the client verifies for the server name.
    @ivar alpn: the ALPN names both ends offer (the transport's
        L{IALPNTransport.alpn}; empty otherwise).
    @ivar credentials: on the server side, its L{nodepass.tls.ServerCredentials}
        (for a TLS stack of the transport's own: C{keyAndChain()}); L{None}
        on the client side and in mode 0.
    """

    mode: int = field(default=0, validator=in_((0, 1, 2)))
    alpn: tuple[bytes, ...] = field(default=(), converter=_names)
    credentials: ServerCredentials | None = field(default=None, repr=False)
    _makeCreator: Callable[[], Any] | None = field(
        default=None, repr=False, eq=False, alias="makeCreator"
    )
    _made: dict[str, Any] = field(factory=dict, init=False, repr=False, eq=False)

    @classmethod
    def forServer(
        cls, mode: int, credentials: ServerCredentials | None, alpn: Iterable[bytes] = ()
    ) -> PoolTLS:
        """
        A server's: C{credentials} in mode 1 or 2, no TLS without them.
        """
        if not mode or credentials is None:
            return cls()
        names = list(alpn)
        return cls(mode, names, credentials, lambda: credentials.contextFactory(alpn=names or None))

    @classmethod
    def forClient(
        cls, mode: int, makeCreator: Callable[[], Any], alpn: Iterable[bytes] = ()
    ) -> PoolTLS:
        """
        A client's: C{makeCreator()} builds its pyOpenSSL creator (called at
        most once, when a transport first asks for it).
        """
        if not mode:
            return cls()
        return cls(mode, alpn, makeCreator=makeCreator)

    def creator(self) -> Any:
        """
        The pyOpenSSL connection creator of this side, built with L{alpn}: an
        C{IOpenSSLServerConnectionCreator} on the server (for
        C{TLSMemoryBIOFactory(creator, False, factory)}), an
        C{IOpenSSLClientConnectionCreator} on the client (for
        C{wrapClientTLS}); L{None} in mode 0.  Made on first use (a transport
        with its own TLS stack never pays for it), the same object every time.
        """
        if not self.mode or self._makeCreator is None:
            return None
        made = self._made.get("creator")
        if made is None:
            made = self._made["creator"] = self._makeCreator()
        return made


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
        @param tls: a L{PoolTLS} for an L{IPoolTLSTransport}; otherwise an
            C{IOpenSSLServerConnectionCreator} when the tunnel runs TLS
            (``tls=1/2``), else L{None} (see L{tlsArgument}).
        """

    def connect(
        reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        """
        Dial one pool connection to the server and connect C{protocol} to it
        (its C{makeConnection} is called once the stream is ready to carry
        bytes); fires with C{protocol}, or fails.

        @param tls: a L{PoolTLS} for an L{IPoolTLSTransport}; otherwise an
            C{IOpenSSLClientConnectionCreator} for ``tls=1/2``, else L{None}
            (see L{tlsArgument}).
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


class IPoolTLSTransport(INodePassTransport):
    """
    A pool transport whose methods take a L{PoolTLS} as their C{tls}
    argument, in every mode (C{mode == 0}: no TLS).  Without this
    declaration a transport is given the older forms (L{tlsArgument}).
    """


class IListeningPoolTransport(INodePassTransport):
    """
    A pool transport that serves the pool on a listener of its own, not on
    the tunnel TCP port (QUIC: the UDP port with the tunnel port's number).
    Its C{serverFactory} should then refuse TCP pool connections.
    """

    def listenPool(
        reactor: Any,
        address: tuple[str, int],
        poolFactory: IProtocolFactory,
        tls: Any,
        clientIP: str | None = None,
    ) -> IListeningPort:
        """
        Serve the pool on C{address} (host, port); the tunnel server calls it
        once the handshake is done and stops the port when the session ends.

        @param tls: what C{serverFactory} is given.
        @param clientIP: if given, connections from another IP are refused
            (the address the handshake came from).
        """


class ICredentialTransport(INodePassTransport):
    """
    A pool transport that runs its own TLS stack (QUIC).  When it does not
    provide L{IPoolTLSTransport} (which carries everything in one value), the
    server passes it its L{nodepass.tls.ServerCredentials} instead of a
    pyOpenSSL creator, and the client the TLS mode (C{1} or C{2}).
    """


class IALPNTransport(INodePassTransport):
    """
    A pool transport whose TLS ends must negotiate an application protocol.
    """

    alpn = Attribute(
        "The ALPN protocol names (a list of bytes) both TLS ends offer: the "
        "tunnel builds its TLS creators with them."
    )


class IDisconnectingTransport(INodePassTransport):
    """
    A pool transport that shares carrier connections between pool
    connections (HTTP/2, QUIC) and can drop them at once.
    """

    def disconnectAll() -> Deferred[None] | None:
        """
        Close every carrier connection this transport opened as a client;
        the tunnel client calls it when a session ends.  May return a
        Deferred that fires once they are closed.
        """


class IUncheckedPeerTransport(INodePassTransport):
    """
    A pool transport whose pool connections the server accepts from any
    address: it does not compare their peer IP with the handshake's
    (WebSocket, which often runs behind a proxy; dataplane spec §3.1).
    """


#: The optional abilities that plugins written before their interfaces
#: offered as plain attributes, with the interface each one means.
LEGACY_ABILITIES: tuple[tuple[str, InterfaceClass], ...] = (
    ("listenPool", IListeningPoolTransport),
    ("wantsCredentials", ICredentialTransport),
    ("alpn", IALPNTransport),
    ("disconnectAll", IDisconnectingTransport),
)


def declareAbilities(transport: Any, log: Logger | None = None) -> Any:
    """
    C{transport}, also declaring the interface of each optional ability it
    offers as a plain attribute only (C{listenPool}, a true
    C{wantsCredentials}, C{alpn}, C{disconnectAll}), as plugins written
    before those interfaces do.  Logs a deprecation warning through C{log}
    the first time it declares something for an object; a transport that
    declares its interfaces itself is returned untouched.
    """
    missing: list[tuple[str, InterfaceClass]] = []
    for attribute, interface in LEGACY_ABILITIES:
        if interface.providedBy(transport):
            continue
        value = getattr(transport, attribute, None)
        if value is None or value is False:
            continue
        missing.append((attribute, interface))
    if not missing:
        return transport
    alsoProvides(transport, *(interface for _, interface in missing))
    if log is not None:
        log.warn(
            "Pool transport {name!r} offers {attributes} without declaring {interfaces}: "
            "declare them (docs/plugins.md); the plain attributes are deprecated",
            name=getattr(transport, "name", transport),
            attributes=", ".join(attribute for attribute, _ in missing),
            interfaces=", ".join(interface.__name__ for _, interface in missing),
        )
    return transport


def tlsArgument(transport: Any, tls: PoolTLS, *, server: bool) -> Any:
    """
    What a tunnel passes C{transport} as its C{tls} argument: C{tls} itself
    for an L{IPoolTLSTransport}; otherwise the form transports took before
    L{PoolTLS}: L{None} in mode 0, else for an L{ICredentialTransport} the
    server's credentials (C{server}) or the client's mode, else the
    pyOpenSSL creator of that side.
    """
    if IPoolTLSTransport.providedBy(transport):
        return tls
    if not tls.mode:
        return None
    if ICredentialTransport.providedBy(transport):
        return tls.credentials if server else tls.mode
    return tls.creator()


def creatorOf(tls: Any) -> Any:
    """
    The pyOpenSSL creator in C{tls}: a L{PoolTLS} or, from a caller written
    before it, the creator itself or L{None} (for transports that accept
    both).
    """
    if isinstance(tls, PoolTLS):
        return tls.creator()
    return tls
