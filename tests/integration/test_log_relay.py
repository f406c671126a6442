"""The log relay against real NATS, PostgreSQL and Docker: storage, HTTP, WebSocket, tenancy.

Lines come from real containers through LogPipeline and LogPump, published as log batches
the way the orchestrator does (tests/support/log_relay.py), so these tests need only the
LogBatch message, not a running orchestrator.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiodocker
import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from msgspec.structs import replace

from dockyard.bus import connect, ensure_topology, jetstream, names, protocol
from dockyard.bus.topology import consumer_configs, stream_configs
from dockyard.job_logs import last_stored_seq, purge_finished_logs
from dockyard.job_logs import store as store_sql
from dockyard.job_logs.chunks import Chunk, chunks_of, with_output_bytes
from dockyard.job_logs.position import StoredLog, stored_log
from dockyard.job_logs.store import LogStore
from dockyard.log_relay.holders import AttemptHolders
from dockyard.log_relay.persister import LogPersister
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore
from tests.support.log_relay import (
    ORCHESTRATOR,
    PAGE_ORIGIN,
    BatchPublisher,
    Jobs,
    Relay,
    Tail,
    eventually,
    lines_of,
    relay_in_process,
    run_container,
    stored_seqs,
)

ACME = {"Authorization": "Bearer acme-token"}


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def bus(nats_url: str) -> AsyncIterator[Any]:
    nc = await connect(nats_url, "test log publisher")
    js = jetstream(nc)
    await ensure_topology(js)
    yield js
    await nc.close()


@pytest_asyncio.fixture(loop_scope="session")
async def jobs(pool: Pool, bus: Any) -> AsyncIterator[Jobs]:
    store = PgEventStore(pool)
    yield Jobs(store, bus)
    await store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def relay(nats_url: str, database_url: str) -> AsyncIterator[Relay]:
    async with relay_in_process(nats_url, database_url) as relay:
        yield relay


async def get_logs(relay: Relay, job_id: str, **query: Any) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{relay.url}/v1/jobs/{job_id}/logs", params=query, headers=ACME) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def wait_complete(relay: Relay, job_id: str, timeout_s: float = 30.0) -> list[Any]:
    """Page through the log with GET until `complete`; every line, checked in order."""
    lines: list[Any] = []
    after = 0
    async with asyncio.timeout(timeout_s):
        while True:
            page = await get_logs(relay, job_id, after=after, limit=5000)
            lines += page["lines"]
            assert [x["seq"] for x in page["lines"]] == list(
                range(after + 1, page["next_after"] + 1)
            )
            after = page["next_after"]
            if page["complete"]:
                return lines
            if not page["lines"]:
                await asyncio.sleep(0.05)


# -- storage


async def test_a_containers_lines_are_stored_once_each_in_order(
    relay: Relay,
    jobs: Jobs,
    bus: Any,
    docker: aiodocker.Docker,
    busybox_image: str,
    pool: Pool,
) -> None:
    job_id = await jobs.running()
    publisher = BatchPublisher(bus, job_id)
    last = await run_container(docker, busybox_image, ["seq", "1", "50000"], publisher)
    await jobs.finish(job_id)
    lines = await wait_complete(relay, job_id)
    assert last == 50000
    assert [x["text"] for x in lines] == [str(n) for n in range(1, 50001)]
    assert {x["stream"] for x in lines} == {"stdout"} and {x["attempt"] for x in lines} == {1}
    assert await stored_seqs(pool, job_id) == list(range(1, 50001))
    assert await last_stored_seq(pool, job_id) == 50000


async def test_redelivered_and_overlapping_batches_store_nothing_twice(
    relay: Relay, jobs: Jobs, bus: Any, pool: Pool
) -> None:
    job_id = await jobs.running()
    subject = names.log_subject(ORCHESTRATOR, job_id)

    async def publish(seqs: range, msg_id: str) -> None:
        batch = protocol.LogBatch(job_id=job_id, attempt=1, lines=lines_of(seqs))
        headers = {names.MSG_ID: msg_id}
        await bus.publish(
            subject, protocol.encode(batch), headers=headers, stream=names.LOGS_STREAM
        )

    await publish(range(1, 101), "a")
    await publish(range(1, 101), "a-again")  # past the duplicate window: stored in the stream twice
    await publish(range(50, 151), "overlap")  # half old, half new
    await publish(range(151, 201), "b")
    await publish(range(101, 151), "late")  # all stored already
    await jobs.finish(job_id)
    lines = await wait_complete(relay, job_id)
    assert [x["seq"] for x in lines] == list(range(1, 201))
    assert await stored_seqs(pool, job_id) == list(range(1, 201))
    assert await pool.fetchval("SELECT lines FROM log_jobs WHERE job_id = $1", job_id) == 200
    assert relay.ctx.metrics.duplicate_lines._value.get() == 100 + 51 + 50


async def test_a_log_batch_on_another_orchestrators_subject_is_dropped_and_never_stored(
    relay: Relay, jobs: Jobs, bus: Any, pool: Pool
) -> None:
    """An intruder (an orchestrator with publish rights on its own log subjects) sends lines
    for a job it does not run: one batch under its own nonce, one under the id anyone can
    derive from the job. Neither is stored, and the holder's own batches still all are."""
    job_id = await jobs.running()  # attempt 1 claimed by ORCHESTRATOR
    intruder = BatchPublisher(bus, job_id, orchestrator="intruder")
    await intruder.publish([replace(line, text="forged") for line in lines_of(range(1, 6))])
    await intruder.flush()
    derivable = protocol.log_batch_id(job_id, 6)
    forged = protocol.LogBatch(job_id=job_id, attempt=1, lines=lines_of(range(6, 11)))
    await bus.publish(
        names.log_subject("intruder", job_id),
        protocol.encode(forged),
        headers={names.MSG_ID: derivable},
        stream=names.LOGS_STREAM,
    )
    holder = BatchPublisher(bus, job_id)
    await holder.publish(lines_of(range(1, 6)))
    await holder.publish(lines_of(range(6, 11)))
    await holder.flush()
    await eventually(lambda: _stored_through(pool, job_id, 10))
    page = await LogStore(pool).read(job_id, 0, 100)
    texts = [json.loads(b"[" + c.body + b"]") for c in page.chunks]
    assert [line["text"] for chunk in texts for line in chunk] == [
        f"line {n}" for n in range(1, 11)
    ]
    assert dropped(relay) == 2
    await jobs.finish(job_id)
    assert [x["text"] for x in await wait_complete(relay, job_id)] == [
        f"line {n}" for n in range(1, 11)
    ]


