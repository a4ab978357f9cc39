"""
Property tests for L{nodepass.tunnel.udp.DatagramCodec}: framed datagrams survive any
coalescing or splitting of the stream, the decoder never keeps more than one unfinished frame
(at most 65,536 bytes), never raises, and Go-compatible unframed mode passes every read on as
one datagram.
"""

from __future__ import annotations

import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodepass.tunnel.udp import DatagramCodec

#: The most an unfinished frame can hold: a 2-byte length and up to 65,535 bytes less one.
MAX_KEPT = 2 + 0xFFFF - 1

DATAGRAMS = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"", b"\x00" * 1500]),
        st.integers(60_000, 0xFFFF).map(lambda n: b"\x5a" * n),
    ),
    max_size=6,
)
CUTS = st.lists(st.integers(0, 1 << 22), max_size=12)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    positions = sorted(cut % (len(data) + 1) for cut in cuts)
    pieces, start = [], 0
    for cut in [*positions, len(data)]:
        if cut > start:
            pieces.append(data[start:cut])
            start = cut
    return pieces


@settings(max_examples=150, deadline=None)
@given(DATAGRAMS, CUTS)
@example([b"\xff" * 0xFFFF, b""], [1, 2, 3, 0xFFFF + 2])
def test_framedDatagramsSurviveAnyReads(datagrams: list[bytes], cuts: list[int]) -> None:
    """
    Our peers' framing: what one side encodes, the other decodes to the same datagrams in
    the same order, however the stream is cut into reads, and the decoder keeps only the
    unfinished frame.
    """
    sender, receiver = DatagramCodec(framed=True), DatagramCodec(framed=True)
    stream = b"".join(sender.encode(datagram) for datagram in datagrams)
    got: list[bytes] = []
    consumed = 0
    for piece in _pieces(stream, cuts):
        got.extend(receiver.decode(piece))
        consumed += len(piece)
        assert len(receiver._buffer) <= MAX_KEPT
        assert sum(2 + len(d) for d in got) + len(receiver._buffer) == consumed
    assert got == datagrams
    assert receiver._buffer == b""


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), CUTS)
@example(b"\xff\xff" + b"x" * 100, [])
@example(b"\x00", [])
def test_framedDecoderOnGarbage(data: bytes, cuts: list[int]) -> None:
    """
    Any bytes: no exception, every datagram it gives is one whole frame of the input, and
    what it keeps is the rest (bounded by one frame).
    """
    codec = DatagramCodec(framed=True)
    out: list[bytes] = []
    for piece in _pieces(data, cuts):
        out.extend(codec.decode(piece))
        assert len(codec._buffer) <= MAX_KEPT
    rebuilt = b"".join(struct.pack("!H", len(d)) + d for d in out) + codec._buffer
    assert rebuilt == data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=100), max_size=6))
def test_unframedPassesEachReadOn(reads: list[bytes]) -> None:
    """
    With a Go peer (no framing) each read is one datagram, unchanged, and nothing is kept.
    """
    codec = DatagramCodec(framed=False)
    for read in reads:
        assert codec.decode(read) == [read]
        assert codec.encode(read) == read
        assert codec._buffer == b""
