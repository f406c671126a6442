"""ensure_topology against a real nats-server: complete, idempotent, safe when run concurrently."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StoreCompression, StreamConfig

from dockyard.bus import TopologyError, close, connect, ensure_topology, jetstream, names
from dockyard.bus.legacy_offers import move_legacy_offers
from dockyard.bus.messages import WorkOffer, decode_work_offer, encode_work_offer
from dockyard.bus.topology import DUPLICATE_WINDOW_S, OFFER_POLICY
from dockyard.core import uuid7
from tests.support.nats import fetch_all


@pytest_asyncio.fixture(loop_scope="session")
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await connect(nats_url, "test-topology", timeout_s=10)
    yield client
    await close(client)


@pytest_asyncio.fixture(loop_scope="session")
async def js(nc: NatsClient) -> JetStreamContext:
    return jetstream(nc)


async def _snapshot(js: JetStreamContext) -> dict[str, object]:
    """Every stream's config and consumer configs, to compare runs."""
    out: dict[str, object] = {}
    for info in await js.streams_info():
        name = info.config.name
        assert name is not None
        out[name] = info.config
        for consumer in await js.consumers_info(name):
            out[f"{name}/{consumer.name}"] = consumer.config
    return out


async def test_ensure_topology_creates_streams_consumers_and_bucket(js: JetStreamContext) -> None:
    await ensure_topology(js, queues=("default", "gpu"), lease_s=7.0)

    events = (await js.stream_info(names.EVENTS_STREAM)).config
    assert events.retention == RetentionPolicy.LIMITS
    assert events.storage == StorageType.FILE
    assert events.duplicate_window == DUPLICATE_WINDOW_S
    assert events.num_replicas == 1
    # Offers travel in EVENTS: stored in their JobQueued's batch, an ack writes nothing.
    assert names.OFFERS_STREAM == names.EVENTS_STREAM
    assert events.subjects == [names.EVENTS_SUBJECTS, names.OFFERS_SUBJECTS]
    reports = (await js.stream_info(names.REPORTS_STREAM)).config
    assert reports.retention == RetentionPolicy.WORK_QUEUE
    logs = (await js.stream_info(names.LOGS_STREAM)).config
    assert logs.retention == RetentionPolicy.LIMITS
    assert logs.max_age

    for queue in ("default", "gpu"):
        work = await js.consumer_info(names.OFFERS_STREAM, names.offer_durable(queue))
        assert work.config.filter_subject == names.offer_subject(queue)
        assert work.config.ack_wait == OFFER_POLICY.ack_wait
        assert work.config.max_deliver == OFFER_POLICY.max_deliver
        assert work.config.backoff == list(OFFER_POLICY.backoff)
    await js.consumer_info(names.REPORTS_STREAM, names.REPORTS_DURABLE)
    await js.consumer_info(names.LOGS_STREAM, names.LOGS_DURABLE)

    bucket = await js.key_value(names.HEARTBEATS_BUCKET)
    assert (await bucket.status()).ttl == 7.0


async def test_ensure_topology_twice_changes_nothing(js: JetStreamContext) -> None:
    await ensure_topology(js)
    before = await _snapshot(js)
    await ensure_topology(js)
    assert await _snapshot(js) == before


async def test_ensure_topology_concurrently_from_two_clients(nats_url: str) -> None:
    clients = [await connect(nats_url, f"test-topology-{i}", timeout_s=10) for i in range(2)]
    try:
        await asyncio.gather(*(ensure_topology(jetstream(c)) for c in clients))
        await asyncio.gather(*(ensure_topology(jetstream(c)) for c in clients))
        assert (
            len(await jetstream(clients[0]).streams_info()) == 5
        )  # three, the heartbeat bucket and the meta bucket
    finally:
        for client in clients:
            await close(client)


async def test_ensure_topology_updates_a_changed_lease_and_adds_queues(
    js: JetStreamContext,
) -> None:
    await ensure_topology(js, lease_s=15.0)
    await ensure_topology(js, lease_s=30.0, queues=("default", "batch"))
    bucket = await js.key_value(names.HEARTBEATS_BUCKET)
    assert (await bucket.status()).ttl == 30.0
    await js.consumer_info(names.OFFERS_STREAM, names.offer_durable("batch"))


