"""Child processes: every one is tracked, every one is killed at the end."""

from __future__ import annotations

import atexit
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from np_bench.base import BENCH_DIR, REPO_ROOT


class ProcessRegistry:
    """Starts child processes in their own process group and kills them all.

    Each child is a session leader (``start_new_session=True``): Ctrl-C in the
    terminal reaches only the orchestrator, which then tears the children down
    itself, and a forking child (socat) is killed together with its forks by
    signalling its process group. The group leader is *not* reaped before the
    group is SIGKILLed, so its id cannot have been reused by then.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
        with self._lock:
            self._procs.append(proc)
        return proc

    @staticmethod
    def _exited_unreaped(pid: int) -> bool:
        try:
            res = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped
        return res is not None

    def kill(self, proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
        pgid = proc.pid
        if proc.returncode is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not self._exited_unreaped(proc.pid):
                time.sleep(0.02)
            # The leader is at most a zombie here: its pid (= pgid) is still ours.
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def kill_all(self) -> None:
        with self._lock:
            procs = list(reversed(self._procs))
        for proc in procs:
            self.kill(proc, grace=1.0)


REGISTRY = ProcessRegistry()


def install_signal_handlers() -> None:
    """Ctrl-C, SIGTERM and SIGHUP all raise KeyboardInterrupt in the main thread.

    The benchmark catches it, kills every child and reports what it measured.
    SIGINT is (re)installed too: a shell starts background jobs with SIGINT
    ignored, and the benchmark should stop on it all the same.
    """

    def _handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _handler)


def raise_nofile_limit() -> int:
    """Raise the soft open-file limit to the hard one (children inherit it); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def start_run() -> float:
    """Signal handlers, every child killed at exit; returns the start time (monotonic)."""
    install_signal_handlers()
    atexit.register(REGISTRY.kill_all)
    return time.monotonic()


#: Where the nodepass under test is imported from: this checkout, or (``use_tree``) an
#: exported copy of one commit. Set once, by the entry point, before anything starts.
_TREE = [REPO_ROOT]


def use_tree(path: str) -> None:
    """Run the nodepass processes from ``path`` (a tree with ``nodepass/``) from now on."""
    _TREE[0] = path


def nodepass_tree() -> str:
    """The tree the nodepass processes run from (cwd and first on PYTHONPATH)."""
    return _TREE[0]


def child_env() -> dict[str, str]:
    """This environment with the nodepass tree first on PYTHONPATH and unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = nodepass_tree() + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn_helper(*args: str, **kwargs: Any) -> subprocess.Popen[Any]:
    """``python -m np_bench ARGS`` (the target or the load generator) through REGISTRY."""
    return REGISTRY.spawn([sys.executable, "-m", "np_bench", *args], cwd=BENCH_DIR, **kwargs)
