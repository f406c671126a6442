"""Gauges read from the jobs read model when Prometheus scrapes: jobs by status, queue depth."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dockyard.core.state import Status
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.store.pool import Pool, translated

_STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]


def pg_gauges(pool: Pool) -> Callable[[SchedulerMetrics], Awaitable[None]]:
    async def refresh(metrics: SchedulerMetrics) -> None:
        async with translated("gauges"):
            by_status = await pool.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
            depth = await pool.fetch(
                "SELECT queue, count(*) AS n FROM jobs WHERE status = 'queued' GROUP BY queue"
            )
        counts = {r["status"]: r["n"] for r in by_status}
        for status in _STATUSES:
            metrics.jobs_by_status.labels(status).set(counts.get(status, 0))
        metrics.queue_depth.clear()
        for row in depth:
            metrics.queue_depth.labels(row["queue"]).set(row["n"])

    return refresh
