"""
Exception types shared by the NodePass modules.

Every exception raised on purpose by NodePass derives from L{NodePassError},
so callers can tell our failures apart from programming errors.
"""

from __future__ import annotations

__all__ = ["DialError", "NodePassError", "ResolveError", "StartupError", "URLError"]


class NodePassError(Exception):
    """
    Base class of every error NodePass raises deliberately.
    """


class URLError(NodePassError, ValueError):
    """
    A tunnel or master URL, or one of its parameters, is not acceptable.

    @ivar param: the name of the offending part: a query parameter name such
        as C{"slot"}, or one of C{"url"}, C{"scheme"}, C{"port"}, C{"target"},
        C{"key"} or C{"duration"} for structural problems.
    @ivar value: the offending text (never the tunnel key).
    @ivar allowed: a short description of what would have been accepted.

    C{str()} of the exception is always a single line.
    """

    param: str
    value: str
    allowed: str

    def __init__(self, param: str, value: str, allowed: str, message: str | None = None) -> None:
        if message is None:
            message = f"invalid value {value!r} for parameter {param!r}: expected {allowed}"
        # repr() of the pieces keeps the text on one line; normalise any line
        # break a caller-supplied message may still carry.
        message = " ".join(message.splitlines())
        super().__init__(message)
        self.param = param
        self.value = value
        self.allowed = allowed
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[URLError], tuple[str, str, str, str]]:
        return (type(self), (self.param, self.value, self.allowed, self.message))


class ResolveError(NodePassError):
    """
    A host name could not be resolved to an address.
    """


class DialError(NodePassError):
    """
    No connection could be made to any of the target addresses.
    """


class StartupError(NodePassError):
    """
    An instance cannot start (a port already in use, a role this version
    cannot run): reported as one line, and the process exits with status 1.
    """