async def test_ensure_topology_sets_a_compressed_logs_stream_back_to_plain(
    js: JetStreamContext,
) -> None:
    # As an earlier version made it: S2 on the write path cost more log rate than it saved.
    await js.add_stream(
        StreamConfig(
            name=names.LOGS_STREAM,
            subjects=[names.LOGS_SUBJECTS],
            storage=StorageType.FILE,
            compression=StoreCompression.S2,
        )
    )
    await ensure_topology(js)
    logs = (await js.stream_info(names.LOGS_STREAM)).config
    assert logs.compression == StoreCompression.NONE
    assert logs.max_age


async def test_ensure_topology_lets_an_earlier_events_stream_take_atomic_batches(
    js: JetStreamContext,
) -> None:
    # As versions before the batching outbox sink made it: without allow_atomic.
    await js.add_stream(
        StreamConfig(
            name=names.EVENTS_STREAM, subjects=[names.EVENTS_SUBJECTS], storage=StorageType.FILE
        )
    )
    await ensure_topology(js)
    events = (await js.stream_info(names.EVENTS_STREAM)).config
    assert events.allow_atomic
    assert events.subjects == [names.EVENTS_SUBJECTS, names.OFFERS_SUBJECTS]


async def test_ensure_topology_refuses_a_stream_it_cannot_convert(js: JetStreamContext) -> None:
    # A REPORTS stream someone made with limits retention cannot become a work queue in place.
    await js.add_stream(
        StreamConfig(
            name=names.REPORTS_STREAM,
            subjects=[names.REPORTS_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
        )
    )
    with pytest.raises(TopologyError, match=names.REPORTS_STREAM):
        await ensure_topology(js)


async def test_ensure_topology_refuses_replicas_without_a_cluster(js: JetStreamContext) -> None:
    with pytest.raises(TopologyError, match="replicas"):
        await ensure_topology(js, replicas=3)


async def test_connect_to_a_node_list_with_a_dead_first_node(nats_url: str) -> None:
    """A cluster's URL list: the first connection goes on to a live node."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"nats://127.0.0.1:{probe.getsockname()[1]}"
    nc = await connect(f"{dead},{nats_url}", "test node list", timeout_s=10)
    try:
        assert nc.is_connected
        assert nc.connected_url is not None and nc.connected_url.geturl() == nats_url
    finally:
        await close(nc)


async def _legacy_work_stream(js: JetStreamContext, offers: list[WorkOffer]) -> None:
    """DOCKYARD_WORK as earlier versions made it, holding `offers`; the first one fetched and
    not acked by an old orchestrator, as happens when services are stopped mid-job."""
    await js.add_stream(
        StreamConfig(
            name=names.LEGACY_WORK_STREAM,
            subjects=["dockyard.work.*"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
    )
    for offer in offers:
        await js.publish(
            f"dockyard.work.{offer.queue}",
            encode_work_offer(offer),
            stream=names.LEGACY_WORK_STREAM,
            headers={names.MSG_ID: names.offer_msg_id(offer.job_id, offer.attempt)},
        )
    old = await js.pull_subscribe("dockyard.work.default", "work-default")
    [fetched] = await old.fetch(1, timeout=2)
    assert decode_work_offer(fetched.data) == offers[0]


async def test_ensure_topology_moves_offers_an_earlier_version_left_waiting(
    nats_url: str, js: JetStreamContext
) -> None:
    offers = [
        WorkOffer(job_id=uuid7(), attempt=1, queue="default", event_id=uuid7()),
        WorkOffer(job_id=uuid7(), attempt=2, queue="default", event_id=uuid7()),
        WorkOffer(job_id=uuid7(), attempt=1, queue="gpu", event_id=uuid7()),
    ]
    await _legacy_work_stream(js, offers)
    clients = [await connect(nats_url, f"test-upgrade-{i}", timeout_s=10) for i in range(2)]
    try:  # two services of the new version starting at once move each offer once
        await asyncio.gather(
            *(ensure_topology(jetstream(c), queues=("default", "gpu")) for c in clients)
        )
    finally:
        for client in clients:
            await close(client)

    with pytest.raises(nats.js.errors.NotFoundError):
        await js.stream_info(names.LEGACY_WORK_STREAM)
    for queue in ("default", "gpu"):
        msgs = await fetch_all(
            js, names.OFFERS_STREAM, names.offer_subject(queue), names.offer_durable(queue)
        )
        moved = [decode_work_offer(m.data) for m in msgs]
        assert moved == [o for o in offers if o.queue == queue]
        assert [m.headers and m.headers[names.MSG_ID] for m in msgs] == [
            names.offer_msg_id(o.job_id, o.attempt) for o in moved
        ]
    assert await move_legacy_offers(js) == 0  # nothing left, no stream: a no-op
