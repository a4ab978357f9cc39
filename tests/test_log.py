"""
Tests for L{nodepass.log}: the NodePass line layout, colours, level filtering, failures,
the CHECK_POINT text the master parses and the C{Init log level} line.
"""

from __future__ import annotations

import io
import re
import time
from typing import Any

import pytest
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure

from nodepass.log import (
    LEVELS,
    NodePassLogObserver,
    formatTimestamp,
    initLine,
    levelOf,
    logEvent,
    wants,
)
from nodepass.stats import checkpointLine

#: 2026-01-02 16:37:20.123 local time, the instant of the spec's example line (§15.10).
WHEN = time.mktime((2026, 1, 2, 16, 37, 20, 0, 0, -1)) + 0.123
STAMP = "2026-01-02 16:37:20.123"

#: The master's regular expression (dataplane spec §11.3).
MASTER_RE = re.compile(
    r"CHECK_POINT\|MODE=(\d+)\|PING=(\d+)ms\|POOL=(\d+)\|TCPS=(\d+)\|UDPS=(\d+)"
    r"\|TCPRX=(\d+)\|TCPTX=(\d+)\|UDPRX=(\d+)\|UDPTX=(\d+)"
)

LINE_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}  (DEBUG|INFO|WARN|ERROR|EVENT)  .*$"
)

WORDS = {"debug": "DEBUG", "info": "INFO", "warn": "WARN", "error": "ERROR", "event": "EVENT"}
COLOURS = {"debug": "34", "info": "32", "warn": "33", "error": "31", "event": "36"}


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def event(
    text: str = "hello",
    level: LogLevel = LogLevel.info,
    namespace: str = "nodepass.test",
    **extra: Any,
) -> LogEvent:
    return {
        "log_format": text,
        "log_level": level,
        "log_namespace": namespace,
        "log_time": WHEN,
        **extra,
    }


def eventAt(level: str) -> LogEvent:
    """
    An event that NodePass classifies at C{level}.
    """
    if level == "event":
        return event("CHECK_POINT", npEvent=True)
    twisted = {
        "debug": LogLevel.debug,
        "info": LogLevel.info,
        "warn": LogLevel.warn,
        "error": LogLevel.error,
    }[level]
    return event(f"at {level}", twisted)


def observe(level: str = "info", color: bool | None = False) -> tuple[NodePassLogObserver, Any]:
    out = io.StringIO()
    return NodePassLogObserver(out, level, color=color), out


# --- layout -------------------------------------------------------------------------------


def test_lineLayout() -> None:
    observer, out = observe()
    observer(event("Client started: {url}", url="client://x"))
    assert out.getvalue() == f"{STAMP}  INFO  Client started: client://x\n"
    assert LINE_RE.match(out.getvalue().rstrip("\n"))


@pytest.mark.parametrize("level", LEVELS)
def test_levelWords(level: str) -> None:
    observer, out = observe("debug")
    observer(eventAt(level))
    assert out.getvalue().startswith(f"{STAMP}  {WORDS[level]}  ")


def test_timestampMilliseconds() -> None:
    whole = int(WHEN)
    assert formatTimestamp(whole) == "2026-01-02 16:37:20.000"
    assert formatTimestamp(whole + 0.0004) == "2026-01-02 16:37:20.000"
    assert formatTimestamp(whole + 0.0016) == "2026-01-02 16:37:20.002"
    assert formatTimestamp(whole + 0.999) == "2026-01-02 16:37:20.999"
    # Rounding up to a full second carries into the seconds.
    assert formatTimestamp(whole + 0.9996) == "2026-01-02 16:37:21.000"


def test_missingTimeUsesTheClock() -> None:
    out = io.StringIO()
    observer = NodePassLogObserver(out, "info", color=False, now=lambda: WHEN)
    observer({"log_format": "x", "log_level": LogLevel.info, "log_namespace": "nodepass"})
    assert out.getvalue() == f"{STAMP}  INFO  x\n"


def test_flushesEveryLine() -> None:
    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    out = Counting()
    observer = NodePassLogObserver(out, "info", color=False)
    observer(event("one"))
    observer(event("two"))
    assert out.flushes == 2


def test_closedStreamIsIgnored() -> None:
    out = io.StringIO()
    observer = NodePassLogObserver(out, "info", color=False)
    out.close()
    observer(event("into the void"))


def test_brokenPipeIsIgnored() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError()

    NodePassLogObserver(Broken(), "info", color=False)(event("lost"))


def test_unknownLevelIsRejected() -> None:
    with pytest.raises(ValueError, match="verbose"):
        NodePassLogObserver(io.StringIO(), "verbose")


def test_throughALogger() -> None:
    observer, out = observe()
    log = Logger(namespace="nodepass.relay", observer=observer)
    log.info("relay closed {peer} rx={rx}", peer="1.2.3.4:5", rx=10)
    assert out.getvalue().endswith("  INFO  relay closed 1.2.3.4:5 rx=10\n")
    assert LINE_RE.match(out.getvalue().rstrip("\n"))


