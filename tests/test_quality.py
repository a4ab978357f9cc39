"""
Lint and type checks run with the suite, so a red ruff or mypy fails CI
like any other test.  Skipped only where the tools are not installed
(they are part of the ``test`` extra).  Plus rules of our own that the tools
do not know, checked on the source.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_is_clean() -> None:
    targets = ["nodepass", "tests", "bench", "twisted/plugins"]
    check = subprocess.run(
        ["ruff", "check", *targets], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        ["ruff", "format", "--check", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_is_clean() -> None:
    pytest.importorskip("mypy")
    pytest.importorskip("mypy_zope")
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


#: The data plane: code that runs inside an instance, several of which may share a process.
DATA_PLANE = [
    "nodepass/tunnel/*.py",
    "nodepass/transports/*.py",
    "nodepass/balance.py",
    "nodepass/resolve.py",
    "nodepass/relay.py",
    "nodepass/tls.py",
]


def _globalLogging(path: Path) -> list[str]:
    """
    Where C{path} makes a logger of its own (C{Logger(...)} outside a function: module or
    class level) or uses Twisted's legacy global log.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []

    def visit(node: ast.AST, inFunction: bool) -> None:
        if isinstance(node, ast.Call) and not inFunction:
            called = node.func
            name = called.id if isinstance(called, ast.Name) else getattr(called, "attr", "")
            if name == "Logger":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: Logger() outside a function")
        if isinstance(node, ast.ImportFrom) and node.module == "twisted.python":
            if any(alias.name == "log" for alias in node.names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: twisted.python.log")
        if isinstance(node, ast.Import):
            if any(alias.name == "twisted.python.log" for alias in node.names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: twisted.python.log")
        nested = inFunction or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(tree, False)
    return found


def test_dataPlaneHasNoGlobalLogger() -> None:
    """
    No data-plane module logs through a logger of its own (C{log = Logger()} at module or
    class level publishes to the process-global log publisher, so a line could not be told
    apart from another instance's).  Objects log through the logger their owner passes
    down; the only fallback is L{nodepass.log.defaultLogger}, called when none was given.
    """
    paths = sorted(path for pattern in DATA_PLANE for path in ROOT.glob(pattern))
    assert len(paths) > 15, paths
    found = [where for path in paths for where in _globalLogging(path)]
    assert found == []
