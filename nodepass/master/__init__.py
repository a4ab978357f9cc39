"""The control plane (``master://``): REST API, SSE, instance runners (hosts or a process per
instance), state.
"""
