# The built-in NodePass pool transports, found by twisted.plugin.getPlugins.
# Kept import-light: each transport imports its heavy libraries only when used.
from nodepass.transports.tcp import tcp
from nodepass.transports.websocket import ws

__all__ = ["tcp", "ws"]