async def test_a_log_batch_for_an_attempt_nobody_claimed_is_dropped(
    relay: Relay, jobs: Jobs, bus: Any, pool: Pool
) -> None:
    job_id = await jobs.running()
    ahead = BatchPublisher(bus, job_id, attempt=2)  # the holder of attempt 1, for attempt 2
    await ahead.publish(lines_of(range(1, 4), attempt=2))
    await ahead.flush()
    holder = BatchPublisher(bus, job_id)
    await holder.publish(lines_of(range(1, 3)))
    await holder.flush()
    await eventually(lambda: _stored_through(pool, job_id, 2))
    await asyncio.sleep(0.3)  # the persister is idle: nothing else is coming
    assert await stored_seqs(pool, job_id) == [1, 2]
    assert dropped(relay) == 1


async def test_batches_an_earlier_version_left_on_its_log_subjects_are_stored_after_upgrade(
    jobs: Jobs, bus: Any, pool: Pool
) -> None:
    """An earlier version's LOGS stream (`dockyard.logs.<job>`, the relay's durable filtering
    that) still holds a batch at the upgrade: the new topology changes the stream's subjects
    and the durable's filter in place, and the relay stores the batch (no sender to check)."""
    job_id = await jobs.running()
    await bus.delete_stream(names.LOGS_STREAM)
    old = next(c for c in stream_configs() if c.name == names.LOGS_STREAM)
    await bus.add_stream(old.evolve(subjects=["dockyard.logs.*"]))
    durable = dict(consumer_configs())[names.LOGS_STREAM]
    await bus.add_consumer(names.LOGS_STREAM, durable.evolve(filter_subject="dockyard.logs.*"))
    batch = protocol.LogBatch(job_id=job_id, attempt=1, lines=lines_of(range(1, 4)))
    await bus.publish(
        names.legacy_log_subject(job_id), protocol.encode(batch), stream=names.LOGS_STREAM
    )
    await ensure_topology(bus)
    info = await bus.stream_info(names.LOGS_STREAM)
    assert info.config.subjects == [names.LOGS_SUBJECTS] and info.state.messages == 1
    consumer = await bus.consumer_info(names.LOGS_STREAM, names.LOGS_DURABLE)
    assert consumer.config.filter_subject == names.LOGS_FILTER
    holder = BatchPublisher(bus, job_id)  # the new version's, after it
    await holder.publish(lines_of(range(4, 6)))
    await holder.flush()
    persister = LogPersister(bus, LogStore(pool), holders=AttemptHolders(pool))
    assert await persister.run_until_idle() == 5
    assert await stored_seqs(pool, job_id) == [1, 2, 3, 4, 5]


