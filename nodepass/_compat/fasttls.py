"""Whether pool connections may use L{nodepass.fasttls} (TLS over the stdlib C{ssl} module).

What the fast path relies on, checked once:
  - Python's C{ssl} module with memory BIOs (C{ssl.MemoryBIO}, C{SSLContext.wrap_bio}), TLS 1.3
    (C{ssl.HAS_TLSv1_3}, OpenSSL 1.1.1 or later) and C{SSLContext.num_tickets};
  - L{nodepass._compat.directwrite.directWriter}, which sends on a Twisted TCP connection at once when
    nothing is queued, through Twisted's private buffer fields (it checks them itself and
    falls back to C{transport.write}).  Without it the fast path still works; ciphertext is
    then queued behind the transport's buffer as with Twisted's own TLS layer.

One switch turns the fast path off for the whole process: C{NP_FAST_TLS=0}, read by the entry
point through L{configure} (or L{setEnabled} from code).  Off, or when a check fails (logged
once), pool connections use Twisted's L{TLSMemoryBIOProtocol} over pyOpenSSL, as before.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger

from nodepass.log import defaultLogger

#: The environment variable of the switch: C{0} turns the fast path off.
SWITCH = "NP_FAST_TLS"

#: The oldest OpenSSL the stdlib module may be linked with (TLS 1.3 and C{num_tickets}).
MINIMUM_OPENSSL = (1, 1, 1)

_enabled = True
_checked: bool | None = None
_sender: Callable[[Any], Callable[[bytes], object]] | None = None


def configure(environ: Mapping[str, str]) -> None:
    """
    Read the switch from C{environ} (the entry point's environment): C{NP_FAST_TLS=0} turns
    the fast path off; anything else leaves it on.
    """
    setEnabled(environ.get(SWITCH, "").strip() != "0")


def setEnabled(enabled: bool) -> None:
    """
    Turn the fast path on or off for connections made from now on.
    """
    global _enabled
    _enabled = enabled


def missing() -> list[str]:
    """
    What the fast path needs and this Python lacks (empty when it can run).
    """
    lacking = []
    for name in ("MemoryBIO", "SSLObject", "TLSVersion", "HAS_TLSv1_3"):
        if not hasattr(ssl, name):
            lacking.append(f"ssl.{name}")
    if not getattr(ssl, "HAS_TLSv1_3", False):
        lacking.append("TLS 1.3 in the ssl module")
    if tuple(ssl.OPENSSL_VERSION_INFO[:3]) < MINIMUM_OPENSSL:
        lacking.append(f"OpenSSL >= 1.1.1 (have {ssl.OPENSSL_VERSION})")
    for name in ("wrap_bio", "num_tickets", "minimum_version"):
        if not hasattr(ssl.SSLContext, name):
            lacking.append(f"ssl.SSLContext.{name}")
    return lacking


def available(log: Logger | None = None) -> bool:
    """
    Whether the fast path is on and can run here.  The first time it cannot, says why, once,
    through C{log} (by default, one publishing to the global log publisher).
    """
    global _checked
    if not _enabled:
        return False
    if _checked is None:
        lacking = missing()
        _checked = not lacking
        if lacking:
            (log if log is not None else defaultLogger()).warn(
                "Fast TLS path unavailable ({missing}): pool connections use Twisted's TLS layer",
                missing=", ".join(lacking),
            )
    return _checked


def sender(transport: Any) -> Callable[[bytes], object]:
    """
    How the fast path writes ciphertext to C{transport}:
    L{nodepass._compat.directwrite.directWriter} when it is there, else C{transport.write}.
    """
    global _sender
    if _sender is None:
        from nodepass._compat import directwrite

        directWriter = getattr(directwrite, "directWriter", None)
        if directWriter is None:
            defaultLogger().warn(
                "Fast TLS path: nodepass._compat.directwrite.directWriter is gone; "
                "ciphertext is queued"
            )
            _sender = _queued
        else:
            _sender = directWriter
    return _sender(transport)


def _queued(transport: Any) -> Callable[[bytes], object]:
    return transport.write  # type: ignore[no-any-return]
