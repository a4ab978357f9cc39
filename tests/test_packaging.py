"""
The package as users get it: a wheel built from the checkout, installed in
a fresh virtual environment, used from another directory.  This is what
proves that the twistd plugin is discovered after ``pip install .`` and not
only thanks to the checkout being on ``sys.path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

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

pytestmark = [pytest.mark.integration, pytest.mark.packaging]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    (found,) = out.glob("nodepass-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)],
        check=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    return home


def cleanEnv() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return environ


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/nodepass_plugin.py" in names
    assert "nodepass/py.typed" in names
    # The dashboard the master serves, every file of it.
    from nodepass.master.app import DASHBOARD_FILES

    for name in DASHBOARD_FILES:
        assert f"nodepass/master/dashboard/{name}" in names, name
    # Never ship an __init__.py that would shadow Twisted's own packages,
    # a stale dropin cache, or the tests.
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(name.endswith("dropin.cache") for name in names)
    assert not any(name.startswith("tests/") for name in names)


def test_installed_wheel_finds_the_plugin_outside_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    bin = installed / "bin"
    result = subprocess.run(
        [str(bin / "twistd"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cleanEnv(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "nodepass" in result.stdout
    version = subprocess.run(
        [str(bin / "nodepass"), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cleanEnv(),
        timeout=60,
    )
    assert "compatible with NodePass v1.14.0" in version.stdout
    # It really is the installed copy that runs.
    where = subprocess.run(
        [str(bin / "python"), "-c", "import nodepass; print(nodepass.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cleanEnv(),
        timeout=60,
    )
    assert str(installed) in where.stdout


def test_installed_console_script_forwards(installed: Path, tmp_path: Path) -> None:
    port = freePort()
    with TCPServer(echo) as target, UDPEcho(port=target.port):
        proc = subprocess.Popen(
            [
                str(installed / "bin" / "nodepass"),
                f"client://{LOOPBACK}:{port}/{LOOPBACK}:{target.port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=cleanEnv(),
        )
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")))  # type: ignore[union-attr]
        reader.start()
        try:
            waitFor(lambda: any(b"CHECK_POINT" in line for line in lines), 30, "start-up")
            assertForwards(port, 1 << 20, (1, 1000, 8000))
        finally:
            proc.terminate()
            proc.wait(15)
            reader.join(5)


def test_installed_master_runs_from_any_directory(installed: Path, tmp_path: Path) -> None:
    """
    The README's first command, from the wheel: a master with its state in the current
    directory, its API key printed once, an instance run as a child of the installed
    package, and the Swagger UI assets found in the installed dependencies.
    """
    import http.client
    import json

    port = freePort(udp=False)
    forward = freePort()
    proc = subprocess.Popen(
        [str(installed / "bin" / "nodepass"), f"master://{LOOPBACK}:{port}/api"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**cleanEnv(), "NP_REPORT_INTERVAL": "1s"},
    )
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")))  # type: ignore[union-attr]
    reader.start()

    def call(method: str, path: str, key: str = "", body: bytes | None = None) -> Any:
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        try:
            connection.request(method, "/api/v1" + path, body, {"X-API-Key": key})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    try:
        waitFor(lambda: any(b"API Key created: " in line for line in lines), 30, "the key")
        key = next(line for line in lines if b"API Key created: " in line).split()[-1].decode()
        url = f"client://{LOOPBACK}:{forward}/{LOOPBACK}:9?mode=1"
        status, body = call("POST", "/instances", key, json.dumps({"url": url}).encode())
        assert status == 201, body
        id = json.loads(body)["id"]
        waitFor(
            lambda: json.loads(call("GET", f"/instances/{id}", key)[1])["mode"] == 1,
            30,
            "the instance's first checkpoint",
        )
        status, asset = call("GET", "/docs/static/swagger-ui.css")
        assert status == 200 and len(asset) > 10_000
        status, page = call("GET", "/dashboard/")
        assert status == 200 and b'src="app.js"' in page
        status, script = call("GET", "/dashboard/logic.js")
        assert status == 200 and b"export function buildURL" in script
        assert (tmp_path / "nodepass.db").exists()
    finally:
        proc.terminate()
        proc.wait(15)
        reader.join(5)
    assert proc.returncode == 0
    output = b"".join(lines)
    assert output.count(key.encode()) == 1
    assert b"Master shutdown complete" in output
