"""Ports on 127.0.0.1, readiness, one echo through a system."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Any

from np_bench.base import HOST


def free_port(udp_too: bool = False) -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago.

    ``udp_too``: the same number must also be free for UDP (a forwarder
    listens on both, a transport such as QUIC binds both on one port).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if not udp_too:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((HOST, port))
            return port
        except OSError:
            continue
    raise OSError("no port free for both TCP and UDP")


def port_bound(port: int, proto: str = "tcp") -> bool:
    """Whether 127.0.0.1:``port`` (or the wildcard) has a listening TCP / bound UDP socket.

    Read from ``/proc/net/{tcp,udp}``: no connection is made, no datagram sent.
    """
    want = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    state = "0A" if proto == "tcp" else "07"  # TCP_LISTEN; an unconnected UDP socket
    try:
        with open(f"/proc/net/{proto}") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[1] in want and parts[3] == state:
                    return True
    except (OSError, StopIteration):
        pass
    return False


def wait_listening(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> bool:
    """Poll until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def recv_exact(s: socket.socket, n: int) -> bytes:
    parts = []
    while n:
        b = s.recv(n)
        if not b:
            raise ConnectionError("EOF before full echo")
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def echo_once(port: int, timeout: float = 3.0, size: int = 64) -> float:
    """One connect + echo + close through ``port``; returns seconds. Raises on error."""
    msg = b"E" + os.urandom(size - 1)
    t = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(msg)
        got = recv_exact(s, len(msg))
    if got != msg:
        raise OSError("echo mismatch")
    return time.perf_counter() - t
