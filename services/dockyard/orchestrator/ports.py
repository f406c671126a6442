"""What an attempt needs from the bus, as protocols: NATS in the service, fakes in unit tests."""

from __future__ import annotations

from typing import Protocol

from msgspec import Struct

from dockyard.bus.protocol import ReportCommand
from dockyard.core.log_line import LogLine


class ReportSink(Protocol):
    async def send(self, job_id: str, command: ReportCommand) -> None:
        """Return once the report is stored (waiting through outages)."""
        ...


class LogSinkPort(Protocol):
    async def publish(self, lines: list[LogLine], *, last_seq: int | None = None) -> None:
        """Send a batch after the previous ones; may return before it is stored. `last_seq`:
        it is the attempt's final batch (`lines` may then be empty), its last line's seq."""
        ...

    async def flush(self) -> None:
        """Return once every batch sent is stored."""
        ...

    def abandon(self) -> None:
        """Drop what is still in flight (the attempt is being torn down)."""
        ...


class LastBatch(Struct, frozen=True, kw_only=True):
    """What the last batch this orchestrator published for a job says."""

    seq: int = 0  # its last line's seq (0: none)
    attempt: int = 0
    final: bool = False  # the attempt's final batch: its log is whole
