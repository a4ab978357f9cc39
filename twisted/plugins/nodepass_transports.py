# The built-in NodePass pool transports, found by twisted.plugin.getPlugins.
# Kept import-light: each transport imports its heavy libraries only when used.
from nodepass.transports.http2 import h2transport
from nodepass.transports.quic import quic
from nodepass.transports.tcp import tcp
from nodepass.transports.websocket import ws

__all__ = ["h2transport", "quic", "tcp", "ws"]
