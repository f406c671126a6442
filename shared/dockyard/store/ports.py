"""The event store port: what services need from the log of events, whatever holds it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

from msgspec import Struct

from dockyard.core.events import Event
from dockyard.core.state import Job


class Position(NamedTuple):
    """A place in the global catch-up order: (writing transaction id, position)."""

    tx_id: int
    position: int


START = Position(0, 0)


class RecordedEvent(Struct, frozen=True):
    """An event as stored: its place in the job's history and in the global order."""

    event: Event
    version: int
    position: int
    tx_id: int
    recorded_at: datetime

    @property
    def at(self) -> Position:
        return Position(self.tx_id, self.position)


class ConcurrencyError(Exception):
    """Raised by append when the job's version is no longer the expected one."""

    def __init__(self, job_id: str, expected: int, actual: int | None = None) -> None:
        seen = "" if actual is None else f", it is at {actual}"
        super().__init__(f"job {job_id}: expected version {expected}{seen}")
        self.job_id = job_id
        self.expected = expected
        self.actual = actual


class StoreUnavailable(Exception):
    """Raised when the database cannot be reached; worth retrying later."""


class EventStore(Protocol):
    async def append(
        self,
        job_id: str,
        expected_version: int,
        events: Sequence[Event],
        view: Job | None = None,
    ) -> int:
        """Append after `expected_version`; return the new version.

        Raises ConcurrencyError if another writer appended first. Re-appending events whose
        ids are all stored already for this job is a no-op that returns the current version.
        `view`, the job as the events leave it, is written to the read model atomically.
        """
        ...

    async def load(self, job_id: str) -> list[RecordedEvent]:
        """The job's whole history in version order (empty for an unknown job)."""
        ...

    async def read_all(self, after: Position, limit: int = 1000) -> list[RecordedEvent]:
        """Events in the global catch-up order after `after`; never skips a late commit."""
        ...

    async def load_checkpoint(self, name: str) -> Position: ...

    async def save_checkpoint(self, name: str, position: Position) -> None: ...
