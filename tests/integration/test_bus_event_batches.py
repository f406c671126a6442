"""The outbox relay's batching sink against a real nats-server: what one turn submits is stored
as one atomic batch (or one publish each, when few), each job's events in order, once; a
republished batch and a failed predecessor are handled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus import (
    BusError,
    BusUnavailable,
    EventBatchPublisher,
    Published,
    close,
    connect,
    decode_event,
    decode_work_offer,
    ensure_topology,
    jetstream,
    names,
)
from dockyard.core.events import Event, JobClaimed, JobQueued, type_name
from dockyard.core.ids import uuid7
from tests.integration.test_bus_publish import WORK
from tests.support.nats import fetch_all


@pytest_asyncio.fixture(loop_scope="session")
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await connect(nats_url, "test-event-batches", timeout_s=10)
    await ensure_topology(jetstream(client))
    yield client
    await close(client)


def job_events(job_id: str, count: int) -> list[Event]:
    at = datetime.now(UTC)
    first: Event = JobQueued(event_id=uuid7(), job_id=job_id, at=at, attempt=1, queue="default")
    rest: list[Event] = [
        JobClaimed(event_id=uuid7(), job_id=job_id, at=at, attempt=1, orchestrator=f"o-{n}")
        for n in range(count - 1)
    ]
    return [first, *rest]


def interleaved(jobs: int, per_job: int) -> list[Event]:
    """Several jobs' events in the order concurrent commits give them."""
    histories = [job_events(uuid7(), per_job) for _ in range(jobs)]
    return [history[n] for n in range(per_job) for history in histories]


async def submit_all(
    sink: EventBatchPublisher, events: Sequence[Event]
) -> list[asyncio.Future[Published]]:
    """As the relay does: each event chained after its job's previous one, in one turn."""
    latest: dict[str, asyncio.Future[Any]] = {}
    futures = []
    for event in events:
        future = await sink.submit(event, latest.get(event.job_id))
        latest[event.job_id] = future
        futures.append(future)
    return futures


async def stored(js: JetStreamContext, events: Sequence[Event]) -> list[Event]:
    job_ids = list(dict.fromkeys(e.job_id for e in events))
    found: list[Event] = []
    for job_id in job_ids:
        msgs = await fetch_all(js, names.EVENTS_STREAM, names.job_events_filter(job_id))
        found += [decode_event(m.data) for m in msgs]
    return found


