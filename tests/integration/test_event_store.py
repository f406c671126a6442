"""The event store contract on PostgreSQL, and what only the database can promise."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from dockyard.core import Event, fold
from dockyard.core.events import type_name
from dockyard.store import postgres
from dockyard.store.pool import Pool, create_pool
from dockyard.store.ports import START, Position, RecordedEvent, StoreUnavailable
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews
from dockyard.store.records import split
from tests.support.store_contract import EventStoreContract, History


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url, min_size=2, max_size=4)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def pg_store(pool: Pool) -> AsyncIterator[PgEventStore]:
    store = PgEventStore(pool)
    yield store
    await store.close()


class TestPgEventStore(EventStoreContract):
    @pytest.fixture
    def store(self, pg_store: PgEventStore) -> PgEventStore:
        return pg_store

    @pytest.fixture
    def views(self, pool: Pool) -> PgJobViews:
        return PgJobViews(pool)


async def insert_in(conn: asyncpg.Connection, job_id: str, event: Event) -> None:
    """An append made by hand inside the caller's open transaction."""
    data, metadata = split(event)
    await conn.execute(
        "INSERT INTO events (job_id, version, event_id, type, schema_version, data, metadata)"
        " VALUES ($1, 1, $2, $3, $4, $5, $6)",
        job_id,
        event.event_id,
        type_name(type(event)),
        event.v,
        data,
        metadata,
    )


async def read_everything(store: PgEventStore, after: Position) -> list[RecordedEvent]:
    seen: list[RecordedEvent] = []
    while page := await store.read_all(after, limit=100):
        seen.extend(page)
        after = page[-1].at
    return seen


async def test_read_all_waits_for_an_older_transaction_that_commits_late(
    pool: Pool, pg_store: PgEventStore
) -> None:
    slow, fast = History(), History()
    slow_event, fast_events = slow.submit()[0], fast.submit()
    async with pool.acquire() as conn:
        t1 = conn.transaction()
        await t1.start()
        await insert_in(conn, slow.job_id, slow_event)  # T1: older, smaller position
        await pg_store.append(fast.job_id, 0, fast_events)  # T2: commits first
        early = await pg_store.read_all(START)
        # T2's events sort after T1's, which may still commit: not readable yet.
        assert early == []
        await t1.commit()
    seen = await read_everything(pg_store, START)
    assert [r.event for r in seen] == [slow_event, *fast_events]
    assert len({r.at for r in seen}) == len(seen)


async def test_read_all_waits_briefly_for_an_older_transaction_without_events(
    pool: Pool, pg_store: PgEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older transaction that writes no event (a log write, say) holds committed events
    back, and its commit notifies nobody: read_all waits for it rather than leave the events
    to a reader's next poll."""
    # A wide window, so a loaded machine's scheduling delays cannot decide the outcome.
    monkeypatch.setattr(postgres, "HELD_BACK_WAIT_S", 10.0)
    job = History()
    events = job.submit()
    async with pool.acquire() as conn:
        t1 = conn.transaction()
        await t1.start()
        await conn.execute("SELECT pg_current_xact_id()")  # T1 holds an xid, writes no event
        await pg_store.append(job.job_id, 0, events)  # T2 commits behind it

        async def commit_soon() -> None:
            await asyncio.sleep(0.05)
            await t1.commit()

        committing = asyncio.create_task(commit_soon())
        page = await pg_store.read_all(START)
        await committing
    assert [r.event for r in page] == events


async def test_read_all_orders_by_transaction_when_positions_disagree(
    pool: Pool, pg_store: PgEventStore
) -> None:
    slow, fast = History(), History()
    slow_event, fast_events = slow.submit()[0], fast.submit()
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_current_xact_id()")  # T1 takes its xid first
            await pg_store.append(fast.job_id, 0, fast_events)  # T2 inserts, commits
            assert await pg_store.read_all(START) == []
            await insert_in(conn, slow.job_id, slow_event)  # T1's position is the larger
        seen = await read_everything(pg_store, START)
    assert [r.event for r in seen] == [slow_event, *fast_events]
    assert seen[0].position > seen[-1].position  # a position-only reader would skip it


async def test_read_all_misses_nothing_under_concurrent_writers(pg_store: PgEventStore) -> None:
    histories = [History() for _ in range(40)]
    writing = asyncio.ensure_future(
        asyncio.gather(*(pg_store.append(h.job_id, 0, h.submit()) for h in histories))
    )
    seen: list[RecordedEvent] = []
    after = START
    while True:
        finished = writing.done()
        page = await pg_store.read_all(after, limit=7)
        seen.extend(page)
        if page:
            after = page[-1].at
        elif finished:
            break
        await asyncio.sleep(0)
    await writing
    expected = [e.event_id for h in histories for e in h.events]
    assert sorted(r.event.event_id for r in seen) == sorted(expected)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET type = 'x'", "DELETE FROM events", "TRUNCATE events"],
)
async def test_events_are_append_only(pool: Pool, pg_store: PgEventStore, statement: str) -> None:
    history = History()
    await pg_store.append(history.job_id, 0, history.submit())
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement)
    assert [r.event for r in await pg_store.load(history.job_id)] == history.events


