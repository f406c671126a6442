"""Publishing events and work offers to a real nats-server: headers, dedup, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus import (
    BusUnavailable,
    EventPublisher,
    close,
    connect,
    decode_event,
    decode_work_offer,
    ensure_topology,
    jetstream,
    names,
    publish,
)
from dockyard.core.events import JobQueued, Metadata
from dockyard.core.ids import uuid7
from dockyard.embedded import EmbeddedNats
from dockyard.embedded._process import free_port
from tests.support.nats import fetch_all

WORK = names.offer_durable("default")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest_asyncio.fixture(loop_scope="session")
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await connect(nats_url, "test-publish", timeout_s=10)
    await ensure_topology(jetstream(client))
    yield client
    await close(client)


@pytest_asyncio.fixture(loop_scope="session")
async def js(nc: NatsClient) -> JetStreamContext:
    return jetstream(nc)


def queued(job_id: str | None = None, attempt: int = 1) -> JobQueued:
    return JobQueued(
        event_id=uuid7(),
        job_id=job_id or uuid7(),
        at=datetime.now(UTC),
        attempt=attempt,
        queue="default",
        meta=Metadata(traceparent=TRACEPARENT),
    )


async def test_a_chained_job_queued_sends_its_work_offer_before_the_event_before_it_is_stored(
    js: JetStreamContext,
) -> None:
    """Dispatch does not wait on the job's previous event: the offer goes at once, the event
    itself only once the one before it is stored (and never if that failed)."""
    event = queued()
    before: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    pending = await EventPublisher(js).submit(event, before)
    [offer_msg] = await fetch_all(js, names.OFFERS_STREAM, names.offer_subject("default"), WORK)
    assert decode_work_offer(offer_msg.data).job_id == event.job_id
    assert await fetch_all(js, names.EVENTS_STREAM, names.job_events_filter(event.job_id)) == []
    before.set_result(None)
    assert not (await pending).duplicate
    [msg] = await fetch_all(js, names.EVENTS_STREAM, names.job_events_filter(event.job_id))
    assert decode_event(msg.data) == event

    failed = queued()
    broken: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    never = await EventPublisher(js).submit(failed, broken)
    broken.set_exception(BusUnavailable("the event before was lost"))
    with pytest.raises(BusUnavailable):
        await never
    assert await fetch_all(js, names.EVENTS_STREAM, names.job_events_filter(failed.job_id)) == []
    # Its offer did go (a claim is checked against the store, so an early offer is harmless).
    [early] = await fetch_all(js, names.OFFERS_STREAM, names.offer_subject("default"), WORK)
    assert decode_work_offer(early.data).job_id == failed.job_id


async def test_event_is_published_with_its_headers_and_work_offer(js: JetStreamContext) -> None:
    event = queued()
    published = await EventPublisher(js).publish(event)
    assert not published.duplicate
    assert published.offer_duplicate is False

    [msg] = await fetch_all(js, names.EVENTS_STREAM, names.job_events_filter(event.job_id))
    assert msg.subject == names.event_subject(event.job_id, "job_queued")
    assert msg.headers is not None
    assert msg.headers[names.MSG_ID] == event.event_id
    assert msg.headers[names.EVENT_TYPE] == "job_queued"
    assert msg.headers[names.SCHEMA_VERSION] == "1"
    assert msg.headers[names.TRACEPARENT] == TRACEPARENT
    assert decode_event(msg.data) == event

    [offer_msg] = await fetch_all(js, names.OFFERS_STREAM, names.offer_subject("default"), WORK)
    offer = decode_work_offer(offer_msg.data)
    assert (offer.job_id, offer.attempt, offer.queue, offer.event_id) == (
        event.job_id,
        1,
        "default",
        event.event_id,
    )
    assert offer_msg.headers is not None
    assert offer_msg.headers[names.MSG_ID] == names.offer_msg_id(event.job_id, 1)


async def test_republished_event_is_dropped_by_its_msg_id(js: JetStreamContext) -> None:
    publisher = EventPublisher(js)
    event = queued()
    await publisher.publish(event)
    again = await publisher.publish(event)
    assert again.duplicate and again.offer_duplicate

    # Another JobQueued of the same attempt (a re-decided event) offers the attempt only once.
    same_attempt = queued(event.job_id)
    assert (await publisher.publish(same_attempt)).offer_duplicate
    next_attempt = queued(event.job_id, attempt=2)
    assert not (await publisher.publish(next_attempt)).offer_duplicate

    events = await fetch_all(js, names.EVENTS_STREAM, names.job_events_filter(event.job_id))
    assert [m.headers[names.MSG_ID] for m in events if m.headers] == [
        event.event_id,
        same_attempt.event_id,
        next_attempt.event_id,
    ]
    offers = await fetch_all(js, names.OFFERS_STREAM, names.offer_subject("default"), WORK)
    assert [decode_work_offer(m.data).attempt for m in offers] == [1, 2]


async def test_plain_publish_dedups_by_msg_id(js: JetStreamContext) -> None:
    subject = names.report_subject(uuid7())
    first = await publish(js, subject, b"r", msg_id="m-1", stream=names.REPORTS_STREAM)
    second = await publish(js, subject, b"r", msg_id="m-1", stream=names.REPORTS_STREAM)
    assert not first.duplicate and second.duplicate
    assert second.seq == first.seq


async def test_nats_stopped_publish_raises_unavailable_then_recovers(
    nats_server: EmbeddedNats, nc: NatsClient, js: JetStreamContext
) -> None:
    publisher = EventPublisher(js, ack_timeout_s=0.5)
    await nats_server.stop()
    with pytest.raises(BusUnavailable):
        await publisher.publish(queued())
    await nats_server.start()

    # The client reconnects by itself (bounded backoff); the next publish goes through.
    async with asyncio.timeout(20):
        while True:
            if nc.is_connected:
                break
            await asyncio.sleep(0.05)
    event = queued()
    while True:
        try:
            await publisher.publish(event)
            break
        except BusUnavailable:  # JetStream may still be loading its streams
            await asyncio.sleep(0.1)
    assert len(await fetch_all(js, names.EVENTS_STREAM, names.job_events_filter(event.job_id))) == 1


async def test_connect_gives_up_after_its_timeout() -> None:
    with pytest.raises(BusUnavailable, match="could not connect"):
        await connect(f"nats://127.0.0.1:{free_port()}", "test-nobody", timeout_s=1.5)
