"""
Protocol blocking by sniffing the first bytes of an accepted TCP connection (spec §10.5).

The accepting side waits for L{PEEK_SIZE} bytes, then calls L{detect}.  If the connection ends
(or the read fails) before that many bytes arrived, NodePass v1.14.0 does not block it and
relays what was received; L{detect} reproduces that by returning C{None} for any prefix shorter
than L{PEEK_SIZE}, so a caller may pass whatever it has at that point.
"""

from __future__ import annotations

__all__ = ["PEEK_SIZE", "detect", "needsSniff"]

#: How many bytes are peeked before deciding.
PEEK_SIZE = 8

_SOCKS = "1"
_HTTP = "2"
_TLS = "3"

# Method token: 1 to 7 upper-case letters followed by a space, within the first 8 bytes.
_MAX_METHOD_LENGTH = PEEK_SIZE - 1

_TLS_HANDSHAKE = 0x16


def needsSniff(block: str) -> bool:
    """
    Whether the C{block} parameter enables any protocol class (contains C{1}, C{2} or C{3}).
    """
    return _SOCKS in block or _HTTP in block or _TLS in block


def _isUpper(byte: int) -> bool:
    return 0x41 <= byte <= 0x5A  # A-Z


def _isHTTP(peek: bytes) -> bool:
    if not _isUpper(peek[0]):
        return False
    for length, byte in enumerate(peek[1:], start=1):
        if byte == 0x20:  # space ends a 1-7 letter method token
            return True
        if not _isUpper(byte) or length >= _MAX_METHOD_LENGTH:
            return False
    return False


def detect(data: bytes, block: str) -> str | None:
    """
    Classify the first bytes of a connection for the classes enabled by C{block}.

    Rules (checked in this order on the first L{PEEK_SIZE} bytes C{b}):
      - C{1}: C{b[0]=0x04}, C{b[1]} in C{{0x01, 0x02}} -> C{"SOCKS4"};
        C{b[0]=0x05}, C{0x01 <= b[1] <= 0x03} -> C{"SOCKS5"};
      - C{2}: a method token of 1-7 upper-case ASCII letters followed by a space -> C{"HTTP"};
      - C{3}: C{b[0]=0x16} -> C{"TLS"}.

    @param data: the bytes received so far; only the first L{PEEK_SIZE} are examined.  Fewer
        than L{PEEK_SIZE} bytes means the connection ended early, which never blocks.
    @param block: the C{block} parameter value (digits C{1}, C{2}, C{3} enable classes).
    @return: the protocol name to block, or C{None}.
    """
    if len(data) < PEEK_SIZE:
        return None
    peek = data[:PEEK_SIZE]
    if _SOCKS in block:
        if peek[0] == 0x04 and peek[1] in (0x01, 0x02):
            return "SOCKS4"
        if peek[0] == 0x05 and 0x01 <= peek[1] <= 0x03:
            return "SOCKS5"
    if _HTTP in block and _isHTTP(peek):
        return "HTTP"
    if _TLS in block and peek[0] == _TLS_HANDSHAKE:
        return "TLS"
    return None