async def test_append_is_one_statement(database_url: str) -> None:
    statements: list[str] = []

    async def log_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    pool = await create_pool(database_url, min_size=1, max_size=1, init=log_queries)
    try:
        store = PgEventStore(pool)
        for n in (1, 2):  # the one-event statement and the batch one
            warm_up = History()  # a connection's first use introspects the parameter types
            await store.append(warm_up.job_id, 0, warm_up.submit()[:n], None)
            await store.append(History().job_id, 0, [], None)
        for with_view in (False, True):
            history = History()
            new = history.submit()
            view = history.view() if with_view else None
            statements.clear()
            await store.append(history.job_id, 0, new[:1], fold(new[:1]) if with_view else None)
            await store.append(history.job_id, 1, new[1:], view)
            assert len(statements) == 2, statements
            statements.clear()
            await store.append(history.job_id, 0, new, view)  # a retry: the second asks why
            assert len(statements) == 2, statements
    finally:
        await pool.close()


async def _insert_events(conn: asyncpg.Connection, count: int) -> None:
    await conn.execute(
        "INSERT INTO events (job_id, version, event_id, type, data)"
        " SELECT gen_random_uuid(), 1, gen_random_uuid(), 'job_submitted', '{}'"
        f" FROM generate_series(1, {count})"
    )


@pytest.mark.parametrize("plan", ["force_custom_plan", "force_generic_plan"])
async def test_catch_up_read_costs_what_it_returns(pool: Pool, plan: str) -> None:
    """The relay reads from its checkpoint several times a second. Two earlier forms of the
    query cost what the whole backlog costs on every read: a sequential scan (chosen for an
    EXISTS before the table was analysed), then an index walk from the checkpoint to the end
    (quadratic catch-up). Reading one event must touch a few pages, whatever the statistics
    and however far behind the checkpoint is."""
    async with pool.acquire() as conn:
        await _insert_events(conn, 100_000)
        await conn.execute(f"SET plan_cache_mode = {plan}")
        await conn.execute(f"PREPARE catch_up (xid8, bigint, int) AS {postgres._READ_ALL}")
        try:
            for after in ("'0'::xid8, 0", "pg_current_xact_id(), 99000"):
                rows = await conn.fetch(f"EXPLAIN EXECUTE catch_up ({after}, 1000)")
                plan_text = "\n".join(row[0] for row in rows)
                assert "Seq Scan" not in plan_text, plan_text
            [(report,)] = await conn.fetch(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE catch_up ('0'::xid8, 0, 1)"
            )
            top = json.loads(report)[0]["Plan"]
            pages = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
            assert pages < 50, f"{pages} pages read for one event"
        finally:
            await conn.execute("DEALLOCATE catch_up")
            await conn.execute("RESET plan_cache_mode")


