"""
L{nodepass.doctor} without sockets: how it names what answered, and its report.
"""

from __future__ import annotations

import io
import json

from nodepass import doctor


def test_describeAnswer() -> None:
    describe = doctor._describeAnswer
    assert describe(b"") == "it closed the connection without answering"
    assert describe(b"\x16\x03\x01\x00\x10").startswith("a TLS service answered")
    assert describe(b"\x15\x03\x03\x00\x02").startswith("a TLS service answered")
    assert describe(b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\n\r\n") == (
        "an HTTP server answered 'HTTP/1.1 404 Not Found' (Server: nginx)"
    )
    assert describe(b"SSH-2.0-OpenSSH_9.6\r\n") == "an SSH server answered 'SSH-2.0-OpenSSH_9.6'"
    assert "pool phase" in describe(b"\x01\x02\x03\x04")
    assert describe(b"\x00" * 40).startswith("it answered 40 bytes that are not HTTP")


def test_badURLReportAndExitCode() -> None:
    out = io.StringIO()
    assert doctor.main(["nope://x", "--json"], out=out) == 1
    result = json.loads(out.getvalue())
    assert result["healthy"] is False
    assert [s["step"] for s in result["steps"]] == ["url"]
    assert result["steps"][0]["advice"]


def test_keyNeverInTheReport() -> None:
    report = doctor.diagnose("client://supersecret@127.0.0.1:99999/x")
    assert "supersecret" not in json.dumps([s.asJSON() for s in report.steps])
