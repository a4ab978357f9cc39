# The built-in NodePass pool transports, found by twisted.plugin.getPlugins.  Each is named
# by reference, so the scan imports none of them, and a lookup only the one asked for.
from nodepass.transports import TransportReference

tcp = TransportReference("tcp", "0", "nodepass.transports.tcp:tcp")
quic = TransportReference("quic", "1", "nodepass.transports.quic:quic")
ws = TransportReference("ws", "2", "nodepass.transports.websocket:ws")
h2transport = TransportReference("h2", "3", "nodepass.transports.http2:h2transport")

__all__ = ["h2transport", "quic", "tcp", "ws"]