_HELD_BY_DEFINITION = """
SELECT EXISTS (
    SELECT FROM events
    WHERE (tx_id, position) > ($1::xid8, $2::bigint)
      AND tx_id >= pg_snapshot_xmin(pg_current_snapshot())
)"""


async def test_held_is_whether_events_wait_beyond_the_horizon(
    pool: Pool, pg_store: PgEventStore
) -> None:
    """`held`, as the catch-up read computes it from one start key, against its definition:
    at every checkpoint around the events, with and without an older transaction open."""
    async with pool.acquire() as conn, pool.acquire() as holder:
        await _insert_events(conn, 5)
        for holding in (False, True):
            opened = holder.transaction()
            if holding:  # an older transaction holds the horizon back, with an event of its own
                await opened.start()
                await _insert_events(holder, 1)
            for _ in range(3):
                await _insert_events(conn, 2)
            rows = await conn.fetch("SELECT tx_id::text::bigint, position FROM events")
            positions = sorted((int(tx), int(pos)) for tx, pos in rows)
            last_tx = positions[-1][0]
            checkpoints = [*positions, (0, 0), (last_tx + 5, 0), (positions[0][0], 10**9)]
            for tx_id, position in checkpoints:
                expected = await conn.fetchval(_HELD_BY_DEFINITION, tx_id, position)
                row = await conn.fetchrow(postgres._READ_ALL, tx_id, position, 1)
                assert row is not None and row["held"] is expected, (holding, tx_id, position)
            if holding:
                await opened.rollback()


async def test_stored_row_layout(pool: Pool, pg_store: PgEventStore) -> None:
    history = History()
    await pg_store.append(history.job_id, 0, history.submit())
    row = await pool.fetchrow(
        "SELECT type, schema_version, data->>'type' AS tag, data->'meta' AS meta, metadata"
        " FROM events ORDER BY version LIMIT 1"
    )
    assert row is not None
    assert (row["type"], row["schema_version"], row["tag"]) == ("job_submitted", 1, "job_submitted")
    assert (row["meta"], row["metadata"]) == (b"{}", b"{}")


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_no_server_means_store_unavailable() -> None:
    dsn = f"postgresql://nobody@127.0.0.1:{unused_port()}/nothing"
    with pytest.raises(StoreUnavailable):
        await create_pool(dsn, timeout=2)
    pool = await create_pool(dsn, min_size=0, timeout=2)  # connects on first use
    try:
        store = PgEventStore(pool)
        history = History()
        with pytest.raises(StoreUnavailable):
            await store.append(history.job_id, 0, history.submit())
        with pytest.raises(StoreUnavailable):
            await store.read_all(START)
        with pytest.raises(StoreUnavailable):
            await store.wait_for_events(0.1)
    finally:
        await pool.close()


async def test_backend_killed_mid_append_is_unavailable_then_recovers(
    database_url: str, pool: Pool
) -> None:
    store = PgEventStore(pool)
    history = History()
    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        appending = asyncio.ensure_future(store.append(history.job_id, 0, history.submit()))
        pid = None
        while pid is None:
            await asyncio.sleep(0.01)
            pid = await blocker.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
        await blocker.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreUnavailable):
            await appending
    assert await store.append(history.job_id, 0, history.events) == 2  # the pool reconnects


async def test_listener_recovers_after_its_connection_is_killed(
    pool: Pool, pg_store: PgEventStore
) -> None:
    assert await pg_store.wait_for_events(1.0)
    await pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    assert await pg_store.wait_for_events(5.0)  # woken by the loss, or listening anew
    history = History()
    await pg_store.append(history.job_id, 0, history.submit())
    assert await pg_store.wait_for_events(5.0)
