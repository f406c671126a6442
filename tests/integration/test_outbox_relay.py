"""The outbox relay between a real PostgreSQL and a real nats-server, with servers restarting."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus import (
    EventBatchPublisher,
    OutboxRelay,
    PgLeader,
    close,
    connect,
    ensure_topology,
    jetstream,
    message_id,
    names,
)
from dockyard.core.events import Event, JobClaimed, JobQueued, JobSubmitted
from dockyard.core.ids import uuid7
from dockyard.core.spec import JobSpec
from dockyard.embedded import EmbeddedNats, EmbeddedPostgres
from dockyard.store.pool import Pool, create_pool
from dockyard.store.ports import START, Position, StoreUnavailable
from dockyard.store.postgres import PgEventStore
from tests.support.nats import events_stored, fetch_all

AUDIT = "test-audit"  # a durable consumer over every event (not the offers), as one sees them


def job_history(job_id: str) -> list[Event]:
    """Three events of one job; the JobQueued one makes a work offer."""
    at = datetime.now(UTC)
    return [
        JobSubmitted(event_id=uuid7(), job_id=job_id, at=at, tenant="t", spec=JobSpec("busybox")),
        JobQueued(event_id=uuid7(), job_id=job_id, at=at, attempt=1, queue="default"),
        JobClaimed(event_id=uuid7(), job_id=job_id, at=at, attempt=1, orchestrator="o-1"),
    ]


async def append_jobs(store: PgEventStore, jobs: int) -> dict[str, list[str]]:
    """Commit `jobs` jobs' histories, interleaved event by event; return ids per job."""
    histories = {(job := uuid7()): job_history(job) for _ in range(jobs)}
    for version in range(3):
        for job, events in histories.items():
            await retrying(store.append, job, version, [events[version]])
    return {job: [e.event_id for e in events] for job, events in histories.items()}


