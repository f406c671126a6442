"""The event store port: what services need from the log of events, whatever holds it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

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


class DuplicateIdempotencyKey(Exception):
    """Raised by append when another job of the tenant already holds the view's idempotency key."""

    def __init__(self, tenant: str, key: str) -> None:
        super().__init__(f"tenant {tenant!r} already has a job with idempotency key {key!r}")
        self.tenant = tenant
        self.key = key


class BatchConflict(Exception):
    """Raised by append_many when any append of the batch conflicts (a version another writer
    took, an event stored already, an idempotency key held): nothing of the batch is stored.
    Append its jobs one at a time to learn which, and why."""


class PendingAppend(NamedTuple):
    """One job's part of append_many: its events after `expected_version`, and its view."""

    job_id: str
    expected_version: int
    events: Sequence[Event]
    view: Job


class StoreUnavailable(Exception):
    """Raised when the database cannot be reached; worth retrying later."""


class InvalidCursor(ValueError):
    """Raised by list_views when a cursor was not made by list_views."""


JobView = dict[str, Any]


class ViewPage(NamedTuple):
    """One page of job views, newest first; `next_cursor` is None on the last page."""

    jobs: list[JobView]
    next_cursor: str | None


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
        ids are all stored already for this job is a no-op that returns the current version;
        appending no events is a no-op that returns `expected_version`.
        `view`, the job as the events leave it (version `expected_version + len(events)`),
        is written to the read model atomically with the events; DuplicateIdempotencyKey if
        another job of the tenant holds its spec's idempotency key (then nothing is stored).
        ValueError for ids that are not UUIDs, events of another job, or a view that does not
        match; StoreUnavailable when the database cannot be reached.
        """
        ...

    async def load(self, job_id: str) -> list[RecordedEvent]:
        """The job's whole history in version order (empty for an unknown job)."""
        ...

    async def load_many(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        """The histories of several jobs in one read, keyed by the ids as given (an unknown
        job's is empty)."""
        ...

    async def append_many(self, appends: Sequence[PendingAppend]) -> None:
        """Several jobs' appends in one transaction: one commit, however many jobs (group
        commit). All or nothing; each job at most once. BatchConflict if any conflicts;
        StoreUnavailable and ValueError as append."""
        ...

    async def read_all(self, after: Position, limit: int = 1000) -> list[RecordedEvent]:
        """Events in the global catch-up order after `after`; never skips a late commit."""
        ...

    async def load_checkpoint(self, name: str) -> Position:
        """Where the reader `name` has got to (START if it never saved)."""
        ...

    async def save_checkpoint(self, name: str, position: Position) -> None: ...

    # A timeout parameter, not asyncio.timeout around the call: a quiet period is an answer.
    async def wait_for_events(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until events may have been appended since the last call, at most `timeout` s.

        True means "read again" (it may be spurious: the first call returns True at once);
        False means the timeout passed quietly. Readers still poll on timeout: an event can be
        committed but not yet readable while an older transaction is open.
        """
        ...

    def events_pending(self) -> bool:
        """Whether a read now may find what the last read_all did not: a commit was notified
        after it began, or it returned events while later ones were still held back. False
        is safe to act on: what commits later is notified (and polled for)."""
        ...


class JobViews(Protocol):
    """The jobs read model: each job's contract view, as written by append(view=...)."""

    async def get_view(self, job_id: str) -> JobView | None: ...

    async def list_views(
        self,
        tenant: str | None,
        *,
        status: str | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ViewPage:
        """Newest first (created_at, then id); `tenant` None lists every tenant."""
        ...

    async def find_by_idempotency_key(self, tenant: str, key: str) -> JobView | None: ...