async def _stored_through(pool: Pool, job_id: str, seq: int) -> bool:
    return await last_stored_seq(pool, job_id) >= seq


def dropped(relay: Relay) -> float:
    registry = relay.ctx.metrics.registry
    return registry.get_sample_value("dockyard_log_batches_dropped_total") or 0.0


async def test_the_store_skips_repeats_within_one_write_and_across_writers(
    pool: Pool,
) -> None:
    store = LogStore(pool)
    job_id = "0195f0c8-0000-7000-8000-0000000000aa"
    data = protocol.encode(
        protocol.LogBatch(job_id=job_id, attempt=1, lines=lines_of(range(1, 11)))
    )
    (chunk,) = chunks_of(data)
    later = chunks_of(
        protocol.encode(protocol.LogBatch(job_id=job_id, attempt=1, lines=lines_of(range(5, 21))))
    )
    results = await asyncio.gather(*(store.append([chunk, chunk, *later]) for _ in range(4)))
    assert sum(r.lines for r in results) == 20
    page = await store.read(job_id, 0, 100)
    assert (page.line_count, page.last, page.gap) == (20, 20, None)


async def test_the_store_counts_each_jobs_output_bytes_once_for_the_log_cap(
    pool: Pool,
) -> None:
    """A new attempt's log cap starts from what the job stored: the producer's count of
    stdout and stderr bytes (its batch header), added once per stored batch."""
    store = LogStore(pool)
    job_id = "0195f0c8-0000-7000-8000-0000000000ac"

    def batch(seqs: range, output_bytes: int) -> list[Chunk]:
        data = protocol.encode(protocol.LogBatch(job_id=job_id, attempt=1, lines=lines_of(seqs)))
        return with_output_bytes(chunks_of(data), {names.LOG_BYTES: str(output_bytes)})

    await store.append(batch(range(1, 11), 700))
    await store.append(batch(range(1, 11), 700))  # redelivered: stored nothing, counts nothing
    await store.append(batch(range(11, 21), 300))
    assert await stored_log(pool, job_id) == StoredLog(seq=20, bytes=1000)
    assert await stored_log(pool, "0195f0c8-0000-7000-8000-0000000000ad") == StoredLog(0, 0)
    # Stored compressed by the relay, served as written.
    raw = await pool.fetchval("SELECT lines FROM log_chunks WHERE job_id = $1 LIMIT 1", job_id)
    assert raw[:1] == b"x"
    page = await store.read(job_id, 0, 100)
    assert page.line_count == 20


async def test_reads_stop_at_a_gap_until_told_to_skip_it(pool: Pool) -> None:
    store = LogStore(pool)
    job_id = "0195f0c8-0000-7000-8000-0000000000ab"
    for seqs in (range(1, 6), range(9, 13)):
        batch = protocol.LogBatch(job_id=job_id, attempt=1, lines=lines_of(seqs))
        await store.append(chunks_of(protocol.encode(batch)))
    page = await store.read(job_id, 0, 100)
    assert (page.line_count, page.last, page.gap) == (5, 5, 9)
    page = await store.read(job_id, 5, 100)
    assert (page.line_count, page.gap) == (0, 9)
    page = await store.read(job_id, 0, 100, contiguous=False)
    assert (page.line_count, page.last, page.gap) == (9, 12, None)
    page = await store.read(job_id, 2, 2)
    assert (page.line_count, page.last) == (2, 4)
    assert await store.stored_max(job_id) == 12


_LONG_JOB = "0195f0c8-0000-7000-8000-00000000cafe"


async def _pages_read(conn: asyncpg.Connection, statement: str) -> int:
    [(report,)] = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}")
    top = json.loads(report)[0]["Plan"]
    return int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])