async def retrying(call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """A writer's own retry while PostgreSQL restarts (append is idempotent)."""
    while True:
        try:
            return await call(*args)
        except StoreUnavailable:
            await asyncio.sleep(0.1)


async def stream_order(js: JetStreamContext, stream: str, durable: str) -> list[tuple[str, str]]:
    """(subject, Nats-Msg-Id) of every message the durable consumer receives, in order."""
    return [(m.subject, message_id(m.headers)) for m in await fetch_all(js, stream, "", durable)]


async def assert_delivered_exactly_once(
    js: JetStreamContext, store: PgEventStore, expected: dict[str, list[str]]
) -> None:
    """Each event once on EVENTS in its job's order, and each job's work offer once."""
    events = await stream_order(js, names.EVENTS_STREAM, AUDIT)
    counts = Counter(msg_id for _, msg_id in events)
    want = [e for ids in expected.values() for e in ids]
    assert {e: counts[e] for e in want} == dict.fromkeys(want, 1)
    assert len(events) == len(want)
    for job, ids in expected.items():
        assert [m for s, m in events if s.split(".")[2] == job] == ids
        assert [r.event.event_id for r in await store.load(job)] == ids
    offers = await stream_order(js, names.OFFERS_STREAM, names.offer_durable("default"))
    assert Counter(m for _, m in offers) == Counter(names.offer_msg_id(j, 1) for j in expected)


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def store(pool: Pool) -> AsyncIterator[PgEventStore]:
    store = PgEventStore(pool)
    yield store
    await store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await connect(nats_url, "test-outbox", timeout_s=10)
    js = jetstream(client)
    await ensure_topology(js)
    await js.add_consumer(
        names.EVENTS_STREAM,
        durable_name=AUDIT,
        ack_policy="explicit",
        filter_subject=names.EVENTS_SUBJECTS,
    )
    yield client
    await close(client)


@pytest_asyncio.fixture(loop_scope="session")
async def js(nc: NatsClient) -> JetStreamContext:
    return jetstream(nc)


def relay_for(store: PgEventStore, nc: NatsClient, **kw: Any) -> OutboxRelay:
    """A relay as the scheduler runs it, sending atomic batches from 4 events (not 32) so the
    outage tests put batches in flight, not only single publishes."""
    sink = EventBatchPublisher(nc, jetstream(nc), ack_timeout_s=2.0, min_batch=4)
    return OutboxRelay(store, sink, poll_interval_s=0.2, **kw)


async def until(condition: Callable[[], Awaitable[bool]], within_s: float = 60.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.05)


async def last_position(store: PgEventStore) -> Position:
    return (await store.read_all(START, 1_000_000))[-1].at


async def caught_up(relay: OutboxRelay, store: PgEventStore) -> bool:
    return relay.position == await last_position(store)


async def stop(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel relays; each must have been running (not died of an error) until then."""
    for task in tasks:
        task.cancel()
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        assert isinstance(outcome, asyncio.CancelledError), outcome


async def test_outbox_relay_publishes_each_committed_event_once_in_job_order(
    store: PgEventStore,
    js: JetStreamContext,
    nc: NatsClient,
) -> None:
    expected = await append_jobs(store, jobs=20)
    relay = relay_for(store, nc, page_size=7, max_in_flight=16)
    assert await relay.run_until_idle() == 60
    assert await relay.run_until_idle() == 0
    assert await store.load_checkpoint("outbox") == await last_position(store)
    await assert_delivered_exactly_once(js, store, expected)


async def test_outbox_nats_restart_while_relay_runs_loses_nothing(
    nats_server: EmbeddedNats,
    database_url: str,
    store: PgEventStore,
    js: JetStreamContext,
    nc: NatsClient,
) -> None:
    relay = relay_for(store, nc, leader=PgLeader(database_url))
    task = asyncio.create_task(relay.run())
    try:
        expected = await append_jobs(store, jobs=10)
        await until(lambda: caught_up(relay, store))
        restarting = asyncio.create_task(nats_server.restart())
        expected |= await append_jobs(store, jobs=10)  # committed while NATS is down
        await restarting
        expected |= await append_jobs(store, jobs=10)
        await until(lambda: caught_up(relay, store))
    finally:
        await stop([task])
    await assert_delivered_exactly_once(js, store, expected)


async def test_outbox_nats_sigkill_keeps_every_acked_event(
    nats_server: EmbeddedNats,
    store: PgEventStore,
    js: JetStreamContext,
    nc: NatsClient,
) -> None:
    # sync_interval: always: what JetStream acked (and the checkpoint moved past) is on disk.
    expected = await append_jobs(store, jobs=30)
    await relay_for(store, nc).run_until_idle()
    await nats_server.kill()
    await nats_server.start()
    await until(lambda: _stream_has(js, 90))
    await assert_delivered_exactly_once(js, store, expected)


async def _stream_has(js: JetStreamContext, count: int) -> bool:
    try:
        return await events_stored(js) == count
    except Exception:  # reconnecting, or JetStream still recovering
        return False


async def test_outbox_postgres_restart_while_relay_runs_loses_nothing(
    pg_server: EmbeddedPostgres,
    database_url: str,
    store: PgEventStore,
    js: JetStreamContext,
    nc: NatsClient,
) -> None:
    relay = relay_for(store, nc, leader=PgLeader(database_url, retry_s=0.2))
    task = asyncio.create_task(relay.run())
    try:
        expected = await append_jobs(store, jobs=10)
        await until(lambda: caught_up(relay, store))
        await pg_server.restart()
        expected |= await append_jobs(store, jobs=10)
        await until(lambda: caught_up(relay, store))
    finally:
        await stop([task])
    await assert_delivered_exactly_once(js, store, expected)


async def test_outbox_only_one_relay_is_active_and_a_standby_takes_over(
    database_url: str,
    store: PgEventStore,
    js: JetStreamContext,
    nc: NatsClient,
) -> None:
    relays = [relay_for(store, nc, leader=PgLeader(database_url, retry_s=0.1)) for _ in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        expected = await append_jobs(store, jobs=10)
        await until(lambda: _checkpointed(store))
        active = [r for r in relays if r.published]
        assert len(active) == 1, [r.published for r in relays]
        standby = relays[1 - relays.index(active[0])]

        await stop([tasks[relays.index(active[0])]])  # closing its session frees the lock
        expected |= await append_jobs(store, jobs=10)
        await until(lambda: caught_up(standby, store))
        assert standby.published == 30
    finally:
        await stop(tasks)
    await assert_delivered_exactly_once(js, store, expected)


async def _checkpointed(store: PgEventStore) -> bool:
    return await store.load_checkpoint("outbox") == await last_position(store)
