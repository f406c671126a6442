"""What an attempt needs from the bus, as protocols: NATS in the service, fakes in unit tests."""

from __future__ import annotations

from typing import Protocol

from dockyard.bus.protocol import ReportCommand
from dockyard.core.log_line import LogLine


class ReportSink(Protocol):
    async def send(self, job_id: str, command: ReportCommand) -> None:
        """Return once the report is stored (waiting through outages)."""
        ...


class LogSinkPort(Protocol):
    async def publish(self, lines: list[LogLine]) -> None:
        """Send a batch after the previous ones; may return before it is stored."""
        ...

    async def flush(self) -> None:
        """Return once every batch sent is stored."""
        ...

    def abandon(self) -> None:
        """Drop what is still in flight (the attempt is being torn down)."""
        ...