@pytest.mark.parametrize("plan", ["force_custom_plan", "force_generic_plan"])
async def test_reading_a_page_of_a_long_log_costs_what_it_returns(pool: Pool, plan: str) -> None:
    """A page read, and the check a redelivered chunk gets, look at the chunks they need: they
    walked the job's chunks from the page to the end of its log (paging was quadratic)."""
    async with pool.acquire() as conn:
        await conn.execute(  # 1,000,000 lines in chunks of 50
            "INSERT INTO log_chunks (job_id, first_seq, last_seq, lines)"
            " SELECT $1, 50 * i + 1, 50 * (i + 1), '\\x00' FROM generate_series(0, 19999) i",
            _LONG_JOB,
        )
        await conn.execute(f"SET plan_cache_mode = {plan}")
        await conn.execute(f"PREPARE page (uuid, bigint, bigint) AS {store_sql._WINDOW}")
        await conn.execute(
            f"PREPARE stored (uuid[], bigint[], bigint[]) AS {store_sql._STORED_RANGES}"
        )
        try:
            for after in (0, 500_000, 999_000):
                read = f"EXECUTE page ('{_LONG_JOB}', {after}, {after + 1000})"
                assert await _pages_read(conn, read) < 60, after
                ranges = (
                    f"EXECUTE stored ('{{{_LONG_JOB}}}', '{{{after + 1}}}', '{{{after + 50}}}')"
                )
                assert await _pages_read(conn, ranges) < 30, after
        finally:
            await conn.execute("DEALLOCATE ALL")
            await conn.execute("RESET plan_cache_mode")


_WINDOW_BY_DEFINITION = """
SELECT first_seq, last_seq, lines FROM log_chunks
WHERE job_id = $1 AND last_seq > $2 AND first_seq <= $3 ORDER BY last_seq
"""


async def test_page_reads_return_every_chunk_that_meets_the_window(pool: Pool) -> None:
    """The bounded reads against their definition, on a log with gaps and chunks of any size."""
    rnd = random.Random(7)
    rows, seq = [], 1
    while seq < 3000:
        seq += rnd.randint(1, 30) if rnd.random() < 0.2 else 0  # a gap
        size = rnd.randint(1, 40)
        rows.append((_LONG_JOB, seq, seq + size - 1, b"x"))
        seq += size
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO log_chunks (job_id, first_seq, last_seq, lines) VALUES ($1, $2, $3, $4)",
            rows,
        )
        for _ in range(300):
            after = rnd.randint(0, 3100)
            upto = after + rnd.choice([1, 2, 5, 50, 1000])
            expected = await conn.fetch(_WINDOW_BY_DEFINITION, _LONG_JOB, after, upto)
            assert await conn.fetch(store_sql._WINDOW, _LONG_JOB, after, upto) == expected
            lo = rnd.randint(1, 3100)
            hi = lo + rnd.choice([0, 1, 5, 40, 300])
            stored = await conn.fetch(store_sql._STORED_RANGES, [_LONG_JOB], [lo], [hi])
            assert sorted((r["first_seq"], r["last_seq"]) for r in stored) == [
                (r["first_seq"], r["last_seq"])
                for r in await conn.fetch(_WINDOW_BY_DEFINITION, _LONG_JOB, lo - 1, hi)
            ]


async def test_retention_removes_the_lines_of_jobs_finished_long_ago(
    relay: Relay, jobs: Jobs, bus: Any, pool: Pool
) -> None:
    old, recent, running = [await jobs.running() for _ in range(3)]
    for job_id in (old, recent, running):
        publisher = BatchPublisher(bus, job_id)
        await publisher.publish(lines_of(range(1, 11)))
        await publisher.flush()
    await jobs.finish(old)
    await jobs.finish(recent)
    for job_id in (old, recent, running):
        await _wait_stored(pool, job_id, 10)
    await pool.execute(
        "UPDATE jobs SET finished_at = now() - interval '10 days' WHERE id = $1", old
    )
    await pool.execute(  # its lines were stored while it ran, before it finished
        "UPDATE log_jobs SET since = now() - interval '11 days' WHERE job_id = $1", old
    )
    purged = await purge_finished_logs(pool, older_than=timedelta(days=7))
    assert (purged.jobs, purged.lines) == (1, 10)
    assert await last_stored_seq(pool, old) == 0
    assert await last_stored_seq(pool, recent) == 10
    assert await last_stored_seq(pool, running) == 10
    assert await purge_finished_logs(pool, older_than=timedelta(days=7)) == (0, 0)


