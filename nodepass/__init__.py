"""NodePass: a TCP/UDP tunnel, wire-compatible with NodePass v1.14.0, built on Twisted."""

__version__ = "0.1.0"

#: The NodePass release whose wire protocol and API this package speaks.
COMPATIBLE_VERSION = "v1.14.0"
