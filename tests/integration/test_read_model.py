"""The jobs read model on PostgreSQL: what append writes equals what a rebuild folds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from dockyard.core import (
    ClaimJob,
    EnqueueDue,
    MarkOrchestratorLost,
    ReportExit,
    ReportStarted,
    RequestCancel,
    fold,
)
from dockyard.core.codec import decode as codec_decode
from dockyard.core.events import JobSubmitted
from dockyard.core.spec import RetryPolicy
from dockyard.store import rebuild as rebuild_module
from dockyard.store.admin import db_migrate, db_rebuild
from dockyard.store.pool import Pool, create_pool
from dockyard.store.ports import START
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews, job_view
from dockyard.store.rebuild import HistoryDecoder, rebuild
from tests.support.store_contract import T0, History, write

ROWS = "SELECT * FROM jobs ORDER BY id"


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url, min_size=2, max_size=4)
    yield pool
    await pool.close()


async def run(store: PgEventStore, history: History, *commands: object) -> None:
    for command in commands:
        await write(store, history, history.run(command))


def claim(orchestrator: str = "o-1", attempt: int = 1) -> list[object]:
    return [
        ClaimJob(attempt=attempt, orchestrator=orchestrator),
        ReportStarted(attempt=attempt, container_id=f"c{attempt}", orchestrator=orchestrator),
    ]


async def many_lives(store: PgEventStore) -> list[History]:
    """Jobs in every status, each written one decision at a time with its view."""
    retry = RetryPolicy(max_attempts=3, backoff_s=1.0, max_backoff_s=1.0)  # floats, as decoded
    made: list[History] = []
    for i in range(6):
        ok = History(now=T0 + timedelta(minutes=i))
        await write(store, ok, ok.submit(labels={"n": str(i)}, idempotency_key=f"k{i}"))
        await run(store, ok, *claim(), ReportExit(attempt=1, exit_code=0))
        made.append(ok)
    retried = History()
    await write(store, retried, retried.submit(retry=retry))
    await run(store, retried, *claim(), ReportExit(attempt=1, exit_code=1))
    retried.now += timedelta(seconds=5)
    await run(store, retried, EnqueueDue(), *claim("o-2", attempt=2))
    lost = History()
    await write(store, lost, lost.submit(retry=retry, queue="gpu"))
    await run(store, lost, *claim())
    await run(store, lost, MarkOrchestratorLost(attempt=1, orchestrator="o-1", silent_s=20))
    cancelled = History()
    await write(store, cancelled, cancelled.submit(tenant="other"))
    await run(store, cancelled, RequestCancel(requested_by="alice"))
    timed_out = History()
    await write(store, timed_out, timed_out.submit(env={"T": "x"}, secrets=("T",)))
    await run(store, timed_out, *claim(), ReportExit(attempt=1, exit_code=None, reason="timed_out"))
    later = History()
    await write(store, later, later.submit(run_at=T0 + timedelta(days=1)))
    failed = History()
    await write(store, failed, failed.submit())
    await run(store, failed, *claim(), ReportExit(attempt=1, exit_code=2))
    queued = History()
    await write(store, queued, queued.submit())
    return [*made, retried, lost, cancelled, timed_out, later, failed, queued]


async def test_rebuild_gives_the_rows_append_wrote_and_the_fold_of_each_history(
    pool: Pool,
) -> None:
    store, views = PgEventStore(pool), PgJobViews(pool)
    histories = await many_lives(store)
    written = await pool.fetch(ROWS)
    assert len({r["status"] for r in written}) == 7  # all but starting
    assert await rebuild(pool) == sum(len(h.events) for h in histories)
    assert await pool.fetch(ROWS) == written
    for history in histories:
        folded = fold([r.event for r in await store.load(history.job_id)])
        assert folded is not None
        assert await views.get_view(history.job_id) == job_view(folded)


async def test_rebuild_repairs_a_damaged_read_model(pool: Pool) -> None:
    store = PgEventStore(pool)
    await many_lives(store)
    written = await pool.fetch(ROWS)
    await pool.execute("UPDATE jobs SET status = 'bogus', view = '{}' WHERE attempt = 1")
    await pool.execute("DELETE FROM jobs WHERE queue = 'gpu'")
    await rebuild(pool)
    assert await pool.fetch(ROWS) == written


async def test_rebuild_leaves_out_purged_jobs_unless_an_event_came_after_the_purge(
    pool: Pool,
) -> None:
    store = PgEventStore(pool)
    purged, revived, kept = (await many_lives(store))[:3]
    rows = {str(r["id"]) for r in await pool.fetch("SELECT id FROM jobs")}
    await pool.execute(
        "INSERT INTO purged_jobs (id, purged_at) VALUES ($1, now() + interval '1 hour'),"
        " ($2, now() - interval '1 hour')",  # `revived` had an event after its purge
        purged.job_id,
        revived.job_id,
    )
    await rebuild(pool)
    after = {str(r["id"]) for r in await pool.fetch("SELECT id FROM jobs")}
    assert after == rows - {purged.job_id}
    assert kept.job_id in after and revived.job_id in after


async def test_rebuild_keeps_index_names_and_prepared_queries_working(pool: Pool) -> None:
    store, views = PgEventStore(pool), PgJobViews(pool)
    await many_lives(store)
    indexes = "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'jobs'::regclass"
    before = sorted(r[0] for r in await pool.fetch(indexes))
    page = await views.list_views("acme", limit=3)
    await rebuild(pool)
    assert sorted(r[0] for r in await pool.fetch(indexes)) == before
    assert await views.list_views("acme", limit=3) == page
    later = History()
    await write(store, later, later.submit())  # appends with a view still work
    assert await views.get_view(later.job_id) == job_view(later.view())


async def test_rebuild_of_no_events_empties_the_read_model(pool: Pool) -> None:
    assert await rebuild(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_rebuild_waits_for_an_append_in_flight(pool: Pool) -> None:
    store = PgEventStore(pool)
    history = History()
    await write(store, history, history.submit())
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        in_flight = PgEventStore(conn)  # type: ignore[arg-type]  # one connection, one open tx
        await write(in_flight, history, history.run(ClaimJob(attempt=1, orchestrator="o")))
        rebuilding = asyncio.ensure_future(rebuild(pool))
        await asyncio.sleep(0.2)
        assert not rebuilding.done()  # blocked on the lock until the append commits
        await tx.commit()
    assert await rebuilding == 3
    view = await PgJobViews(pool).get_view(history.job_id)
    assert view is not None and view["status"] == "starting"


async def test_appends_during_a_rebuild_wait_only_for_the_view_and_lose_nothing(
    database_url: str, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, views = PgEventStore(pool), PgJobViews(pool)
    with_view, without_view = History(), History()
    await write(store, with_view, with_view.submit())
    await write(store, without_view, without_view.submit())
    paused, resume = asyncio.Event(), asyncio.Event()
    copy = rebuild_module._copy

    async def paused_copy(conn: Any, rows: Any) -> str:
        paused.set()
        await resume.wait()
        return await copy(conn, rows)

    monkeypatch.setattr(rebuild_module, "_copy", paused_copy)
    others = await create_pool(database_url, min_size=2, max_size=4)
    try:
        rebuilding = asyncio.ensure_future(rebuild(pool))
        await asyncio.wait_for(paused.wait(), 10)
        other = PgEventStore(others)
        claim = with_view.run(ClaimJob(attempt=1, orchestrator="o"))
        waiting = asyncio.ensure_future(write(other, with_view, claim))
        new = without_view.run(ClaimJob(attempt=1, orchestrator="o"))
        assert await other.append(without_view.job_id, 2, new) == 3  # not held up
        assert len(await other.read_all(START)) == 5  # nor is the catch-up reader
        assert await PgJobViews(others).get_view(with_view.job_id) is not None  # nor reads
        await asyncio.sleep(0.3)
        assert not waiting.done()  # its view waits for the swap
        resume.set()
        assert await asyncio.wait_for(rebuilding, 30) == 4
        assert await asyncio.wait_for(waiting, 30) == 3
    finally:
        await others.close()
    for history in (with_view, without_view):
        folded = fold([r.event for r in await store.load(history.job_id)])
        assert folded is not None and folded.version == 3
    assert await views.get_view(with_view.job_id) == job_view(with_view.view())


async def test_admin_hooks_migrate_and_rebuild(database_url: str, pool: Pool) -> None:
    assert await db_migrate(database_url) == []  # the fixture migrated it already
    histories = await many_lives(PgEventStore(pool))
    assert await db_rebuild(database_url) == sum(len(h.events) for h in histories)


def test_history_decoder_sends_old_versions_through_the_codec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history = History()
    history.submit()
    data = msgspec.json.encode(history.events)
    calls: list[object] = []

    def counting(raw: Any) -> Any:
        calls.append(raw)
        return codec_decode(raw)

    monkeypatch.setattr(rebuild_module, "decode", counting)
    decoder = HistoryDecoder()
    assert decoder(data) == history.events
    assert calls == []  # the fast path: one msgspec call for the whole history
    decoder._current[JobSubmitted] = 2  # as if JobSubmitted had moved on to v2
    assert decoder(data) == history.events
    assert len(calls) == 2  # each event through the codec, which upcasts


async def test_a_status_filter_gets_a_plan_of_its_own_and_never_sql_from_input(
    database_url: str,
) -> None:
    """A known status goes into the SQL as a literal (a generic plan made for a common
    status walked every job of the tenant looking for a rare one); anything else stays a
    parameter."""
    statements: list[str] = []

    async def log_queries(conn: Any) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    pool = await create_pool(database_url, init=log_queries)
    try:
        views = PgJobViews(pool)
        await views.list_views("acme", status="cancelled")
        assert "status = 'cancelled'" in statements[-1]
        hostile = "x' OR '1'='1"
        assert (await views.list_views("acme", status=hostile)).jobs == []
        assert hostile not in statements[-1] and "status = $2" in statements[-1]
    finally:
        await pool.close()