# --- colour -------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_colourWhenAsked(level: str) -> None:
    observer, out = observe("debug", color=True)
    observer(eventAt(level))
    word = f"\x1b[{COLOURS[level]}m{WORDS[level]}\x1b[0m"
    assert out.getvalue().startswith(f"{STAMP}  {word}  ")


def test_noColourOnAPlainStreamByDefault() -> None:
    out = io.StringIO()
    NodePassLogObserver(out, "info")(event())
    assert "\x1b" not in out.getvalue()
    assert out.getvalue() == f"{STAMP}  INFO  hello\n"


def test_colourOnATerminalByDefault() -> None:
    out = TTY()
    NodePassLogObserver(out, "info")(event())
    assert out.getvalue() == f"{STAMP}  \x1b[32mINFO\x1b[0m  hello\n"


def test_colourCanBeTurnedOffOnATerminal() -> None:
    out = TTY()
    NodePassLogObserver(out, "info", color=False)(event())
    assert "\x1b" not in out.getvalue()


def test_streamWithoutIsattyHasNoColour() -> None:
    class Bare:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    out = Bare()
    NodePassLogObserver(out, "info")(event())  # type: ignore[arg-type]
    assert out.text == f"{STAMP}  INFO  hello\n"


# --- filtering ----------------------------------------------------------------------------


@pytest.mark.parametrize("configured", [*LEVELS, "none"])
def test_levelFiltering(configured: str) -> None:
    observer, out = observe(configured)
    for level in LEVELS:
        observer(eventAt(level))
    printed = [line.split("  ")[1] for line in out.getvalue().splitlines()]
    if configured == "none":
        expected: list[str] = []
    else:
        expected = [WORDS[level] for level in LEVELS[LEVELS.index(configured) :]]
    assert printed == expected


@pytest.mark.parametrize("configured", [*LEVELS, "none"])
def test_wantsAgreesWithTheObserver(configured: str) -> None:
    """
    L{wants} answers, without building an event, what the observer would print.
    """
    observer, out = observe(configured)
    for level in LEVELS:
        before = out.getvalue()
        observer(eventAt(level))
        assert wants(configured, level) == (out.getvalue() != before), level


def test_noneHidesEvenCheckpoints() -> None:
    observer, out = observe("none")
    observer(event(checkpointLine(1, 0, 0, 0, 0, 0, 0, 0, 0), npEvent=True))
    observer(event("boom", LogLevel.critical))
    assert out.getvalue() == ""


@pytest.mark.parametrize("configured", ["none", "event", "error", "info"])
def test_npAlwaysIgnoresTheLevel(configured: str) -> None:
    observer, out = observe(configured)
    observer(event("API Key created: k", LogLevel.info, npAlways=True))
    assert out.getvalue() == f"{STAMP}  INFO  API Key created: k\n"


def test_eventLevelShowsOnlyEvents() -> None:
    observer, out = observe("event")
    observer(event("not shown", LogLevel.error))
    observer(event("not shown", LogLevel.critical))
    observer(event("CHECK_POINT|x", npEvent=True))
    assert out.getvalue() == f"{STAMP}  EVENT  CHECK_POINT|x\n"


def test_otherNamespacesAreDemotedToDebug() -> None:
    assert levelOf(event("Starting factory", namespace="twisted.internet.protocol")) == "debug"
    assert levelOf(event("x", namespace="")) == "debug"
    assert levelOf({"log_format": "no namespace", "log_level": LogLevel.info}) == "debug"
    assert levelOf(event("mine", namespace="nodepass")) == "info"
    assert levelOf(event("mine", namespace="nodepass.tunnel.single")) == "info"
    # Only info is demoted: warnings and errors from anywhere stay visible.
    assert levelOf(event("w", LogLevel.warn, namespace="twisted.x")) == "warn"
    assert levelOf(event("e", LogLevel.error, namespace="twisted.x")) == "error"

    info, infoOut = observe("info")
    info(event("Starting factory", namespace="twisted.internet.protocol"))
    assert infoOut.getvalue() == ""
    debug, debugOut = observe("debug")
    debug(event("Starting factory", namespace="twisted.internet.protocol"))
    assert debugOut.getvalue() == f"{STAMP}  DEBUG  Starting factory\n"


def test_criticalIsError() -> None:
    assert levelOf(event("x", LogLevel.critical)) == "error"
    observer, out = observe("error")
    observer(event("fatal", LogLevel.critical))
    assert out.getvalue() == f"{STAMP}  ERROR  fatal\n"


def test_npEventWinsOverItsTwistedLevel() -> None:
    assert levelOf(event("x", LogLevel.debug, namespace="twisted", npEvent=True)) == "event"


# --- failures -----------------------------------------------------------------------------


def failure() -> Failure:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        return Failure()
    raise AssertionError("unreachable")


