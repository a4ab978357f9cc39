"""
The dashboard's JavaScript unit checks (C{tests/js/}, node's built-in test runner) as part
of the suite: the page logic that builds instance URLs, computes rates and filters, and the
chart's arithmetic.  Skipped when C{node} is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support import ROOT


def test_dashboard_logic_under_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    # The files by name: node's handling of a directory argument changed across versions.
    files = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "tests" / "js").glob("*.test.mjs")
    )
    assert files
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) > 0, result.stdout
    assert re.search(r"^# fail 0$", result.stdout, re.MULTILINE), result.stdout
