"""
The command line: ``nodepass URL`` / ``python -m nodepass URL`` and
``twistd nodepass URL``: help, version, bad input, exit codes, and the same
forwarding through twistd.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nodepass.tap import COMPAT_SWITCHES, Options
from tests.support import (
    LOOPBACK,
    ROOT,
    TCPServer,
    UDPEcho,
    assertForwards,
    echo,
    freePort,
    waitFor,
)

pytestmark = pytest.mark.integration


def env() -> dict[str, str]:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    return environ


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodepass", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        stdin=subprocess.DEVNULL,
    )


def canBind(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert "compatible with NodePass v1.14.0" in result.stdout


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    for scheme in ("server://", "client://", "master://"):
        assert scheme in result.stdout


def test_no_argument_is_an_error() -> None:
    result = run()
    assert result.returncode == 1
    assert "Usage: nodepass URL" in result.stdout


def test_extra_arguments_are_an_error() -> None:
    result = run("client://127.0.0.1:1/127.0.0.1:2", "extra")
    assert result.returncode == 1
    assert "exactly one URL" in result.stderr


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("slot=abc", ["'slot'", "'abc'"]),
        ("mode=5", ["'mode'", "'5'"]),
        ("rate=-1", ["'rate'", "'-1'"]),
        ("read=30", ["'read'", "'30'"]),
        ("proxy=3", ["'proxy'", "'3'"]),
        ("lbs=9", ["'lbs'", "'9'"]),
        ("log=loud", ["'log'", "'loud'"]),
        ("dial=not-an-ip", ["'dial'", "'not-an-ip'"]),
        ("block=4", ["'block'", "'4'"]),
        ("notcp=yes", ["'notcp'", "'yes'"]),
        ("min=0", ["'min'", "'0'"]),
    ],
)
def test_bad_parameter_exits_before_binding(query: str, words: list[str]) -> None:
    port = freePort()
    result = run(f"client://{LOOPBACK}:{port}/{LOOPBACK}:9?{query}&mode=1")
    assert result.returncode == 1
    line = result.stderr.splitlines()[0]
    assert line.startswith("Error: ")
    for word in words:
        assert word in line
    assert "expected" in line
    assert "Traceback" not in result.stderr
    assert canBind(port)


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("client://127.0.0.1:notaport/127.0.0.1:80", "port"),
        ("client://127.0.0.1:70000/127.0.0.1:80", "70000"),
        ("client://127.0.0.1:8000/", "target"),
        ("client://127.0.0.1:8000/127.0.0.1", "target"),
        ("socks://127.0.0.1:8000/127.0.0.1:80", "scheme"),
        ("not a url at all", ""),
        ("client://127.0.0.1:8000/127.0.0.1:8000", "conflicts"),
    ],
)
def test_malformed_urls(url: str, word: str) -> None:
    result = run(url)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ")
    assert word in result.stderr.splitlines()[0]
    assert "Traceback" not in result.stderr


def test_key_never_in_error_messages() -> None:
    result = run("client://topsecretkey@127.0.0.1:bad/127.0.0.1:80")
    assert result.returncode == 1
    assert "topsecretkey" not in result.stderr + result.stdout


def test_port_in_use_exits_1_with_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(f"client://{LOOPBACK}:{port}/{LOOPBACK}:9?mode=1")
    assert result.returncode == 1
    assert f"cannot listen on {LOOPBACK}:{port}" in result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_shuts_down_cleanly_with_status_0() -> None:
    port = freePort()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodepass", f"client://{LOOPBACK}:{port}/{LOOPBACK}:9?mode=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )
    try:
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")))  # type: ignore[union-attr]
        reader.start()
        waitFor(lambda: any(b"CHECK_POINT" in line for line in lines), 15, "start-up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        reader.join(5)
        assert any(b"Client shutdown complete" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def twistd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args]


def test_twistd_help_lists_nodepass() -> None:
    result = subprocess.run(
        twistd("--help"), capture_output=True, text=True, timeout=60, env=env(), cwd=str(ROOT)
    )
    assert result.returncode == 0
    assert "nodepass" in result.stdout


def test_twistd_nodepass_forwards_tcp_and_udp() -> None:
    port = freePort()
    with TCPServer(echo) as tcpTarget, UDPEcho(port=tcpTarget.port) as udpTarget:
        assert udpTarget.port == tcpTarget.port
        url = f"client://{LOOPBACK}:{port}/{LOOPBACK}:{tcpTarget.port}?mode=1"
        proc = subprocess.Popen(
            twistd("-n", "--pidfile=", "nodepass", url),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env(),
            cwd=str(ROOT),
        )
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")))  # type: ignore[union-attr]
        reader.start()
        try:
            waitFor(lambda: any(b"CHECK_POINT" in line for line in lines), 20, "twistd start-up")
            # The NodePass line format, not twistd's own.
            started = next(line for line in lines if b"Client started" in line)
            assert b"  INFO  Client started: client://********@" in started
            assertForwards(port, 1 << 20, (1, 512, 4000))
        finally:
            proc.terminate()
            proc.wait(15)
            reader.join(5)


def test_twistd_bad_url_is_a_usage_error() -> None:
    result = subprocess.run(
        twistd("-n", "--pidfile=", "nodepass", "client://127.0.0.1:bad/x"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        cwd=str(ROOT),
    )
    assert result.returncode != 0
    assert "invalid port 'bad'" in result.stdout + result.stderr


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    """
    Started with a soft limit of 256 open files, a NodePass raises it to the hard limit
    (as Go programs do), so a busy tunnel is not capped at a few hundred connections.
    """
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here is only {hard}")
    port = freePort()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodepass", f"client://{LOOPBACK}:{port}/{LOOPBACK}:9?mode=1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    try:
        waitFor(lambda: not canBind(port), 20, "the forwarder to listen")
        with open(f"/proc/{proc.pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        soft = line.split()[3]
        assert soft != "256" and (hard == resource.RLIM_INFINITY or int(soft) == hard), line
    finally:
        proc.terminate()
        proc.wait(15)


def test_master_alone_means_the_loopback_default() -> None:
    options = Options()
    options.parseOptions(["master"])
    config = options["config"]
    assert options["url"] == "master://127.0.0.1:9090/api"
    assert (config.scheme, config.tunnel.text, config.apiPrefix) == (
        "master",
        "127.0.0.1:9090",
        "/api/v1",
    )


def test_reset_key_replaces_the_stored_key(tmp_path: Path) -> None:
    from nodepass.master.store import SyncStore, keyDigest

    store = SyncStore(str(tmp_path))
    store.open()
    store.setMaster(keyDigest=keyDigest("old"), masterID="0123456789abcdef")
    store.close()
    result = run("reset-key", str(tmp_path))
    assert result.returncode == 0, result.stderr
    key = result.stdout.split("API Key created: ", 1)[1].split()[0]
    assert len(key) == 32
    store.open()
    master = store.load().master
    store.close()
    assert master.keyDigest == keyDigest(key)
    assert master.masterID == "0123456789abcdef"


def test_doctor_subcommand() -> None:
    """C{nodepass doctor} runs the doctor: exit 1 and the failing step for a bad URL."""
    result = run("doctor", "--json", "client://k@127.0.0.1:99999/x")
    assert result.returncode == 1, result.stderr
    assert '"step": "url"' in result.stdout and '"healthy": false' in result.stdout
    assert "doctor" in run("--help").stdout


def test_reset_key_without_state_fails_clearly(tmp_path: Path) -> None:
    result = run("reset-key", str(tmp_path))
    assert result.returncode == 1
    assert "no master state in" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_url_from_the_environment_stays_off_the_command_line() -> None:
    """A master hands the URL (with its key) over in NP_INSTANCE_URL."""
    port = freePort()
    environ = env()
    environ["NP_INSTANCE_URL"] = f"client://envkey@{LOOPBACK}:{port}/{LOOPBACK}:9?mode=1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodepass"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
    )
    try:
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")))  # type: ignore[union-attr]
        reader.start()
        waitFor(lambda: any(b"CHECK_POINT" in line for line in lines), 15, "start-up")
        with open(f"/proc/{proc.pid}/cmdline", "rb") as cmdline:
            assert b"envkey" not in cmdline.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


#: How each switched module tells whether it is on.
SWITCH_STATE = {
    "NP_SPLICE": "module.enabled",
    "NP_DIRECT_WRITE": "module.enabled",
    "NP_FAST_TLS": "module.available()",
    "NP_AIOQUIC_WINDOW": "module.enabled",
}


@pytest.mark.parametrize("variable", sorted(COMPAT_SWITCHES))
def test_compat_switch_from_the_environment(variable: str) -> None:
    """
    The entry point hands each C{nodepass._compat} switch its variable: C{=0} turns it
    off for the process.  A module whose variable is unset is not imported for it: the
    TLS one (which imports ssl) stays out of a process that never uses TLS.
    """
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "import nodepass.cli\n"
            "from nodepass.tap import COMPAT_SWITCHES, configureCompat\n"
            "configureCompat({})\n"
            "assert 'ssl' not in sys.modules\n"
            f"configureCompat({{{variable!r}: '0'}})\n"
            f"module = sys.modules[COMPAT_SWITCHES[{variable!r}]]\n"
            f"assert {SWITCH_STATE[variable]} is False\n"
            f"configureCompat({{{variable!r}: '1'}})\n"
            f"assert {SWITCH_STATE[variable]} is True\n",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env(),
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
