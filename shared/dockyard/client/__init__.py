"""The CLI's client of the scheduler API and the log relay (HTTP and WebSocket)."""

from dockyard.client.api import ApiClient, ClientError
from dockyard.client.follow import JobEnd, exit_code_for, follow_log
from dockyard.client.target import Target, default_token_paths, load_target

__all__ = [
    "ApiClient",
    "ClientError",
    "JobEnd",
    "Target",
    "default_token_paths",
    "exit_code_for",
    "follow_log",
    "load_target",
]
