"""Outbox relay throughput against raw nats-py publishing of the same messages, same run.

Run on demand (not collected by default): `pytest -m benchmark tests/benchmarks/bench_bus.py -s`.
Figures are printed; the servers are the test suite's (JetStream with `sync_interval: always`).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck

from dockyard.bus import (
    EventBatchPublisher,
    EventPublisher,
    OutboxRelay,
    close,
    connect,
    ensure_topology,
    jetstream,
    names,
    outbox,
)
from dockyard.bus.messages import (
    encode_work_offer,
    event_headers,
    work_offer_for,
    work_offer_headers,
)
from dockyard.core import codec
from dockyard.core.events import (
    ContainerStarted,
    Event,
    JobClaimed,
    JobQueued,
    JobSubmitted,
    type_name,
)
from dockyard.core.ids import uuid7
from dockyard.core.spec import JobSpec
from dockyard.embedded import nats_server_binary
from dockyard.embedded._process import free_port
from dockyard.store.pool import create_pool
from dockyard.store.ports import START, RecordedEvent
from dockyard.store.postgres import PgEventStore
from tests.support.nats import events_stored

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(900)]

JOBS = 5000  # 20 000 events and 5 000 work offers
PIPELINE = 256
ROUNDS = 3


class Message(NamedTuple):
    subject: str
    payload: bytes
    headers: dict[str, str]
    stream: str


def messages_of(records: Sequence[RecordedEvent]) -> list[Message]:
    """Exactly what the relay publishes for these records: each event, and each offer."""
    out: list[Message] = []
    for r in records:
        event = r.event
        subject = names.event_subject(event.job_id, type_name(type(event)))
        out.append(Message(subject, codec.encode(event), event_headers(event), names.EVENTS_STREAM))
        if isinstance(event, JobQueued):
            offer = work_offer_for(event)
            out.append(
                Message(
                    names.offer_subject(event.queue),
                    encode_work_offer(offer),
                    work_offer_headers(offer, event),
                    names.OFFERS_STREAM,
                )
            )
    return out


async def commit_jobs(store: PgEventStore, jobs: int) -> None:
    """Submissions (submitted + queued in one append), then claims and starts, interleaved."""
    at = datetime.now(UTC)
    ids = [uuid7() for _ in range(jobs)]
    for job in ids:
        await store.append(
            job,
            0,
            [
                JobSubmitted(event_id=uuid7(), job_id=job, at=at, tenant="t", spec=JobSpec("x")),
                JobQueued(event_id=uuid7(), job_id=job, at=at, attempt=1, queue="default"),
            ],
        )
    later: list[type[Event]] = [JobClaimed, ContainerStarted]
    for version, kind in enumerate(later, start=2):
        for job in ids:
            if kind is JobClaimed:
                event: Event = JobClaimed(
                    event_id=uuid7(), job_id=job, at=at, attempt=1, orchestrator="o"
                )
            else:
                event = ContainerStarted(
                    event_id=uuid7(),
                    job_id=job,
                    at=at,
                    attempt=1,
                    container_id="c",
                    orchestrator="o",
                )
            await store.append(job, version, [event])


async def fresh_topology(js: JetStreamContext) -> None:
    for info in await js.streams_info():
        assert info.config.name is not None
        await js.delete_stream(info.config.name)
    await ensure_topology(js)


async def raw_sequential(js: JetStreamContext, msgs: Sequence[Message]) -> float:
    start = time.perf_counter()
    for m in msgs:
        await js.publish(m.subject, m.payload, headers=dict(m.headers), stream=m.stream)
    return time.perf_counter() - start


async def raw_pipelined(js: JetStreamContext, msgs: Sequence[Message]) -> float:
    """A sliding window of PIPELINE acks, as the relay keeps (without its per-job rule)."""
    start = time.perf_counter()
    window: deque[asyncio.Future[PubAck]] = deque()
    for m in msgs:
        if len(window) >= PIPELINE:
            await window.popleft()
        window.append(
            await js.publish_async(m.subject, m.payload, headers=dict(m.headers), stream=m.stream)
        )
    await asyncio.gather(*window)
    return time.perf_counter() - start


@pytest_asyncio.fixture(loop_scope="session")
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await connect(nats_url, "bench-bus", timeout_s=10)
    yield client
    await close(client)


def report(label: str, events: int, msgs: int, seconds: float) -> float:
    rate = events / seconds
    print(f"  {label:<38} {seconds:7.2f} s  {rate:9.0f} events/s  {msgs / seconds:9.0f} msgs/s")
    return rate


async def test_bench_outbox_relay_vs_raw_publish(nc: NatsClient, database_url: str) -> None:
    """Rounds alternate the three ways, so a noisy neighbour on the disk hits them alike."""
    js = jetstream(nc)
    pool = await create_pool(database_url, max_size=4)
    try:
        store = PgEventStore(pool)
        await commit_jobs(store, JOBS)
        records = await store.read_all(START, 1_000_000)
        msgs = messages_of(records)
        n, m = len(records), len(msgs)
        print(f"\n{n} committed events, {m} messages (events + work offers), {ROUNDS} rounds")
        rates: dict[str, list[float]] = {
            "sequential": [],
            "pipelined": [],
            "relay": [],
            "relay batched": [],
        }
        for round_ in range(ROUNDS):
            # The sequential baseline is slow: time a fifth of the messages, rate the same.
            fifth = len(msgs) // 5
            await fresh_topology(js)
            seconds = await raw_sequential(js, msgs[:fifth])
            rates["sequential"].append(
                report("raw js.publish, one at a time", n // 5, fifth, seconds)
            )
            await fresh_topology(js)
            seconds = await raw_pipelined(js, msgs)
            rates["pipelined"].append(
                report(f"raw publish_async, {PIPELINE} in flight", n, m, seconds)
            )
            # One publish per event with raw's window; batched as the scheduler runs it (its
            # paced batches need the default window: 256 every 50 ms would cap it at ~5,000/s).
            for label, sink, window in (
                ("relay", EventPublisher(js), PIPELINE),
                ("relay batched", EventBatchPublisher(nc, js), outbox.MAX_IN_FLIGHT),
            ):
                await fresh_topology(js)
                relay = OutboxRelay(
                    store, sink, checkpoint=f"bench-{label}-{round_}", max_in_flight=window
                )
                start = time.perf_counter()
                assert await relay.run_until_idle() == n
                seconds = time.perf_counter() - start
                what = f"outbox {label}, committed rows -> acked"
                rates[label].append(report(what, n, m, seconds))
                assert await events_stored(js) == n  # EVENTS holds the offers too
        median = {k: statistics.median(v) for k, v in rates.items()}
        print("  median events/s: " + ", ".join(f"{k} {v:.0f}" for k, v in median.items()))
        print(f"  relay / raw sequential: {median['relay'] / median['sequential']:.2f}x")
        print(f"  relay / raw pipelined:  {median['relay'] / median['pipelined']:.2f}x")
        batched = median["relay batched"]
        print(f"  batched relay / raw pipelined: {batched / median['pipelined']:.2f}x")
    finally:
        await pool.close()


async def test_bench_cost_of_sync_interval_always(nc: NatsClient) -> None:
    """The same publishes against a server with NATS's default fsync (every 2 minutes)."""
    job = uuid7()
    at = datetime.now(UTC)
    records = [
        RecordedEvent(
            event=JobClaimed(event_id=uuid7(), job_id=job, at=at, attempt=1, orchestrator="o"),
            version=i + 1,
            position=i + 1,
            tx_id=1,
            recorded_at=at,
        )
        for i in range(10_000)
    ]
    msgs = messages_of(records)
    port = free_port()
    with tempfile.TemporaryDirectory() as store_dir:
        server = await asyncio.create_subprocess_exec(
            str(nats_server_binary()),
            "-js",
            "-p",
            str(port),
            "-sd",
            store_dir,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            default_nc = await connect(f"nats://127.0.0.1:{port}", "bench-default", timeout_s=10)
            try:
                print(f"\n{len(msgs)} event messages, sync_interval: always vs the default")
                for label, client in (("always", nc), ("default (2 min)", default_nc)):
                    js = jetstream(client)
                    await fresh_topology(js)
                    seconds = await raw_sequential(js, msgs)
                    report(f"{label}: one at a time", len(msgs), len(msgs), seconds)
                    await fresh_topology(js)
                    seconds = await raw_pipelined(js, msgs)
                    report(f"{label}: {PIPELINE} in flight", len(msgs), len(msgs), seconds)
            finally:
                await close(default_nc)
        finally:
            server.terminate()
            await server.wait()
