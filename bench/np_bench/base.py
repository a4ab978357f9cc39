"""Paths, progress messages and the start-up error every benchmark shares."""

from __future__ import annotations

import os
import sys

HOST = "127.0.0.1"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BENCH_DIR = os.path.dirname(PACKAGE_DIR)
REPO_ROOT = os.path.dirname(BENCH_DIR)


def log(msg: str) -> None:
    """Progress messages go to stderr so stdout stays clean for results."""
    print(msg, file=sys.stderr, flush=True)


class StartError(RuntimeError):
    """A system under test could not be started."""


class PortClash(StartError):
    """A process exited during start-up; new ports may help."""
