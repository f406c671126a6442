"""The scheduler's gauges on a real read model: live statuses exact at every scrape and cheap
however many finished jobs retention keeps; finished ones refreshed every few minutes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest_asyncio

from dockyard.scheduler import gauges
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.store.pool import Pool, create_pool

_JOBS = (
    "INSERT INTO jobs (id, tenant, status, queue, attempt, version, created_at, view)"
    " SELECT gen_random_uuid(), 'acme', $1, 'default', 1, 2, now(), '{}'"
    " FROM generate_series(1, $2)"
)


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url)
    yield pool
    await pool.close()


def _gauge(metrics: SchedulerMetrics, status: str) -> float | None:
    return metrics.registry.get_sample_value("dockyard_jobs", {"status": status})


async def test_live_counts_are_exact_and_finished_ones_refreshed_every_few_minutes(
    pool: Pool,
) -> None:
    now = [0.0]
    refresh = gauges.pg_gauges(pool, clock=lambda: now[0])
    metrics = SchedulerMetrics()
    await pool.execute(_JOBS, "running", 3)
    await pool.execute(_JOBS, "succeeded", 5)
    await refresh(metrics)
    assert (_gauge(metrics, "running"), _gauge(metrics, "succeeded")) == (3, 5)
    await pool.execute(_JOBS, "running", 1)
    await pool.execute(_JOBS, "succeeded", 2)
    now[0] += 60
    await refresh(metrics)
    assert (_gauge(metrics, "running"), _gauge(metrics, "succeeded")) == (4, 5)
    now[0] += gauges.TERMINAL_REFRESH_S
    await refresh(metrics)
    assert (_gauge(metrics, "running"), _gauge(metrics, "succeeded")) == (4, 7)


async def test_a_scrape_reads_the_jobs_in_flight_not_every_finished_one(pool: Pool) -> None:
    await pool.execute(_JOBS, "succeeded", 50_000)
    await pool.execute(_JOBS, "queued", 10)
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE jobs")
        for statement in (gauges._LIVE_COUNTS, gauges._QUEUE_DEPTH):
            report = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}")
            top = json.loads(report)[0]["Plan"]
            pages = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
            assert pages < 50, (statement, pages)
