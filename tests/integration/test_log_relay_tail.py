"""The log relay's live feed: a job's batches pulled from the LOGS stream at the relay's pace."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats.js.errors
import pytest
import pytest_asyncio

from dockyard.bus import connect, ensure_topology, jetstream, names
from dockyard.log_relay.tail import LiveTail, TailLimits
from tests.support.log_relay import eventually


@pytest_asyncio.fixture(loop_scope="session")
async def nc(nats_url: str) -> AsyncIterator[Any]:
    client = await connect(nats_url, "test tail")
    await ensure_topology(jetstream(client))
    yield client
    await client.close()


async def publish(js: Any, job_id: str, first: int, count: int, size: int = 100) -> None:
    subject = names.log_subject("test-tail", job_id)
    for n in range(first, first + count):
        payload = str(n).encode().ljust(size, b" ")
        await js.publish(subject, payload, headers={names.MSG_ID: f"{job_id}:{n}"})


def numbers(batches: list[bytes]) -> list[int]:
    return [int(batch) for batch in batches]


async def test_a_tail_brings_every_batch_from_its_start_in_order_a_few_at_a_time(
    nc: Any,
) -> None:
    js = jetstream(nc)
    job_id = str(uuid.uuid4())
    await publish(js, job_id, 1, 5)  # before the start: not the tail's
    got: list[bytes] = []
    tail = LiveTail(
        nc, job_id, lambda data, _: got.append(data), TailLimits(batch=3, expires_s=1.0)
    )
    await tail.start()
    try:
        await publish(js, job_id, 6, 40)
        await eventually(lambda: len(got) == 40, timeout_s=10)
        await asyncio.sleep(1.5)  # an idle pull expires and is asked for again
        await publish(js, job_id, 46, 2)
        await eventually(lambda: len(got) == 42, timeout_s=10)
    finally:
        await tail.close()
    assert numbers(got) == list(range(6, 48))


@pytest.mark.timeout(300)
async def test_a_tail_left_far_behind_is_not_cut_off_and_misses_nothing(
    nc: Any, nats_url: str
) -> None:
    """Pushed, 80 MiB waiting for a relay whose loop is busy would pass the server's limit
    for one connection (64 MiB) and get it closed; pulled, they wait in the stream."""
    job_id = str(uuid.uuid4())
    count, size = 320, 256 * 1024
    got: list[bytes] = []
    busy = threading.Event()

    def on_batch(payload: bytes, subject: str) -> None:
        if not got:
            busy.wait(120)  # the relay's loop is held up until all is published
        got.append(payload[:16])

    def publisher() -> None:
        async def run() -> None:
            other = await connect(nats_url, "test tail publisher")
            try:
                await publish(jetstream(other), job_id, 1, count, size)
            finally:
                await other.close()
                busy.set()

        asyncio.run(run())

    tail = LiveTail(nc, job_id, on_batch)
    await tail.start()
    reconnects = nc.stats["reconnects"]
    thread = threading.Thread(target=publisher)
    try:
        thread.start()
        # It held the loop meanwhile: as long as 80 MiB take to be fsynced on a busy disk.
        await eventually(lambda: len(got) >= 1, timeout_s=150)
        await eventually(lambda: len(got) == count, timeout_s=120)
    finally:
        busy.set()
        await asyncio.to_thread(thread.join)
        await tail.close()
    assert numbers(got) == list(range(1, count + 1))
    assert nc.stats["reconnects"] == reconnects and nc.is_connected


async def test_a_tail_whose_consumer_is_gone_makes_it_again_after_the_last_batch(
    nc: Any,
) -> None:
    js = jetstream(nc)
    job_id = str(uuid.uuid4())
    got: list[bytes] = []
    tail = LiveTail(nc, job_id, lambda data, _: got.append(data), TailLimits(check_s=0.1))
    await tail.start()
    try:
        await publish(js, job_id, 1, 10)
        await eventually(lambda: len(got) == 10, timeout_s=10)
        first = tail.consumer
        await js.delete_consumer(names.LOGS_STREAM, first)
        await publish(js, job_id, 11, 10)  # while there is no consumer
        await eventually(lambda: len(got) == 20, timeout_s=10)
        assert tail.remade == 1 and tail.consumer != first
    finally:
        await tail.close()
    assert numbers(got) == list(range(1, 21))
    with pytest.raises(nats.js.errors.NotFoundError):  # closing removed it
        await js.consumer_info(names.LOGS_STREAM, tail.consumer or "none")


async def test_closing_a_tail_removes_its_consumer(nc: Any) -> None:
    js = jetstream(nc)
    tail = LiveTail(nc, str(uuid.uuid4()), lambda _, __: None)
    await tail.start()
    name = tail.consumer
    assert (await js.consumer_info(names.LOGS_STREAM, name)).name == name
    started = time.monotonic()
    await tail.close()
    assert time.monotonic() - started < 2.0
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.consumer_info(names.LOGS_STREAM, name)