async def _wait_stored(pool: Pool, job_id: str, seq: int) -> None:
    async def stored() -> bool:
        return await last_stored_seq(pool, job_id) >= seq

    await eventually(stored, timeout_s=20)


# -- HTTP


async def test_http_pages_follow_after_and_limit_and_complete_comes_last(
    relay: Relay, jobs: Jobs, bus: Any, pool: Pool
) -> None:
    job_id = await jobs.running()
    publisher = BatchPublisher(bus, job_id)
    await publisher.publish(lines_of(range(1, 26)))
    await publisher.flush()
    await _wait_stored(pool, job_id, 25)
    page = await get_logs(relay, job_id, after=10, limit=5)
    assert [x["seq"] for x in page["lines"]] == [11, 12, 13, 14, 15]
    assert (page["next_after"], page["complete"]) == (15, False)
    page = await get_logs(relay, job_id, after=20)
    assert (len(page["lines"]), page["next_after"], page["complete"]) == (5, 25, False)
    await jobs.finish(job_id, exit_code=3)

    async def complete() -> bool:
        return bool((await get_logs(relay, job_id, after=20))["complete"])

    await eventually(complete, timeout_s=10)
    page = await get_logs(relay, job_id, after=20)
    assert page["next_after"] == 25
    assert (await get_logs(relay, job_id, after=0, limit=10))["complete"] is False
    assert (await get_logs(relay, job_id, after=99))["complete"] is True
    assert set(page["lines"][0]) == {"seq", "stream", "text", "at", "attempt"}