@pytest.mark.parametrize("level", ["info", "warn", "error"])
def test_failureOnOneLineAboveDebug(level: str) -> None:
    observer, out = observe(level)
    observer(event("relay broke", LogLevel.critical, log_failure=failure()))
    assert out.getvalue() == f"{STAMP}  ERROR  relay broke: ZeroDivisionError: division by zero\n"


def test_failureWithoutAMessage() -> None:
    observer, out = observe()
    observer(event("", LogLevel.error, log_failure=failure()))
    assert out.getvalue() == f"{STAMP}  ERROR  ZeroDivisionError: division by zero\n"


def test_failureTracebackAtDebug() -> None:
    observer, out = observe("debug")
    observer(event("relay broke", LogLevel.critical, log_failure=failure()))
    lines = out.getvalue().splitlines()
    assert lines[0] == f"{STAMP}  ERROR  relay broke: ZeroDivisionError: division by zero"
    assert len(lines) > 2
    # Every traceback line carries the prefix, so the output stays line-parseable.
    assert all(LINE_RE.match(line) for line in lines)
    assert any("Traceback" in line for line in lines)
    assert "ZeroDivisionError" in lines[-1]


def test_failureThroughLoggerFailure() -> None:
    observer, out = observe()
    log = Logger(namespace="nodepass.x", observer=observer)
    try:
        raise ConnectionError("gone")
    except ConnectionError:
        log.failure("exchange failed")
    assert out.getvalue().endswith("  ERROR  exchange failed: ConnectionError: gone\n")
    assert out.getvalue().count("\n") == 1


# --- CHECK_POINT --------------------------------------------------------------------------


def test_checkpointLineText() -> None:
    line = checkpointLine(1, 3, 63, 2, 1, 1000, 2000, 30, 40)
    assert line == (
        "CHECK_POINT|MODE=1|PING=3ms|POOL=63|TCPS=2|UDPS=1|TCPRX=1000|TCPTX=2000|UDPRX=30|UDPTX=40"
    )
    match = MASTER_RE.search(line)
    assert match is not None
    assert [int(group) for group in match.groups()] == [1, 3, 63, 2, 1, 1000, 2000, 30, 40]


def test_checkpointLineWithBigCounters() -> None:
    big = 2**63 - 1
    match = MASTER_RE.search(checkpointLine(2, 0, 0, 0, 0, big, big, big, big))
    assert match is not None
    assert int(match.group(6)) == big


def test_checkpointAsItAppearsOnStdout() -> None:
    """
    The example line of dataplane spec §15.10, with colour on, byte for byte.
    """
    captured: list[LogEvent] = []
    log = Logger(namespace="nodepass.tunnel.single", observer=captured.append)
    logEvent(log, checkpointLine(1, 3, 63, 0, 0, 0, 0, 0, 0))
    out = io.StringIO()
    observer = NodePassLogObserver(out, "info", color=True)
    observer({**captured[0], "log_time": WHEN})
    assert out.getvalue() == (
        "2026-01-02 16:37:20.123  \x1b[36mEVENT\x1b[0m  "
        "CHECK_POINT|MODE=1|PING=3ms|POOL=63|TCPS=0|UDPS=0|TCPRX=0|TCPTX=0|UDPRX=0|UDPTX=0\n"
    )
    assert MASTER_RE.search(out.getvalue())


def test_checkpointWithoutColourMatchesTheMaster() -> None:
    observer, out = observe("event")
    observer(event(checkpointLine(1, 0, 0, 0, 0, 5, 6, 7, 8), npEvent=True))
    match = MASTER_RE.search(out.getvalue())
    assert match is not None
    assert match.group(6, 7, 8, 9) == ("5", "6", "7", "8")


def test_logEventEmitsAnEventLevelMessage() -> None:
    captured: list[LogEvent] = []
    text = checkpointLine(1, 0, 0, 0, 0, 0, 0, 0, 0)
    logEvent(Logger(namespace="nodepass", observer=captured.append), text)
    assert formatEvent(captured[0]) == text
    assert levelOf(captured[0]) == "event"


# --- Init log level -----------------------------------------------------------------------


def initEvents(level: str) -> list[LogEvent]:
    captured: list[LogEvent] = []
    initLine(Logger(namespace="nodepass", observer=captured.append), level)
    return captured


@pytest.mark.parametrize(
    ("level", "word"),
    [("debug", "DEBUG"), ("warn", "WARN"), ("error", "ERROR"), ("event", "EVENT")],
)
def test_initLineAtItsOwnLevel(level: str, word: str) -> None:
    events = initEvents(level)
    assert len(events) == 1
    assert formatEvent(events[0]) == f"Init log level: {word}"
    assert levelOf(events[0]) == level
    # And an observer at that level prints it.
    observer, out = observe(level)
    observer({**events[0], "log_time": WHEN})
    assert out.getvalue() == f"{STAMP}  {word}  Init log level: {word}\n"


@pytest.mark.parametrize("level", ["info", "none"])
def test_noInitLineForInfoOrNone(level: str) -> None:
    assert initEvents(level) == []
