"""Every use of a library's private or optional internals, in one place.

Each module here names the library behaviour it relies on, checks for it, and falls back to
the plain public path (with a log line) when it is not there.
"""
