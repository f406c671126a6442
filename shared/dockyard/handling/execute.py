"""Running a command against a job: load, decide, append — retried on a concurrent writer.

This is the one place where the pure core meets the event store; every service that changes
a job (the API, the report consumer, the claim responder, the janitor) goes through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from msgspec import Struct

from dockyard.core import Command, Context, Event, Job, Metadata, decide, fold, uuid7
from dockyard.store.ports import ConcurrencyError, EventStore

Clock = Callable[[], datetime]

# Enough for a burst of reports on one job; past this something is wrong and it surfaces.
MAX_CONFLICT_RETRIES = 20


class Outcome(Struct, frozen=True):
    job: Job | None
    events: list[Event]


def utc_now() -> datetime:
    return datetime.now(UTC)


async def execute(
    store: EventStore,
    job_id: str,
    command: Command,
    *,
    meta: Metadata | None = None,
    clock: Clock = utc_now,
    new_id: Callable[[], str] = uuid7,
) -> Outcome:
    """Apply `command` to the job; the core's Rejected errors propagate to the caller."""
    for attempt in range(MAX_CONFLICT_RETRIES):
        history = await store.load(job_id)
        job = fold(r.event for r in history)
        ctx = Context(job_id=job_id, now=clock(), meta=meta or Metadata())
        events = decide(job, command, ctx, new_id)
        if not events:
            return Outcome(job, [])
        after = fold(events, job)
        try:
            await store.append(job_id, len(history), events, view=after)
        except ConcurrencyError:
            await asyncio.sleep(0.001 * attempt)
            continue
        return Outcome(after, events)
    raise ConcurrencyError(job_id, -1)
