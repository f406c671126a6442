"""500 short jobs through one orchestrator: afterwards its memory and tasks are as before."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator

import aiodocker
import pytest
import pytest_asyncio

from dockyard.handling.job_cache import JobCache
from tests.support.orchestration import (
    TRACKERS,
    ControlPlane,
    TaskTracker,
    assert_nothing_left,
    new_orchestrator_id,
    running_orchestrator,
    spec,
)

WARM_UP = 40
JOBS = int(os.environ.get("SOAK_JOBS", "500"))
# Memory still held, allocated during the second half of the run: per-job state that leaks
# would grow it by its size times 250 (1 KB a job: 250 KB). What legitimately grows is
# the registry's fence of finished attempts (bounded at 10k entries, ~100 B each here).
MAX_SECOND_HALF_GROWTH = 192 * 1024
# Everything still held that was allocated during the run, bounded caches included.
MAX_GROWTH = 1024 * 1024


@pytest_asyncio.fixture(loop_scope="session")
async def control(nats_url: str, database_url: str) -> AsyncIterator[ControlPlane]:
    # The scheduler side shares this process: its batcher's job cache (bounded, a scheduler's
    # memory, not the orchestrator's this test measures) is kept empty.
    async with ControlPlane(nats_url, database_url, job_cache=JobCache(capacity=0)) as plane:
        yield plane


async def run_jobs(control: ControlPlane, orchestrator: object, image: str, count: int) -> None:
    start = orchestrator.finished  # type: ignore[attr-defined]
    for _ in range(count):
        await control.submit(spec(image, "true"))
    deadline = time.monotonic() + 30 + count
    while orchestrator.finished < start + count:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "jobs did not finish"
        await asyncio.sleep(0.1)


async def settled_tasks(tracker: TaskTracker) -> int:
    """The orchestrator's tasks once it is idle: the count seen most often over two seconds.

    Tasks come and go around a steady number both ways: a heartbeat's cancel sweep or a
    report being flushed adds one for a moment, and the claimer's wait for offers is a new
    task each fetch, absent for a moment between two (under load the fewest seen caught that
    gap on one side only). A leaked task stays, and moves the usual count with it.
    """
    counts = []
    for _ in range(20):
        await asyncio.sleep(0.1)
        counts.append(len(tracker.alive()))
    return Counter(counts).most_common(1)[0][0]


async def held() -> int:
    """Bytes allocated since tracing began and still alive, after a moment to settle."""
    await asyncio.sleep(0.5)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.timeout(900)
async def test_soak_500_jobs_leave_memory_and_tasks_as_they_were(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    async with running_orchestrator(nats_url, orchestrator_id, max_jobs=8) as orchestrator:
        tracker = TRACKERS[orchestrator_id]
        await run_jobs(control, orchestrator, busybox_image, WARM_UP)  # caches, pools, imports
        gc.collect()
        tasks_before = await settled_tasks(tracker)
        tracemalloc.start(10)
        try:
            started = time.monotonic()
            await run_jobs(control, orchestrator, busybox_image, JOBS // 2)
            half = await held()
            await run_jobs(control, orchestrator, busybox_image, JOBS - JOBS // 2)
            elapsed = time.monotonic() - started
            grown = await held()
            top = tracemalloc.take_snapshot().statistics("lineno")[:10]
        finally:
            tracemalloc.stop()
        tasks_after = await settled_tasks(tracker)
        assert orchestrator.running == 0 and len(orchestrator.registry) == 0
    print(
        f"\nsoak: {JOBS} jobs in {elapsed:.1f} s ({JOBS / elapsed:.1f} jobs/s); held: "
        f"{half} B after half, {grown} B at the end; tasks {tasks_before} -> {tasks_after}"
    )
    assert tasks_after == tasks_before
    assert grown - half < MAX_SECOND_HALF_GROWTH, "\n".join(map(str, top))
    assert grown < MAX_GROWTH, "\n".join(map(str, top))
    counts = await control.status_counts()
    assert counts == {"succeeded": WARM_UP + JOBS}
    await assert_nothing_left(docker, orchestrator_id)
