"""Gauges read from the jobs read model when Prometheus scrapes: jobs by status, queue depth.

Live statuses (scheduled, queued, starting, running) are counted at every scrape, through the
status index: what a scrape costs follows the jobs in flight. Finished jobs are as many as
retention keeps (millions at a steady rate), and counting them means reading all of them, so
their counts are refreshed at most every TERMINAL_REFRESH_S.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

from dockyard.core.state import STATUSES, TERMINAL
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.store.pool import Pool, translated

_LIVE = tuple(s for s in STATUSES if s not in TERMINAL)

TERMINAL_REFRESH_S: Final = 300.0

# The statuses are literals in the text, so even a generic plan knows to use the index.
_COUNT = "SELECT status, count(*) AS n FROM jobs WHERE status IN ({}) GROUP BY status"
_LIVE_COUNTS = _COUNT.format(", ".join(f"'{s}'" for s in _LIVE))
_TERMINAL_COUNTS = _COUNT.format(", ".join(f"'{s}'" for s in sorted(TERMINAL)))
_QUEUE_DEPTH = "SELECT queue, count(*) AS n FROM jobs WHERE status = 'queued' GROUP BY queue"


def pg_gauges(
    pool: Pool, *, clock: Callable[[], float] = time.monotonic
) -> Callable[[SchedulerMetrics], Awaitable[None]]:
    terminal: dict[str, int] = {}
    counted_at = -math.inf

    async def refresh(metrics: SchedulerMetrics) -> None:
        nonlocal counted_at
        async with translated("gauges"):
            live = await pool.fetch(_LIVE_COUNTS)
            depth = await pool.fetch(_QUEUE_DEPTH)
            if clock() - counted_at >= TERMINAL_REFRESH_S:
                rows = await pool.fetch(_TERMINAL_COUNTS)
                terminal.clear()
                terminal.update({r["status"]: r["n"] for r in rows})
                counted_at = clock()
        counts = {**terminal, **{r["status"]: r["n"] for r in live}}
        for status in STATUSES:
            metrics.jobs_by_status.labels(status).set(counts.get(status, 0))
        metrics.set_queue_depths((row["queue"], row["n"]) for row in depth)

    return refresh
