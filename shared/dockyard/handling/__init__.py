"""Running commands against jobs: load, decide, append (`execute`), and many at once with one
read and one commit (`CommandBatcher`), helped by the states of the jobs written last."""

from dockyard.handling.batching import CommandBatcher, Request, execute_many
from dockyard.handling.execute import Clock, Outcome, execute, utc_now

__all__ = ["Clock", "CommandBatcher", "Outcome", "Request", "execute", "execute_many", "utc_now"]
