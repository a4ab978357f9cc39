# The twistd entry point: ``twistd nodepass URL``.  Kept tiny on purpose:
# the service module is named as a string, so scanning plugins imports nothing
# heavy.  There is deliberately no __init__.py in twisted/ or twisted/plugins/.
from twisted.application.service import ServiceMaker

nodepassServiceMaker = ServiceMaker(
    "NodePass",
    "nodepass.tap",
    "NodePass TCP/UDP tunnel: server://, client:// or master:// URL",
    "nodepass",
)