def by_job(events: Sequence[Event]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for event in events:
        out.setdefault(event.job_id, []).append(event.event_id)
    return out


def messages(events: Sequence[Event]) -> list[str]:
    """The subjects a batch of `events` stores, in order: each JobQueued's offer right after it."""
    out = []
    for event in events:
        out.append(names.event_subject(event.job_id, type_name(type(event))))
        if isinstance(event, JobQueued):
            out.append(names.offer_subject(event.queue))
    return out


async def stream_subjects(js: JetStreamContext, first: int, last: int) -> list[str]:
    return [
        (await js.get_msg(names.EVENTS_STREAM, seq)).subject or "" for seq in range(first, last + 1)
    ]


async def test_a_turns_events_are_stored_once_in_order_with_their_offers(
    nc: NatsClient,
) -> None:
    js = jetstream(nc)
    events = interleaved(jobs=20, per_job=5)
    before = (await js.stream_info(names.EVENTS_STREAM)).state.last_seq
    futures = await submit_all(EventBatchPublisher(nc, js, min_batch=len(events)), events)
    published = await asyncio.gather(*futures)
    # One batch: consecutive stream sequences in submission order, each offer beside its event.
    last = (await js.stream_info(names.EVENTS_STREAM)).state.last_seq
    subjects = await stream_subjects(js, before + 1, last)
    assert subjects == messages(events)
    at_events = [before + 1 + n for n, s in enumerate(subjects) if s.startswith("dockyard.events.")]
    assert [p.seq for p in published] == at_events
    assert by_job(await stored(js, events)) == by_job(events)
    offers = await fetch_all(js, names.OFFERS_STREAM, names.offer_subject("default"), WORK)
    assert sorted(decode_work_offer(m.data).job_id for m in offers) == sorted(by_job(events))
    assert all(
        p.offer_duplicate is False
        for p, e in zip(published, events, strict=True)
        if isinstance(e, JobQueued)
    )


async def test_a_batch_published_again_is_stored_once(nc: NatsClient) -> None:
    """The relay republishes from its checkpoint after a crash: JetStream refuses a batch
    holding ids it has, so the batch goes again one message at a time, deduplicated."""
    js = jetstream(nc)
    events = interleaved(jobs=5, per_job=3)
    batches = EventBatchPublisher(nc, js, min_batch=2)
    await asyncio.gather(*await submit_all(batches, events[:6]))
    again = await asyncio.gather(*await submit_all(batches, events))
    assert len(again) == len(events)
    assert by_job(await stored(js, events)) == by_job(events)


@pytest.mark.parametrize("min_batch", [1, 32], ids=["batched", "one_by_one"])
async def test_an_event_whose_predecessor_failed_is_never_sent(
    nc: NatsClient, min_batch: int
) -> None:
    js = jetstream(nc)
    sink = EventBatchPublisher(nc, js, min_batch=min_batch)
    lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    lost.set_exception(BusUnavailable("the job's previous event was lost"))
    orphan, follower = job_events(uuid7(), 2)
    [fine] = job_events(uuid7(), 1)
    never = await sink.submit(orphan, lost)
    nor = await sink.submit(follower, never)  # in the same turn, behind the one that fails
    sent = await sink.submit(fine)
    for future in (never, nor):
        with pytest.raises(BusUnavailable):
            await future
    await sent
    assert await stored(js, [orphan]) == []
    assert await stored(js, [fine]) == [fine]


@pytest.mark.parametrize("min_batch", [1, 32], ids=["batched", "one_by_one"])
async def test_a_jobs_event_waits_for_its_previous_one_sent_in_an_earlier_turn(
    nc: NatsClient, min_batch: int
) -> None:
    js = jetstream(nc)
    sink = EventBatchPublisher(nc, js, min_batch=min_batch)
    first, second = job_events(uuid7(), 2)
    held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    behind = await sink.submit(first, held)  # waits for an event not yet stored
    await asyncio.sleep(0)  # a turn passes: the next goes out in a later batch
    after_it = await sink.submit(second, behind)
    await asyncio.sleep(0.2)
    assert not behind.done() and not after_it.done()
    assert await stored(js, [first]) == []
    held.set_result(None)
    one, two = await asyncio.gather(behind, after_it)
    assert one.seq < two.seq
    assert await stored(js, [first]) == [first, second]


async def test_a_stream_without_atomic_batches_gets_every_event_one_by_one(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """EVENTS as made before `allow_atomic` and not updated (or a server that ignores it): the
    batch is refused, its events go one publish each, and the publisher batches no more."""
    js = jetstream(nc)
    config = (await js.stream_info(names.EVENTS_STREAM)).config
    await js.delete_stream(names.EVENTS_STREAM)
    config.allow_atomic = None
    await js.add_stream(config)
    # A full batch goes from within submit: the fallback must hold there too.
    sink = EventBatchPublisher(nc, js, min_batch=2, max_batch=4)
    events = interleaved(jobs=4, per_job=3)
    await asyncio.gather(*await submit_all(sink, events))
    fallbacks = [r for r in caplog.records if "event_batches.unsupported" in r.getMessage()]
    assert fallbacks  # a batch of the first turn, or more: sent before the first was refused
    later = interleaved(jobs=4, per_job=3)
    await asyncio.gather(*await submit_all(sink, later))
    assert by_job(await stored(js, events + later)) == by_job(events + later)
    again = [r for r in caplog.records if "event_batches.unsupported" in r.getMessage()]
    assert again == fallbacks  # the second turn went one by one from the start


async def test_under_load_what_follows_a_batch_gathers_into_the_next(nc: NatsClient) -> None:
    """Each atomic batch costs the server a file store of its own: after one goes, the events
    of the next turns wait out the spacing and go together, not one publish each."""
    js = jetstream(nc)
    loop = asyncio.get_running_loop()
    sink = EventBatchPublisher(nc, js, min_batch=4, batch_spacing_s=0.3)
    await asyncio.gather(*await submit_all(sink, interleaved(jobs=4, per_job=1)))
    sent_at = loop.time()
    later: list[asyncio.Future[Published]] = []
    for _ in range(3):  # three turns of two events: fewer than a batch each
        later += await submit_all(sink, interleaved(jobs=2, per_job=1))
        await asyncio.sleep(0.02)
    published = await asyncio.gather(*later)
    assert loop.time() - sent_at >= 0.25  # held for the spacing
    seqs = [p.seq for p in published]  # each a JobQueued, its offer stored right after it
    assert seqs == list(range(seqs[0], seqs[0] + 2 * len(later), 2))  # together, in order


async def test_a_trickle_is_not_held(nc: NatsClient) -> None:
    js = jetstream(nc)
    loop = asyncio.get_running_loop()
    sink = EventBatchPublisher(nc, js, min_batch=4, batch_spacing_s=5.0)
    started = loop.time()
    for _ in range(3):
        await asyncio.gather(*await submit_all(sink, interleaved(jobs=1, per_job=1)))
    assert loop.time() - started < 2.0


async def test_a_batch_counts_offers_against_the_servers_batch_limit(nc: NatsClient) -> None:
    """A JobQueued makes two messages: 600 of them are 1,200, past the server's 1,000 a batch,
    so they go as two batches, not one the server refuses."""
    js = jetstream(nc)
    events = interleaved(jobs=600, per_job=1)
    published = await asyncio.gather(*await submit_all(EventBatchPublisher(nc, js), events))
    assert len({p.seq for p in published}) == len(events)
    offers = await fetch_all(js, names.OFFERS_STREAM, names.offer_subject("default"), WORK)
    assert len(offers) == len(events)


@pytest.mark.parametrize("min_batch", [1, 32], ids=["batched", "one_by_one"])
async def test_an_offer_is_stored_with_its_event_or_not_at_all_in_a_batch(
    nc: NatsClient, min_batch: int
) -> None:
    """In a batch a JobQueued's offer waits with its event for the job's previous one, and is
    never stored if that failed. Sent on its own (few events) it goes at once, as
    EventPublisher sends it: dispatch waits on it, and a claim is checked against the store."""
    js = jetstream(nc)
    sink = EventBatchPublisher(nc, js, min_batch=min_batch)
    lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    [orphan] = job_events(uuid7(), 1)
    never = await sink.submit(orphan, lost)
    await asyncio.sleep(0.2)
    offers = await fetch_all(js, names.OFFERS_STREAM, names.offer_subject("default"), WORK)
    assert len(offers) == (0 if min_batch == 1 else 1)
    lost.set_exception(BusUnavailable("the job's previous event was lost"))
    with pytest.raises(BusUnavailable):
        await never
    assert await stored(js, [orphan]) == []
    assert await fetch_all(js, names.OFFERS_STREAM, names.offer_subject("default"), WORK) == []


@pytest.mark.parametrize("min_batch", [1, 32], ids=["batched", "one_by_one"])
async def test_offer_subjects_an_earlier_version_took_out_are_put_back(
    nc: NatsClient, min_batch: int
) -> None:
    """A service of an earlier version that starts after this one sets EVENTS up without the
    offers' subjects: the publish that fails puts them back, and the relay's retry (the same
    events again) goes through, each event and offer stored once."""
    js = jetstream(nc)
    config = (await js.stream_info(names.EVENTS_STREAM)).config
    await js.update_stream(config.evolve(subjects=[names.EVENTS_SUBJECTS]))
    sink = EventBatchPublisher(nc, js, min_batch=min_batch)
    events = interleaved(jobs=3, per_job=1)
    failed = await asyncio.gather(*await submit_all(sink, events), return_exceptions=True)
    assert any(isinstance(f, BusError) for f in failed)
    subjects = (await js.stream_info(names.EVENTS_STREAM)).config.subjects
    assert subjects == [names.EVENTS_SUBJECTS, names.OFFERS_SUBJECTS]
    await asyncio.gather(*await submit_all(sink, events))
    assert by_job(await stored(js, events)) == by_job(events)
    offers = await fetch_all(js, names.OFFERS_STREAM, names.offer_subject("default"), WORK)
    assert sorted(decode_work_offer(m.data).job_id for m in offers) == sorted(by_job(events))
