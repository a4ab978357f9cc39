"""The master tests' fixtures (a list of masters closed at the end, an echo server), and the
hypothesis profiles of the fuzz tests (tests/test_fuzz_*.py).

Under CI (C{CI=true}, as C{.ci/run} sets it) hypothesis runs derandomized: the same examples
on every run, so a red build is reproducible and a green one stays green.  Elsewhere it
explores freely; either way each test sets its own example budget with C{@settings}.
"""

import os

from hypothesis import HealthCheck, settings

from tests.test_master_service import echoServer, masters

__all__ = ["echoServer", "masters"]

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")
