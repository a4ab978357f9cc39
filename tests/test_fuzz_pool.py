"""
Property tests for the pool ID exchange of L{nodepass.tunnel.pool} (dataplane spec §4.2).

A client pool connection fed any bytes in any chunks takes exactly the first 4 (plus the
nonce, when authenticated) as its ID, keeps the rest byte for byte for whoever takes it, and
holds at most a few bytes before that.  A parked server connection fed any bytes by a peer
whose transport stops when paused keeps at most L{PARKED_READ_LIMIT} plus one read, is closed
when nothing takes it, and hands over exactly what it kept when taken.  An authenticating
server connection parks only on the right proof, and keeps no more than a proof's worth
before it has one.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import Logger

from nodepass.tunnel import pool as poolModule
from nodepass.tunnel.pool import (
    CONTROL_ID,
    PARKED_READ_LIMIT,
    ClientPool,
    PoolConnection,
    ServerPool,
    poolConnection,
)

CLIENT_IP = "198.51.100.20"
QUIET = Logger(observer=lambda event: None)  # type: ignore[arg-type]
CUTS = st.lists(st.integers(0, 1 << 22), max_size=8)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    positions = sorted(cut % (len(data) + 1) for cut in cuts)
    pieces, start = [], 0
    for cut in [*positions, len(data)]:
        if cut > start:
            pieces.append(data[start:cut])
            start = cut
    return pieces


def _closed(conn: PoolConnection) -> bool:
    """
    Whether the connection was closed (this transport delivers C{connectionLost} at once).
    """
    transport: Any = conn.transport
    return bool(conn.closed or (transport is not None and transport.disconnecting))


def _wire(conn: PoolConnection) -> StringTransportWithDisconnection:
    transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", CLIENT_IP, 4000))
    transport.protocol = conn
    conn.makeConnection(transport)
    return transport


class Recorder:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost = 0

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self) -> None:
        self.lost += 1


def _clientPool(clock: Clock, authKey: bytes | None = None) -> ClientPool:
    kwargs: dict[str, Any] = {"log": QUIET}
    if authKey is not None:
        kwargs["authKey"] = authKey
    return ClientPool(clock, lambda conn: Deferred(), 1, 4, **kwargs)


# -- the client: reading the ID ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), CUTS, st.booleans())
def test_clientTakesTheFirstBytesAsItsID(data: bytes, cuts: list[int], authenticated: bool) -> None:
    """
    The first 4 bytes are the ID (20 with pool authentication: the ID then the nonce, which
    the client answers at once with its proof); everything after is kept, in order, for
    whoever takes the connection; fewer bytes leave it waiting with nothing parked.
    """
    clock = Clock()
    key = b"fuzz-key"
    pool = _clientPool(clock, key if authenticated else None)
    head = pool.idSize
    conn = poolConnection(pool, False)
    transport = _wire(conn)
    for piece in _pieces(data, cuts):
        conn.dataReceived(piece)
        assert len(conn._idBuffer) < head
    if len(data) < head:
        assert conn.state == "id" and conn.ident == "" and dict(pool.idle) == {}
        assert transport.value() == b""
        return
    ident = data[:4].hex()
    assert conn.ident == ident
    assert conn.state == "parked"
    assert pool.idle[ident] is conn
    assert b"".join(conn.pending) == data[head:]
    if authenticated:
        nonce = data[4:head]
        proof = poolModule.poolProof(key, data[:4], nonce)
        assert transport.value() == proof
    else:
        assert transport.value() == b""
    recorder = Recorder()
    got: list[PoolConnection] = []
    pool.outgoingGet(ident).addCallback(got.append)
    assert got == [conn]
    conn.attach(recorder)
    assert b"".join(recorder.data) == data[head:]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=4, max_size=4), st.binary(max_size=16))
def test_clientRefusesAnIDAlreadyParked(ident: bytes, rest: bytes) -> None:
    """
    A second connection announcing an ID that is parked already is closed and never parked.
    """
    pool = _clientPool(Clock())
    first = poolConnection(pool, False)
    _wire(first)
    first.dataReceived(ident)
    second = poolConnection(pool, False)
    _wire(second)
    second.dataReceived(ident + rest)
    assert second.state == "rejected"
    assert _closed(second)
    assert pool.idle[ident.hex()] is first


# -- the server: a parked connection ----------------------------------------------------------


def _serverPool(clock: Clock, **kwargs: Any) -> ServerPool:
    randoms = iter(bytes([n]) * 32 for n in range(1, 250))
    return ServerPool(
        clock, 16, randomBytes=lambda n: next(randoms)[:n], log=QUIET, getTimeout=5.0, **kwargs
    )


@settings(max_examples=80, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=256),
        st.integers(1, 3).map(lambda n: b"\xab" * (PARKED_READ_LIMIT // 2 * n + 1)),
    ),
    CUTS,
    st.sampled_from(["taken", "left", "eof"]),
)
def test_parkedServerConnectionKeepsLittle(data: bytes, cuts: list[int], then: str) -> None:
    """
    Bytes on a parked server connection (a peer sending before the signal arrives): read
    only while the transport is not paused, kept at most L{PARKED_READ_LIMIT} plus one read;
    when taken, the consumer gets exactly what was kept and reading resumes; when nothing
    takes it, the connection is closed after the get timeout (at once on EOF when nothing
    arrived).
    """
    clock = Clock()
    pool = _serverPool(clock)
    control: Any = pool.factory(False).buildProtocol(None)
    _wire(control)
    conn: Any = pool.factory(False).buildProtocol(None)
    transport = _wire(conn)
    assert conn.state == "parked"
    ident = conn.ident
    delivered = b""
    biggest = 0
    for piece in _pieces(data, cuts):
        if transport.producerState != "producing":
            break  # a paused transport delivers nothing more
        conn.dataReceived(piece)
        delivered += piece
        biggest = max(biggest, len(piece))
        kept = sum(map(len, conn.pending))
        assert kept == len(delivered)
        assert kept <= PARKED_READ_LIMIT + biggest
    if len(delivered) > PARKED_READ_LIMIT:
        assert transport.producerState == "paused"
    if then == "taken":
        got: list[PoolConnection] = []
        pool.outgoingGet(ident).addCallback(got.append)
        assert got == [conn]
        assert transport.producerState == "producing"
        recorder = Recorder()
        conn.attach(recorder)
        assert b"".join(recorder.data) == delivered
        clock.advance(60)
        assert not _closed(conn)
    elif then == "left":
        clock.advance(pool.getTimeout + 1)
        assert _closed(conn) == bool(delivered)
        assert (ident in pool.idle) is not bool(delivered)
    else:
        conn.readConnectionLost()
        if not delivered:
            assert _closed(conn) and ident not in pool.idle
        clock.advance(pool.getTimeout + 1)
        assert _closed(conn)
        assert ident not in pool.idle
    assert pool.idle.get(CONTROL_ID) is control


# -- the server: authenticated pool connections -------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=80),
        st.just(b"proof"),
        st.binary(max_size=20).map(lambda tail: b"proof" + tail),
    ),
    CUTS,
)
def test_authenticatingServerParksOnlyOnTheProof(data: bytes, cuts: list[int]) -> None:
    """
    With pool authentication, a new connection gets its ID and a nonce and is parked only
    when the first 32 bytes it sends are the HMAC of both under the key; any other 32 bytes
    close it, fewer keep it waiting (at most 31 bytes kept) until the proof timeout closes
    it; whatever follows a good proof is kept for the user.
    """
    clock = Clock()
    key = b"fuzz-key"
    pool = _serverPool(clock, authKey=key)
    control: Any = pool.factory(False).buildProtocol(None)
    controlTransport = _wire(control)
    sent = controlTransport.value()
    assert len(sent) == 4 + poolModule.AUTH_NONCE
    proof = hmac.new(key, b"nodepass-pool\0" + sent[:4] + sent[4:], hashlib.sha256).digest()
    assert proof == poolModule.poolProof(key, sent[:4], sent[4:])
    if data.startswith(b"proof"):
        data = proof + data[len(b"proof") :]
    for piece in _pieces(data, cuts):
        if _closed(control):
            break
        control.dataReceived(piece)
        if control.state == "auth":
            assert len(control._idBuffer) < poolModule.AUTH_PROOF
    if len(data) < poolModule.AUTH_PROOF:
        assert control.state == "auth" and CONTROL_ID not in pool.idle
        clock.advance(poolModule.AUTH_TIMEOUT + 1)
        assert _closed(control) and CONTROL_ID not in pool.idle
        return
    if data[: poolModule.AUTH_PROOF] == proof:
        assert CONTROL_ID in pool.idle and pool.idle[CONTROL_ID] is control
        assert b"".join(control.pending) == data[poolModule.AUTH_PROOF :]
    else:
        assert _closed(control)
        assert CONTROL_ID not in pool.idle
        assert pool.refusedProofs == 1
