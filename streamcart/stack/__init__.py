"""The local stack of DESIGN.md §7: setup of its Java/PostgreSQL parts and supervision of its processes."""

from streamcart.stack.errors import NotReadyError, SetupError, StackError
from streamcart.stack.probes import Probe
from streamcart.stack.stack import ProcessStatus, Stack

__all__ = ["NotReadyError", "Probe", "ProcessStatus", "SetupError", "Stack", "StackError"]
