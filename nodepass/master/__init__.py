"""The control plane (``master://``): REST API, SSE, instance supervisor, state.

Being built (Step 4); ``nodepass master`` still reports that master mode is
not available.
"""
