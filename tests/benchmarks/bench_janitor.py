"""What a janitor sweep costs against a large history, next to a plain scan of the events.

Run with `scripts/test -m benchmark tests/benchmarks/bench_janitor.py -s`. The first sweep after
a janitor starts reads every unreleased intent on its engine (the ledger watch); later sweeps
read only new events, so their cost follows the work in flight, not the history's size.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiodocker
import pytest
import pytest_asyncio

from dockyard.bus.names import LABEL_ORCHESTRATOR
from dockyard.core import ClaimJob, RecordResource, ReleaseResource, ReportExit, ReportStarted
from dockyard.janitor import Janitor, Sources
from dockyard.janitor.ledger_watch import LedgerWatch
from dockyard.runtime.docker import DockerRuntime
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore
from tests.support.janitor import janitor_config, scoped_orchestrator_id
from tests.support.store_contract import History

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(1800)]

ENGINE = "BENCH:ENGINE"
FINISHED = 20_000  # jobs whose ledger was settled by their orchestrator (7 events each)
OPEN = 200  # finished jobs with an entry left open (the container never existed)
RUNNING = 200


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url, min_size=4, max_size=4)
    yield pool
    await pool.close()


def life(*, release: bool, finish: bool) -> History:
    h = History()
    h.submit(command=["true"])
    h.run(ClaimJob(attempt=1, orchestrator="bench-orch"))
    name = f"dockyard-{h.job_id}-1"
    h.run(
        RecordResource(
            attempt=1, kind="container", name=name, orchestrator="bench-orch", engine=ENGINE
        )
    )
    h.run(ReportStarted(attempt=1, container_id="c", orchestrator="bench-orch"))
    if finish:
        h.run(ReportExit(attempt=1, exit_code=0))
    if release:
        h.run(ReleaseResource(attempt=1, kind="container", name=name))
    return h


async def fill(store: PgEventStore) -> int:
    lives = (
        [life(release=True, finish=True) for _ in range(FINISHED)]
        + [life(release=False, finish=True) for _ in range(OPEN)]
        + [life(release=False, finish=False) for _ in range(RUNNING)]
    )
    slots = asyncio.Semaphore(4)

    async def one(h: History) -> None:
        async with slots:
            await store.append(h.job_id, 0, h.events, h.view())

    await asyncio.gather(*(one(h) for h in lives))
    return sum(len(h.events) for h in lives)


async def test_sweep_cost_against_a_large_history(
    pool: Pool, docker: aiodocker.Docker, database_url: str
) -> None:
    store = PgEventStore(pool)
    events = await fill(store)
    await pool.execute("ANALYZE events")

    started = time.perf_counter()
    await pool.fetchval("SELECT count(*) FROM events WHERE type = 'resource_intended'")
    scan_s = time.perf_counter() - started

    async def engine_id() -> str:
        return ENGINE

    config = janitor_config(scoped_orchestrator_id())  # the engine shows it nothing
    assert config.select.get(LABEL_ORCHESTRATOR)
    sources = Sources(pool=pool, runtime=DockerRuntime(docker), engine_id=engine_id)
    janitor = Janitor(sources, store, config)
    janitor.observer.ledger = LedgerWatch(overlap_s=0)  # every position is final at once

    timings = []
    for _ in range(3):
        report = await janitor.sweep(dry_run=True)
        timings.append(report.duration_s)
        assert sum(1 for a in report.actions if a.action == "settle_entry") == OPEN
    first, *later = timings
    print(
        f"\n{events:,} events ({FINISHED + OPEN + RUNNING:,} jobs, {RUNNING} running): "
        f"seq scan of events {scan_s * 1000:.0f} ms; first sweep {first * 1000:.0f} ms "
        f"({first / scan_s:.1f}x the scan); later sweeps "
        + ", ".join(f"{t * 1000:.0f} ms" for t in later)
    )
