"""`dockyard up`: the whole stack on one machine, each service its own process."""

from dockyard.stack.layout import Layout, StackError
from dockyard.stack.up import UpOptions, run_up

__all__ = ["Layout", "StackError", "UpOptions", "run_up"]
