"""Queueing scheduled jobs whose time has come: delayed jobs (`run_at`) and retries.

Every scheduler replica ticks; two enqueueing the same job contend on its version and the
loser's decide finds nothing left to do, so a job is queued once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Protocol

from dockyard.core import EnqueueDue, Rejected
from dockyard.handling.execute import Clock, execute, utc_now
from dockyard.process.cancelling import raise_if_cancelled
from dockyard.store.pool import Pool, translated
from dockyard.store.ports import ConcurrencyError, EventStore, StoreUnavailable

log = logging.getLogger("dockyard.scheduler.due")

TICK_S = 0.25
BATCH = 500


class DueJobs(Protocol):
    async def due_jobs(self, now: datetime, limit: int) -> list[str]:
        """Ids of scheduled jobs whose due time is at or before `now`, earliest first."""
        ...


class PgDueJobs:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def due_jobs(self, now: datetime, limit: int) -> list[str]:
        async with translated("due jobs"):
            rows = await self._pool.fetch(
                "SELECT id FROM jobs WHERE status = 'scheduled' AND due_at <= $1"
                " ORDER BY due_at LIMIT $2",
                now,
                limit,
            )
        return [str(row["id"]) for row in rows]


async def enqueue_due(
    store: EventStore, due: DueJobs, clock: Clock = utc_now, limit: int = BATCH
) -> int:
    """Queue every job due now; return how many were queued."""
    queued = 0
    for job_id in await due.due_jobs(clock(), limit):
        try:
            outcome = await execute(store, job_id, EnqueueDue(), clock=clock)
        except (Rejected, ConcurrencyError) as error:
            log.warning("due.skipped job=%s error=%s", job_id, error)
            continue
        queued += bool(outcome.events)
    return queued


async def run_due_ticker(
    store: EventStore, due: DueJobs, clock: Clock = utc_now, tick_s: float = TICK_S
) -> None:
    while True:
        raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
        try:
            while await enqueue_due(store, due, clock) >= BATCH:
                pass  # a backlog: keep going without sleeping
        except StoreUnavailable as error:
            log.warning("due.store_unavailable error=%s", error)
        except Exception:  # a loop of a long-running service must outlive any one tick
            log.exception("due.tick_failed", extra={"event": "due.tick_failed"})
        await asyncio.sleep(tick_s)
