"""Event store benchmarks, each against a baseline measured in the same run.

Run with `pytest -m benchmark tests/benchmarks/test_store_bench.py -s`. Targets:
batched append >= 0.5x raw COPY; single-event append p50 <= 1.2x a raw one-row INSERT;
rebuild >= 100,000 events/s over 1,000,000 events; folding a 10-event history < 50 us.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from msgspec.structs import replace

from dockyard.core import (
    ClaimJob,
    EnqueueDue,
    Event,
    RecordResource,
    ReleaseResource,
    ReportExit,
    ReportStarted,
    fold,
    uuid7,
)
from dockyard.core.events import type_name
from dockyard.core.resource_names import container_name, network_name
from dockyard.store.pool import Connection, Pool, create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.rebuild import rebuild
from dockyard.store.records import split
from tests.support.store_contract import T0, History

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(900)]

COLUMNS = ("job_id", "version", "event_id", "type", "schema_version", "data", "metadata")


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url, min_size=4, max_size=4)
    await pool.execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
    yield pool
    await pool.close()


def ten_event_life(job_id: str | None = None) -> History:
    """Submitted, scheduled, queued, claimed, two resources, started, succeeded, released."""
    life = History(job_id)
    life.submit(command=["sh", "-c", "echo hello"], labels={"team": "x"}, run_at=T0 + timedelta(1))
    life.now += timedelta(days=1)
    life.run(EnqueueDue())
    life.run(ClaimJob(attempt=1, orchestrator="orch-1"))
    net, ctr = network_name(life.job_id, 1), container_name(life.job_id, 1)
    life.run(RecordResource(attempt=1, kind="network", name=net, orchestrator="orch-1"))
    life.run(RecordResource(attempt=1, kind="container", name=ctr, orchestrator="orch-1"))
    life.run(ReportStarted(attempt=1, container_id="abc", orchestrator="orch-1"))
    life.run(ReportExit(attempt=1, exit_code=0, duration_s=1.5))
    life.run(ReleaseResource(attempt=1, kind="container", name=ctr))
    assert len(life.events) == 9
    life.run(ReleaseResource(attempt=1, kind="network", name=net))
    assert len(life.events) == 10
    return life


def raw_rows(job_id: str, events: list[Event], first_version: int = 1) -> list[tuple[object, ...]]:
    """The rows the store would write, made the same way (for the raw baselines)."""
    rows: list[tuple[object, ...]] = []
    for version, event in enumerate(events, first_version):
        data, metadata = split(event)
        rows.append(
            (job_id, version, event.event_id, type_name(type(event)), event.v, data, metadata)
        )
    return rows


def cloned_rows(jobs: int) -> Iterator[tuple[object, ...]]:
    """`jobs` 10-event histories, cloned from one by swapping ids in the JSON (fast to make)."""
    template = ten_event_life()
    old_job = template.job_id.encode()
    rows = raw_rows(template.job_id, template.events)
    for j in range(jobs):
        job_id = str(uuid.UUID(int=(0x0190 << 112) | (7 << 76) | (2 << 62) | j))
        for version, (_, _, event_id, kind, v, data, metadata) in enumerate(rows, 1):
            new_id = str(
                uuid.UUID(int=(0x0191 << 112) | (7 << 76) | (2 << 62) | (j << 4) | version)
            )
            assert isinstance(data, bytes) and isinstance(event_id, str)
            data = data.replace(old_job, job_id.encode()).replace(
                event_id.encode(), new_id.encode()
            )
            yield (job_id, version, new_id, kind, v, data, metadata)


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[bench] {line}")


def batches(size: int, count: int) -> list[tuple[str, list[Event]]]:
    """`count` batches of `size` events of one job each (past 10, copies of a 10-event life)."""
    made = []
    for _ in range(count):
        life = ten_event_life()
        events = [replace(e, event_id=uuid7()) for _ in range(size // 10) for e in life.events]
        made.append((life.job_id, events))
    return made


async def test_batched_append_throughput_vs_raw_copy(
    pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    total, writers = 30_000, 4
    store = PgEventStore(pool)

    async def run(work: list[Any], write: Any) -> float:
        queue = iter(work)

        async def writer() -> None:
            for item in queue:
                await write(*item)

        t = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        return total / (time.perf_counter() - t)

    async def copy(rows: list[tuple[object, ...]]) -> None:
        await pool.copy_records_to_table("raw_events", records=rows, columns=COLUMNS)

    def rows_of(work: list[tuple[str, list[Event]]]) -> list[list[tuple[object, ...]]]:
        return [raw_rows(job_id, events) for job_id, events in work]

    await copy([row for rows in rows_of(batches(10, 100)) for row in rows])  # warm up
    copy_all = 0.0
    for _ in range(2):  # the better of two, as the noisier baseline
        one_copy = batches(10, total // 10)
        t = time.perf_counter()
        await copy([row for rows in rows_of(one_copy) for row in rows])
        copy_all = max(copy_all, total / (time.perf_counter() - t))
    report(capsys, f"raw COPY of {total:,} events in one call: {copy_all:,.0f} ev/s")

    for size, with_view in ((10, False), (10, True), (100, False), (1000, False)):
        work = batches(size, total // size)
        copy_rate = await run([(rows,) for rows in rows_of(work)], copy)
        items = [
            (job_id, 0, events, fold(events) if with_view else None) for job_id, events in work
        ]
        rate = await run(items, store.append)
        report(
            capsys,
            f"append, {size} events{' + view' if with_view else ''} per call, {writers} writers:"
            f" {rate:,.0f} ev/s = {rate / copy_all:.2f}x one COPY (target >= 0.5),"
            f" {rate / copy_rate:.2f}x a COPY per batch ({copy_rate:,.0f} ev/s)",
        )


async def test_single_event_append_latency_vs_raw_insert(
    pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    rounds = 3000
    store = PgEventStore(pool)
    insert = f"INSERT INTO raw_events ({', '.join(COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    names = ("raw INSERT, own connection", "raw INSERT via the pool", "append", "append + view")
    timings: dict[str, list[float]] = {name: [] for name in names}

    def submitted() -> History:
        life = History()
        life.submit()
        return life

    async with pool.acquire() as conn:
        for _ in range(rounds):  # interleaved, so drift hits all alike
            raw = raw_rows(submitted().job_id, submitted().events[:1])[0]
            timings[names[0]].append(await _timed(conn.execute(insert, *raw)))
            raw = raw_rows(submitted().job_id, submitted().events[:1])[0]
            timings[names[1]].append(await _timed(pool.execute(insert, *raw)))
            life = submitted()
            timings[names[2]].append(await _timed(store.append(life.job_id, 0, life.events[:1])))
            view = fold(life.events)
            timings[names[3]].append(
                await _timed(store.append(life.job_id, 1, life.events[1:], view))
            )
    p = {k: _percentiles(v) for k, v in timings.items()}
    for name in names:
        report(capsys, f"{name}: p50 {p[name][0]:.0f} us, p99 {p[name][1]:.0f} us")
    for name in names[2:]:
        report(
            capsys,
            f"{name} p50 ratio: {p[name][0] / p[names[0]][0]:.2f}x raw on its own connection,"
            f" {p[name][0] / p[names[1]][0]:.2f}x raw via the pool (target <= 1.2)",
        )


async def test_rebuild_of_a_million_events(pool: Pool, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = 100_000
    records = list(cloned_rows(jobs))
    async with pool.acquire() as conn:
        await _copy_in_chunks(conn, records)
    del records
    await pool.execute("VACUUM ANALYZE events")
    t = time.perf_counter()
    folded = await rebuild(pool)
    seconds = time.perf_counter() - t
    assert folded == jobs * 10
    assert await pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'succeeded'") == jobs
    report(
        capsys,
        f"rebuild: {folded:,} events in {seconds:.2f} s = {folded / seconds:,.0f} events/s"
        " (target >= 100,000)",
    )


def test_fold_of_a_ten_event_history(capsys: pytest.CaptureFixture[str]) -> None:
    events = ten_event_life().events
    rounds = 20_000
    fold(events)
    t = time.perf_counter()
    for _ in range(rounds):
        fold(events)
    micros = (time.perf_counter() - t) / rounds * 1e6
    report(capsys, f"fold of a 10-event history: {micros:.1f} us (target < 50)")


async def _timed(call: object) -> float:
    assert asyncio.iscoroutine(call)
    t = time.perf_counter()
    await call
    return (time.perf_counter() - t) * 1e6


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49], cuts[98]


async def _copy_in_chunks(conn: Connection, records: list[tuple[object, ...]]) -> None:
    for i in range(0, len(records), 200_000):
        chunk = records[i : i + 200_000]
        await conn.copy_records_to_table("events", records=chunk, columns=COLUMNS)
