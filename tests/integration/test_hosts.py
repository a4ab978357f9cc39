"""
Instance hosts for real (loopback, subprocesses): a host killed with SIGKILL, and a host whose
reactor stops answering, while traffic goes through instances on both hosts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOOPBACK, TCPServer, freePort
from tests.test_master_service import EventStream, Master, isUpdate, startMaster, waitExchange

pytestmark = pytest.mark.integration


def after(events: EventStream, event: dict[str, Any]) -> int:
    """
    The mark just past C{event}: what comes after it, not a checkpoint already on its way.
    """
    return next(i for i, e in enumerate(events.events) if e is event) + 1


def hostOf(master: Master, instanceId: str) -> int:
    """
    The pid of the host an instance runs on (the master's "Instance started" line).
    """
    found = re.findall(rf"Instance started \[{instanceId}\] pid=(\d+)", master.output)
    assert found, master.output
    return int(found[-1])


def hosted(tmp_path: Path, masters: list[Master], count: int) -> Master:
    return startMaster(
        masters,
        tmp_path,
        env={"NP_INSTANCE_HOSTS": "2", "NP_HOST_TEST_HOOKS": "1"},
    )


def create(master: Master, target: int, n: int) -> list[tuple[str, int]]:
    made = []
    for _ in range(n):
        port = freePort(udp=False)
        url = f"client://{LOOPBACK}:{port}/{LOOPBACK}:{target}?mode=1&noudp=1"
        made.append((master.ok("POST", "/instances", {"url": url}, 201)["id"], port))
    return made


def held(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    sock.sendall(b"before")
    assert sock.recv(16) == b"before"
    return sock


def test_killedHostIsReplacedAndTheOtherHostCarriesOn(
    tmp_path: Path, masters: list[Master], echoServer: TCPServer
) -> None:
    master = hosted(tmp_path, masters, 2)
    events = EventStream(master)
    instances = create(master, echoServer.port, 4)
    for id, _ in instances:
        events.waitFor(isUpdate(id, status="running"), f"{id} running")
    for _, port in instances:
        waitExchange(port)
    hosts = {hostOf(master, id) for id, _ in instances}
    assert len(hosts) == 2, master.output
    victim = hostOf(master, instances[0][0])
    survivor = next(i for i in instances if hostOf(master, i[0]) != victim)
    connection = held(survivor[1])
    mark = events.mark()
    os.kill(victim, signal.SIGKILL)
    for id, _ in instances:
        if hostOf(master, id) == victim or id == instances[0][0]:
            stopped = events.waitAfter(
                mark, isUpdate(id, status="stopped"), f"{id} stopped", timeout=3
            )
            events.waitAfter(
                after(events, stopped), isUpdate(id, status="running"), f"{id} running", timeout=3
            )
    connection.sendall(b"after")
    assert connection.recv(16) == b"after"
    connection.close()
    for _, port in instances:
        waitExchange(port)
    events.close()


def test_blockedHostIsReplaced(
    tmp_path: Path, masters: list[Master], echoServer: TCPServer
) -> None:
    master = hosted(tmp_path, masters, 2)
    events = EventStream(master)
    instances = create(master, echoServer.port, 2)
    for id, _ in instances:
        events.waitFor(isUpdate(id, status="running"), f"{id} running")
    for _, port in instances:
        waitExchange(port)  # the hosts are up and serving (their test hook is installed)
    victim = hostOf(master, instances[0][0])
    mark = events.mark()
    os.kill(victim, signal.SIGUSR1)  # the host's test hook: its reactor blocks
    id, port = instances[0]
    # Stopped first (the host was replaced): a checkpoint update that was already on its
    # way says "running" too, from the blocked host.
    stopped = events.waitAfter(mark, isUpdate(id, status="stopped"), f"{id} stopped", timeout=10)
    events.waitAfter(
        after(events, stopped), isUpdate(id, status="running"), f"{id} running again", timeout=10
    )
    assert "stopped answering" in master.output, master.output
    assert hostOf(master, id) != victim
    waitExchange(port)
    events.close()
