"""The event store: the append-only log of job events, its catch-up reader, the jobs read model."""

from dockyard.store.memory import InMemoryEventStore
from dockyard.store.pool import create_pool
from dockyard.store.ports import (
    START,
    BatchConflict,
    ConcurrencyError,
    DuplicateIdempotencyKey,
    EventStore,
    InvalidCursor,
    JobView,
    JobViews,
    PendingAppend,
    Position,
    RecordedEvent,
    StoreUnavailable,
    ViewPage,
)
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews, job_view

__all__ = [
    "START",
    "BatchConflict",
    "ConcurrencyError",
    "DuplicateIdempotencyKey",
    "EventStore",
    "InMemoryEventStore",
    "InvalidCursor",
    "JobView",
    "JobViews",
    "PendingAppend",
    "PgEventStore",
    "PgJobViews",
    "Position",
    "RecordedEvent",
    "StoreUnavailable",
    "ViewPage",
    "create_pool",
    "job_view",
]
