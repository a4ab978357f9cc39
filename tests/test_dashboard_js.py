"""
The dashboard's JavaScript unit checks (C{tests/js/}, node's built-in test runner) as part
of the suite: the page logic that builds instance URLs, computes rates and filters, and the
chart's arithmetic.  Skipped when C{node} is not installed.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import ROOT


def test_dashboard_logic_under_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run(
        [node, "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout, result.stdout
