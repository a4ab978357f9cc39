"""Tests for L{nodepass.master.events}: SSE framing, fan-out, keepalive, backpressure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import treq
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import Request

from nodepass.master.events import (
    KEEPALIVE_INTERVAL,
    LOG_LINE_LIMIT,
    MAX_EVENT_BYTES,
    RETRY_BLOCK,
    EventHub,
    EventTooLarge,
    encodeJSON,
    formatEvent,
    formatTime,
    truncateLogLine,
)

SAMPLES = Path("/work/shared/reference/api-samples")
URL = "http://127.0.0.1:18090/api/v1/events"


def _instance(id: str = "b693e2c5", **changes: Any) -> dict[str, Any]:
    instance: dict[str, Any] = {
        "id": id,
        "alias": "srv1",
        "type": "server",
        "status": "running",
        "url": "server://127.0.0.1:19101/127.0.0.1:19102?log=debug",
        "config": "server://127.0.0.1:19101/127.0.0.1:19102?block=0&dial=auto",
        "restart": False,
        "meta": {"peer": {"sid": "", "type": "", "alias": ""}, "tags": {}},
        "mode": 1,
        "ping": 0,
        "pool": 0,
        "tcps": 0,
        "udps": 0,
        "tcprx": 0,
        "tcptx": 0,
        "udprx": 0,
        "udptx": 0,
    }
    instance.update(changes)
    return instance


def _capture(name: str) -> tuple[dict[bytes, bytes], bytes]:
    """
    The response headers and the de-chunked body of a raw SSE capture.
    """
    raw = (SAMPLES / name).read_bytes()
    response = raw[raw.index(b"HTTP/1.1 ") :]
    head, rest = response.split(b"\r\n\r\n", 1)
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        key, value = line.split(b": ", 1)
        headers[key.lower()] = value
    if b"\n### " in rest:
        rest = rest[: rest.index(b"\n### ")]
    body = b""
    while rest.strip():
        size, rest = rest.split(b"\r\n", 1)
        length = int(size, 16)
        body += rest[:length]
        assert rest[length : length + 2] == b"\r\n"
        rest = rest[length + 2 :]
    return headers, body


def _events(body: bytes) -> list[dict[str, Any]]:
    """
    The JSON payloads of every C{event: instance} block in C{body}.
    """
    blocks = body.split(b"\n\n")
    return [
        json.loads(block.split(b"\ndata: ", 1)[1])
        for block in blocks
        if block.startswith(b"event: instance\n")
    ]


class _Master:
    """
    A tiny Klein app that serves the hub as C{/api/v1/events}.
    """

    app = Klein()

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.requests: list[Request] = []

    @app.route("/api/v1/events")
    def events(self, request: Request) -> Deferred[None]:
        self.requests.append(request)
        return self.hub.subscribe(request)


class _Times:
    """
    A C{timestamp} callable that returns queued strings, then a fixed one.
    """

    def __init__(self, *times: str) -> None:
        self.times = list(times)

    def __call__(self) -> str:
        return self.times.pop(0) if self.times else "2026-11-23T15:29:47.5Z"


class EventHubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.snapshot: list[dict[str, Any]] = [_instance("aaaa0001"), _instance("********")]
        self.times = _Times()
        self.hub = EventHub(
            self.clock,
            lambda: self.snapshot,
            timestamp=self.times,
            maxBacklogEvents=3,
            maxBacklogBytes=10_000,
        )
        self.master = _Master(self.hub)
        self.stub = StubTreq(self.master.app.resource())

    def _open(self) -> tuple[Any, list[bytes], Deferred[None]]:
        d = self.stub.get(URL, headers={"Accept": "text/event-stream"})
        self.stub.flush()
        response = self.successResultOf(d)
        chunks: list[bytes] = []
        done = treq.collect(response, chunks.append)
        self.stub.flush()
        return response, chunks, done

    def test_headersAndInitialSnapshot(self) -> None:
        """
        The stream answers 200 with the exact SSE headers, then the retry block, then one
        C{initial} event per snapshot instance (the pseudo-instance included).
        """
        response, chunks, done = self._open()
        self.assertEqual(response.code, 200)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/event-stream"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-cache"])
        # The client consumes the hop-by-hop header; check what the server sent.
        sent = self.master.requests[0].responseHeaders
        self.assertEqual(sent.getRawHeaders("connection"), ["keep-alive"])
        self.assertEqual(sent.getRawHeaders("content-length"), None)
        self.assertEqual(sent.getRawHeaders("content-encoding"), None)
        self.assertTrue(self.master.requests[0].chunked)
        body = b"".join(chunks)
        self.assertTrue(body.startswith(RETRY_BLOCK + b"event: instance\ndata: {"))
        events = _events(body)
        self.assertEqual([e["type"] for e in events], ["initial", "initial"])
        self.assertEqual([e["instance"]["id"] for e in events], ["aaaa0001", "********"])
        self.assertEqual([list(e) for e in events], [["type", "time", "instance", "logs"]] * 2)
        self.assertEqual(body.count(b"\n\n"), 3)
        self.assertNoResult(done)
        self.assertEqual(self.hub.subscriberCount, 1)

    def test_matchesCaptureExactly(self) -> None:
        """
        Fed the instances, times and lines of a Go capture, the stream's body is the
        capture's body, byte for byte, and the SSE headers are the capture's.
        """
        headers, body = _capture("68_events_initial_3s.txt")
        events = _events(body)
        initial = [e for e in events if e["type"] == "initial"]
        later = events[len(initial) :]
        self.assertTrue(initial and later)
        self.assertNotIn("initial", [e["type"] for e in later])
        self.snapshot = [e["instance"] for e in initial]
        self.times.times = [e["time"] for e in events]
        _, chunks, _ = self._open()
        for event in later:
            self.hub.publish(event["type"], event["instance"], event["logs"])
            self.stub.flush()
        self.assertEqual(b"".join(chunks), body)
        sent = self.master.requests[0].responseHeaders
        for name in (b"content-type", b"cache-control", b"connection"):
            self.assertEqual(sent.getRawHeaders(name), [headers[name]], name)

    def test_otherCapturesRoundTrip(self) -> None:
        """
        Every event block of the other Go captures re-frames to the same bytes.
        """
        for name in ("36_events_restart_sequence.txt", "49_events_create_delete_sequence.txt"):
            _, body = _capture(name)
            self.assertTrue(body.startswith(RETRY_BLOCK))
            framed = RETRY_BLOCK + b"".join(
                formatEvent(e["type"], e["instance"], e["time"], e["logs"]) for e in _events(body)
            )
            self.assertEqual(framed, body, name)

    def test_publishFansOutInOrder(self) -> None:
        """
        Every stream gets every event, in publishing order, with the state at publish time.
        """
        _, first, _ = self._open()
        _, second, _ = self._open()
        instance = _instance(status="stopped")
        self.hub.publish("update", instance)
        instance["status"] = "running"
        self.hub.publish("update", instance)
        self.hub.publish("log", instance, "\x1b[32mINFO\x1b[0m  hello <world> & more")
        self.hub.publish("delete", instance)
        self.stub.flush()
        for chunks in (first, second):
            events = _events(b"".join(chunks))[2:]
            self.assertEqual([e["type"] for e in events], ["update", "update", "log", "delete"])
            self.assertEqual(
                [e["instance"]["status"] for e in events],
                ["stopped", "running", "running", "running"],
            )
            self.assertEqual([e["logs"] for e in events][:2], ["", ""])
        body = b"".join(first)
        self.assertIn(
            b'"logs":"\\u001b[32mINFO\\u001b[0m  hello \\u003cworld\\u003e \\u0026 more"', body
        )
        self.assertNotIn(b"id:", body)
        self.assertNotIn(b"\n:", body)

    def test_keepalive(self) -> None:
        """
        A retry-only block goes to every stream every 30 s, and only while someone listens.
        """
        self.assertEqual(self.clock.getDelayedCalls(), [])
        _, chunks, _ = self._open()
        before = b"".join(chunks)
        self.clock.advance(KEEPALIVE_INTERVAL - 1)
        self.stub.flush()
        self.assertEqual(b"".join(chunks), before)
        self.clock.advance(1)
        self.stub.flush()
        self.assertEqual(b"".join(chunks), before + RETRY_BLOCK)
        self.clock.advance(KEEPALIVE_INTERVAL)
        self.stub.flush()
        self.assertEqual(b"".join(chunks), before + RETRY_BLOCK * 2)
        self.hub.shutdown()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_disconnectUnsubscribes(self) -> None:
        """
        When the client goes away, the stream is forgotten at once: no more writes, no timer.
        """
        _, _, done = self._open()
        request = self.master.requests[0]
        request.channel.transport.loseConnection()  # type: ignore[union-attr]
        self.stub.flush()
        self.failureResultOf(done)
        self.assertEqual(self.hub.subscriberCount, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.hub.publish("update", _instance())
        self.clock.advance(KEEPALIVE_INTERVAL * 3)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_slowSubscriberQueuesThenCatchesUp(self) -> None:
        """
        While its transport is paused, a stream's events wait in its backlog; they are
        written, in order, when it resumes.  Other streams are not held back.
        """
        _, slow, _ = self._open()
        _, fast, _ = self._open()
        request = self.master.requests[0]
        request.channel.pauseProducing()
        before = b"".join(slow)
        for status in ("a", "b", "c"):
            self.hub.publish("update", _instance(status=status))
        self.stub.flush()
        self.assertEqual(b"".join(slow), before)
        self.assertEqual(len(_events(b"".join(fast))), 5)
        request.channel.resumeProducing()
        self.stub.flush()
        events = _events(b"".join(slow))[2:]
        self.assertEqual([e["instance"]["status"] for e in events], ["a", "b", "c"])
        self.assertEqual(self.hub.subscriberCount, 2)

    def test_slowSubscriberDroppedOnOverflow(self) -> None:
        """
        A stream whose backlog overflows is ended (the client reconnects for a fresh
        snapshot); the queued events are thrown away, not buffered without limit.
        """
        _, slow, slowDone = self._open()
        _, fast, fastDone = self._open()
        request = self.master.requests[0]
        request.channel.pauseProducing()
        before = b"".join(slow)
        with capturedLogs() as logs:
            for n in range(4):
                self.hub.publish("update", _instance(pool=n))
        self.assertEqual(self.hub.subscriberCount, 1)
        self.assertIn("too slow", "".join(str(e.get("log_format")) for e in logs))
        self.assertEqual([e["log_level"] for e in logs], [LogLevel.warn])
        self.stub.flush()
        self.assertEqual(self.successResultOf(slowDone), None)
        self.assertEqual(b"".join(slow), before)
        self.assertNoResult(fastDone)
        self.assertEqual(len(_events(b"".join(fast))), 6)

    def test_slowSubscriberDroppedOnBytes(self) -> None:
        """
        The backlog is bounded in bytes as well as in events.
        """
        _, _, done = self._open()
        self.master.requests[0].channel.pauseProducing()
        with capturedLogs():
            self.hub.publish("log", _instance(), "x" * 6000)
            self.assertNoResult(done)
            self.hub.publish("log", _instance(), "y" * 6000)
        self.stub.flush()
        self.successResultOf(done)

    def test_shutdown(self) -> None:
        """
        C{shutdown} sends the shutdown event to every stream and ends them all cleanly;
        the hub then accepts new subscribers (API key regeneration).
        """
        self.times.times = ["2026-11-23T15:29:47.1Z", "2026-11-23T15:29:47.2Z"]
        _, first, firstDone = self._open()
        _, second, secondDone = self._open()
        self.hub.shutdown()
        self.stub.flush()
        self.assertEqual(self.successResultOf(firstDone), None)
        self.assertEqual(self.successResultOf(secondDone), None)
        last = (
            b'event: instance\ndata: {"type":"shutdown","time":"2026-11-23T15:29:47.5Z",'
            b'"instance":null,"logs":""}\n\n'
        )
        for chunks in (first, second):
            self.assertTrue(b"".join(chunks).endswith(last))
            self.assertEqual(len(_events(b"".join(chunks))), 3)
        self.assertEqual(self.hub.subscriberCount, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        _, third, thirdDone = self._open()
        self.assertNoResult(thirdDone)
        self.assertEqual(self.hub.subscriberCount, 1)
        self.hub.publish("update", _instance())
        self.stub.flush()
        self.assertEqual(len(_events(b"".join(third))), 3)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_shutdownFlushesPausedBacklog(self) -> None:
        """
        A paused stream gets its (bounded) backlog and the shutdown event before it ends.
        """
        _, chunks, done = self._open()
        self.master.requests[0].channel.pauseProducing()
        self.hub.publish("update", _instance(pool=7))
        self.hub.shutdown()
        self.stub.flush()
        self.successResultOf(done)
        events = _events(b"".join(chunks))
        self.assertEqual([e["type"] for e in events][-2:], ["update", "shutdown"])

    def test_publishWithoutSubscribers(self) -> None:
        """
        Publishing with no stream open is harmless, and so is shutting down.
        """
        self.hub.publish("update", _instance())
        self.hub.shutdown()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_defaultTimestampUsesClock(self) -> None:
        """
        Without a C{timestamp}, events carry the injected clock's time.
        """
        self.clock.advance(1795447787.25)
        hub = EventHub(self.clock, lambda: [_instance()])
        stub = StubTreq(_Master(hub).app.resource())
        d = stub.get(URL)
        stub.flush()
        chunks: list[bytes] = []
        treq.collect(self.successResultOf(d), chunks.append)
        stub.flush()
        (event,) = _events(b"".join(chunks))
        self.assertEqual(event["time"], formatTime(1795447787.25))
        hub.shutdown()

    def test_oversizedEventDropped(self) -> None:
        """
        An event that cannot be made to fit below 64 KiB is logged and not sent.
        """
        _, chunks, done = self._open()
        huge = _instance(meta={"peer": {}, "tags": {"k": "v" * MAX_EVENT_BYTES}})
        with capturedLogs() as logs:
            self.hub.publish("update", huge)
        self.stub.flush()
        self.assertEqual(len(_events(b"".join(chunks))), 2)
        self.assertEqual([e["log_level"] for e in logs], [LogLevel.error])
        self.assertNoResult(done)


# --- pure helpers -------------------------------------------------------------------------


def test_formatEventShape() -> None:
    block = formatEvent("update", {"id": "x", "alias": "a<b"}, "2026-01-02T03:04:05.5Z")
    assert block == (
        b'event: instance\ndata: {"type":"update","time":"2026-01-02T03:04:05.5Z",'
        b'"instance":{"id":"x","alias":"a\\u003cb"},"logs":""}\n\n'
    )


def test_encodeJSONLikeGo() -> None:
    assert encodeJSON({"a": "é\u2028\n\t\x1b", "b": [1, None, True]}) == (
        '{"a":"é\\u2028\\n\\t\\u001b","b":[1,null,true]}'.encode()
    )
    assert encodeJSON("bad \udcff") == '"bad \ufffd"'.encode()
    assert b"\n" not in encodeJSON({"x": "line\nbreak\r\n"})


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1795447787.5, "2026-11-23T15:29:47.5Z"),
        (1795447787.002738, "2026-11-23T15:29:47.002738Z"),
        (1795447787.12, "2026-11-23T15:29:47.12Z"),
    ],
)
def test_formatTime(seconds: float, expected: str) -> None:
    assert formatTime(seconds) == expected


def test_truncateLogLine() -> None:
    assert truncateLogLine("short") == "short"
    assert truncateLogLine("x" * 10_000) == "x" * LOG_LINE_LIMIT
    cut = truncateLogLine("é" * 5000)
    assert cut == "é" * (LOG_LINE_LIMIT // 2)
    cut = truncateLogLine("a" + "€" * 5000)
    assert len(cut.encode()) <= LOG_LINE_LIMIT
    assert cut == "a" + "€" * ((LOG_LINE_LIMIT - 1) // 3)
    assert truncateLogLine("\udcff" * 5000) == "\udcff" * (LOG_LINE_LIMIT // 3)


def _largestBlocks() -> Iterator[bytes]:
    big = _instance(meta={"peer": {}, "tags": {f"k{n}": "v" * 250 for n in range(100)}})
    for logs in ("x" * 100_000, "\x1b" * 100_000, "<" * 9000, "\udcff" * 9000):
        yield formatEvent("log", big, "2026-01-02T03:04:05Z", truncateLogLine(logs))
        yield formatEvent("log", big, "2026-01-02T03:04:05Z", logs)


def test_blocksStayBelow64KiB() -> None:
    for block in _largestBlocks():
        assert len(block) < MAX_EVENT_BYTES
        assert block.endswith(b"\n\n")
        assert block.count(b"\n") == 3


def test_oversizedWithoutLogsRaises() -> None:
    with pytest.raises(EventTooLarge):
        formatEvent("update", {"tags": "v" * MAX_EVENT_BYTES}, "t")
