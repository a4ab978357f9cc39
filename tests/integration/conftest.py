"""The master tests' fixtures (a list of masters closed at the end, an echo server)."""

from tests.test_master_service import echoServer, masters

__all__ = ["echoServer", "masters"]