@pytest.mark.parametrize(
    ("query", "field"),
    [({"after": "-1"}, "after"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit")],
)
async def test_http_bad_parameters_are_422(
    relay: Relay, jobs: Jobs, query: dict[str, str], field: str
) -> None:
    job_id = await jobs.running()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{relay.url}/v1/jobs/{job_id}/logs", params=query, headers=ACME) as response,
    ):
        assert response.status == 422
        assert (await response.json())["error"]["details"]["field"] == field


async def test_http_tenancy_tokens_and_cors(relay: Relay, jobs: Jobs) -> None:
    job_id = await jobs.running(tenant="acme")
    url = f"{relay.url}/v1/jobs/{job_id}/logs"
    async with aiohttp.ClientSession() as session:
        for headers, status, code in [
            ({}, 401, "unauthorized"),
            ({"Authorization": "Bearer nope"}, 401, "unauthorized"),
            ({"Authorization": "Bearer globex-token"}, 404, "not_found"),
        ]:
            async with session.get(url, headers=headers) as response:
                assert response.status == status
                assert (await response.json())["error"]["code"] == code
        async with session.get(url, headers={"Authorization": "Bearer admin-token"}) as response:
            assert response.status == 200
        async with session.get(f"{relay.url}/v1/jobs/nope/logs", headers=ACME) as response:
            assert response.status == 404
        preflight = {
            "Origin": PAGE_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
        async with session.options(url, headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        async with session.get(url, headers={**ACME, "Origin": PAGE_ORIGIN}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
        async with session.get(url, headers={"Origin": PAGE_ORIGIN}) as response:
            assert response.status == 401  # the page can read why
            assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
        async with session.get(url, headers={**ACME, "Origin": "http://evil.test"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers


# -- WebSocket


async def ws_refusal(
    relay: Relay, job_id: str, headers: dict[str, str], protocols: tuple[str, ...] = ()
) -> int:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(
                f"{relay.ws_url}/v1/jobs/{job_id}/logs/ws", headers=headers, protocols=protocols
            )
    return refused.value.status


async def test_ws_refuses_foreign_origins_bad_tokens_and_other_tenants_jobs(
    relay: Relay, jobs: Jobs
) -> None:
    job_id = await jobs.running(tenant="acme")
    assert await ws_refusal(relay, job_id, {**ACME, "Origin": "http://evil.test"}) == 403
    assert await ws_refusal(relay, job_id, {"Origin": PAGE_ORIGIN}) == 401
    assert await ws_refusal(relay, job_id, {"Authorization": "Bearer nope"}) == 401
    assert await ws_refusal(relay, job_id, {}, ("dockyard.v1", "bearer.nope")) == 401
    assert await ws_refusal(relay, job_id, {"Authorization": "Bearer globex-token"}) == 404
    assert await ws_refusal(relay, "0195f0c8-0000-7000-8000-00000000ffff", ACME) == 404
    assert relay.ctx.rooms.get(job_id) is None


async def test_ws_by_subprotocol_from_the_page_origin_gets_lines_and_end(
    relay: Relay, jobs: Jobs, bus: Any
) -> None:
    job_id = await jobs.running()
    publisher = BatchPublisher(bus, job_id)
    await publisher.publish(lines_of(range(1, 11)))
    await publisher.flush()
    tail = Tail(relay.ws_url, job_id, by_subprotocol=True, origin=PAGE_ORIGIN)
    following = asyncio.create_task(tail.run(reconnect=False))
    await publisher.publish(lines_of(range(11, 21)))
    await publisher.flush()
    await jobs.finish(job_id, exit_code=2)
    end = await following
    assert tail.after == 20 and tail.texts == [f"line {n}" for n in range(1, 21)]
    assert (end.status, end.exit_code, end.reason) == ("failed", 2, "exit_code")
    assert tail.close_codes == [1000]


async def test_a_ws_follower_is_never_shown_a_batch_from_another_orchestrators_subject(
    relay: Relay, jobs: Jobs, bus: Any
) -> None:
    """The live feed reads the stream itself, before the persister's check: it checks too."""
    job_id = await jobs.running()
    tail = Tail(relay.ws_url, job_id)
    following = asyncio.create_task(tail.run(reconnect=False))
    await eventually(lambda: relay.ctx.rooms.get(job_id) is not None)
    await asyncio.sleep(0.2)  # the room's live feed is up: what follows comes through it
    intruder = BatchPublisher(bus, job_id, orchestrator="intruder")
    holder = BatchPublisher(bus, job_id)
    for first in range(1, 40, 5):
        forged = [replace(line, text="forged") for line in lines_of(range(first, first + 5))]
        await intruder.publish(forged)
        await intruder.flush()
        await holder.publish(lines_of(range(first, first + 5)))
        await holder.flush()
    await jobs.finish(job_id)
    await following
    assert tail.texts == [f"line {n}" for n in range(1, 41)]
    assert dropped(relay) == 8


async def test_ws_resumes_after_the_seq_it_is_given(
    relay: Relay, jobs: Jobs, bus: Any, pool: Pool
) -> None:
    job_id = await jobs.running()
    publisher = BatchPublisher(bus, job_id)
    await publisher.publish(lines_of(range(1, 1001)))
    await publisher.flush()
    await jobs.finish(job_id)
    tail = Tail(relay.ws_url, job_id, after=990)
    await tail.run(reconnect=False)
    assert tail.texts == [f"line {n}" for n in range(991, 1001)]
    late = Tail(relay.ws_url, job_id, after=1000)
    end = await late.run(reconnect=False)
    assert late.texts == [] and end.status == "succeeded"


async def test_replay_then_live_hand_over_under_a_job_printing_continuously(
    relay: Relay, jobs: Jobs, bus: Any, docker: aiodocker.Docker, busybox_image: str, pool: Pool
) -> None:
    """Clients join while lines stream in; each sees every line once, in order."""
    job_id = await jobs.running()
    publisher = BatchPublisher(bus, job_id)
    # Paced (a pause every 2,000 lines) so the run lasts seconds on any machine: a fast
    # one printed all 60,000 lines before the first client joined.
    script = (
        "i=0; while [ $i -lt 60000 ]; do echo line $((i+1)); i=$((i+1));"
        " [ $((i % 2000)) -eq 0 ] && usleep 100000; done; true"
    )
    job = asyncio.create_task(run_container(docker, busybox_image, ["sh", "-c", script], publisher))
    tails: list[Tail] = []
    followers: list[asyncio.Task[Any]] = []
    for _ in range(4):  # joining at different moments of the run
        await asyncio.sleep(0.3)
        assert not job.done(), "the job ended before every client joined"
        tail = Tail(relay.ws_url, job_id)
        tails.append(tail)
        followers.append(asyncio.create_task(tail.run(reconnect=False)))
    last = await job
    await jobs.finish(job_id)
    await asyncio.gather(*followers)
    assert last == 60000
    for tail in tails:
        assert tail.after == 60000 and tail.texts == [f"line {n}" for n in range(1, 60001)]
        assert tail.close_codes == [1000]
    joined_live = [t for t in tails if t.frames > 10]
    assert joined_live, "no client saw live lines"
    assert await stored_seqs(pool, job_id) == list(range(1, 60001))
