"""NodePass log lines on top of :mod:`twisted.logger`.

Every line looks like the Go reference's::

    2026-01-02 16:37:20.123  INFO  Client started: client://********@...

with the level word wrapped in an ANSI colour when (and only when) the output
is a terminal.  Levels, from lowest to highest: ``debug``, ``info``, ``warn``,
``error``, ``event``; ``log=none`` prints nothing at all.  ``event`` is not a
Twisted level: code marks an event-level message with the ``npEvent=True``
key (see :func:`logEvent`), which is how the periodic ``CHECK_POINT`` line is
emitted.  An event marked ``npAlways=True`` is printed whatever the level,
even with ``log=none``: the master uses it for the one line an operator cannot
do without (the API key, printed once when it is created).

Messages from outside the ``nodepass`` namespace (Twisted's own "Starting
factory" chatter, for instance) are demoted from info to debug so that an
operator's info-level log only shows what NodePass itself says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
)
from zope.interface import implementer

#: NodePass level names in ascending order of importance.
LEVELS = ("debug", "info", "warn", "error", "event")

_RANK = {name: rank for rank, name in enumerate(LEVELS)}

_WORDS = {
    "debug": ("DEBUG", "34"),
    "info": ("INFO", "32"),
    "warn": ("WARN", "33"),
    "error": ("ERROR", "31"),
    "event": ("EVENT", "36"),
}

_FROM_TWISTED = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warn",
    LogLevel.error: "error",
    LogLevel.critical: "error",
}


def levelOf(event: LogEvent) -> str:
    """
    The NodePass level of a Twisted log event.
    """
    if event.get("npEvent"):
        return "event"
    level = _FROM_TWISTED.get(event.get("log_level", LogLevel.info), "info")
    namespace = event.get("log_namespace") or ""
    if level == "info" and not namespace.startswith("nodepass"):
        return "debug"
    return level


def wants(configured: str, level: str) -> bool:
    """
    Whether a NodePass log configured at C{configured} (a L{LEVELS} name or
    C{"none"}) prints messages of C{level}.

    Hot paths ask this once, when they are built, and skip building events
    (and the addresses they name) that the log would drop anyway.
    """
    return _RANK[level] >= _RANK.get(configured, len(LEVELS))


def formatTimestamp(when: float) -> str:
    """
    Local time with milliseconds, as ``2006-01-02 15:04:05.000``.
    """
    whole = int(when)
    millis = round((when - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole)) + f".{millis:03d}"


def formatLine(level: str, message: str, when: float, color: bool) -> str:
    """
    One complete log line (with its newline) in the NodePass layout.
    """
    word, code = _WORDS[level]
    if color:
        word = f"\x1b[{code}m{word}\x1b[0m"
    return f"{formatTimestamp(when)}  {word}  {message}\n"


def _message(event: LogEvent, includeTraceback: bool) -> str:
    text = formatEvent(event)
    # Legacy twisted.python.log.err events (plugin scanning uses it) carry
    # the failure under "failure".
    failure = event.get("log_failure") or event.get("failure")
    if failure is not None:
        reason = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        text = f"{text}: {reason}" if text else reason
        if includeTraceback:
            text = text + "\n" + failure.getTraceback().rstrip("\n")
    return text


@implementer(ILogObserver)
class NodePassLogObserver:
    """
    Write events at or above C{level} to C{out} as NodePass log lines.

    @param out: a text stream; flushed after every line so that a supervising
        master sees CHECK_POINT lines at once.
    @param level: one of L{LEVELS} or C{"none"}.
    @param color: wrap level words in ANSI colours; L{None} means "only when
        C{out} is a terminal".
    """

    def __init__(
        self,
        out: IO[str],
        level: str = "info",
        color: bool | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        if level != "none" and level not in _RANK:
            raise ValueError(f"unknown log level {level!r}")
        self._out = out
        self._min = _RANK.get(level, len(LEVELS))
        self._debug = level == "debug"
        if color is None:
            isatty = getattr(out, "isatty", None)
            color = bool(isatty and isatty())
        self._color = color
        self._now = now

    def __call__(self, event: LogEvent) -> None:
        level = levelOf(event)
        if _RANK[level] < self._min and not event.get("npAlways"):
            return
        when = event.get("log_time") or self._now()
        lines = _message(event, self._debug).split("\n")
        text = "".join(formatLine(level, line, when, self._color) for line in lines)
        try:
            self._out.write(text)
            self._out.flush()
        except (OSError, ValueError):
            # Nowhere left to log to (closed pipe): never take the process down.
            pass


def defaultLogger() -> Logger:
    """
    A logger of our own namespace that publishes to Twisted's global log
    publisher: what an object logs through when its owner gave it no logger
    (standalone use, tests).

    Inside a process that runs several instances, each instance's objects
    log through the logger its composition root made for it
    (C{Logger(namespace="nodepass", observer=...)}), so every line is
    attributed to its instance; data-plane modules have no module-level
    logger for that reason.
    """
    return Logger(namespace="nodepass")


def logEvent(logger: Logger, fmt: str, **kwargs: Any) -> None:
    """
    Emit C{fmt} at the NodePass EVENT level.
    """
    logger.info(fmt, npEvent=True, **kwargs)


def initLine(logger: Logger, level: str) -> None:
    """
    The Go reference's first line, ``Init log level: LEVEL``, printed at that
    level when the level is not the default.
    """
    if level in ("debug", "warn", "error", "event"):
        word = _WORDS[level][0]
        emit = {
            "debug": logger.debug,
            "warn": logger.warn,
            "error": logger.error,
        }.get(level)
        if emit is None:
            logEvent(logger, "Init log level: {name}", name=word)
        else:
            emit("Init log level: {name}", name=word)
