"""
Lint and type checks run with the suite, so a red ruff or mypy fails CI
like any other test.  Skipped only where the tools are not installed
(they are part of the ``test`` extra).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

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
