"""The data plane: single-end forwarding, and the tunnel server and client."""
