"""The log relay when things go wrong: killed, NATS restarted, slow clients, many clients,
the store behind the job's end. A client tailing throughout must see every line once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp
import msgspec
import pytest_asyncio

from dockyard.bus import connect, ensure_topology, jetstream
from dockyard.embedded import EmbeddedNats, EmbeddedPostgres
from dockyard.log_relay.context import WsSettings
from dockyard.log_relay.follow import FollowLimits
from dockyard.log_relay.room import RoomLimits
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore
from tests.support.log_relay import (
    BatchPublisher,
    Jobs,
    Tail,
    eventually,
    lines_of,
    relay_in_process,
    relay_process,
    run_container,
    stored_seqs,
)

PRINT_FOR_A_WHILE = "i=0; while [ $i -lt {n} ]; do echo line $((i+1)); i=$((i+1)); done"
# A pause every 4,000 lines keeps the job printing for seconds on any machine, so the
# fault lands mid-job rather than after a fast machine has printed everything.
PRINT_PACED = (
    "i=0; while [ $i -lt {n} ]; do echo line $((i+1)); i=$((i+1));"
    " [ $((i % 4000)) -eq 0 ] && usleep 100000; done; true"
)


def printing(n: int) -> list[str]:
    return ["sh", "-c", PRINT_FOR_A_WHILE.format(n=n)]


def paced(n: int) -> list[str]:
    return ["sh", "-c", PRINT_PACED.format(n=n)]


def expected(n: int) -> list[str]:
    return [f"line {i}" for i in range(1, n + 1)]


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


@dataclass
class TailedJob:
    """A job printing paced lines with a client tailing it, stopped midway for a fault."""

    job_id: str
    job: asyncio.Task[int]
    tail: Tail
    following: asyncio.Task[Any]

    async def finish(self, jobs: Jobs) -> Any:
        """Once the container has printed all: the job ends, and the client's end frame."""
        await self.job
        await jobs.finish(self.job_id)
        return await self.following


async def tailed_midway(
    ws_url: str, jobs: Jobs, bus: Any, docker: aiodocker.Docker, image: str, n: int
) -> TailedJob:
    """Start printing `n` lines and tailing them; return once the client has 5,000 of them
    and the job still prints (where each test puts its fault)."""
    job_id = await jobs.running()
    publisher = BatchPublisher(bus, job_id)
    job = asyncio.create_task(run_container(docker, image, paced(n), publisher))
    tail = Tail(ws_url, job_id)
    following = asyncio.create_task(tail.run(timeout_s=120))
    await eventually(lambda: tail.after >= 5_000)
    assert not job.done(), "the job ended before the fault"
    return TailedJob(job_id, job, tail, following)


async def assert_every_line_once(tailed: TailedJob, end: Any, pool: Pool, n: int) -> None:
    assert await tailed.job == n
    assert end.status == "succeeded"
    assert tailed.tail.texts == expected(n), "the client saw a gap or a repeat"
    assert await stored_seqs(pool, tailed.job_id) == list(range(1, n + 1))


async def test_relay_sigkilled_mid_tail_client_resumes_and_no_line_is_lost(
    nats_url: str,
    database_url: str,
    jobs: Jobs,
    bus: Any,
    pool: Pool,
    docker: aiodocker.Docker,
    busybox_image: str,
) -> None:
    n = 80_000
    async with relay_process(nats_url, database_url) as relay:
        tailed = await tailed_midway(relay.ws_url, jobs, bus, docker, busybox_image, n)
        await relay.kill()
        seen_at_kill = tailed.tail.after
        await asyncio.sleep(0.5)  # lines keep coming, and wait in JetStream
        await relay.start()
        end = await tailed.finish(jobs)
    await assert_every_line_once(tailed, end, pool, n)
    assert seen_at_kill < n and tailed.tail.connects >= 2


async def test_nats_restarted_mid_job_every_line_arrives_once(
    nats_server: EmbeddedNats,
    nats_url: str,
    database_url: str,
    jobs: Jobs,
    bus: Any,
    pool: Pool,
    docker: aiodocker.Docker,
    busybox_image: str,
) -> None:
    n = 80_000
    async with relay_in_process(nats_url, database_url) as relay:
        tailed = await tailed_midway(relay.ws_url, jobs, bus, docker, busybox_image, n)
        await nats_server.restart()
        end = await tailed.finish(jobs)
    await assert_every_line_once(tailed, end, pool, n)


async def test_the_end_waits_until_the_last_batch_is_stored(
    nats_url: str, database_url: str, jobs: Jobs, bus: Any
) -> None:
    """The exit event can be read before the last batch is written: no `end` before it."""
    async with relay_in_process(nats_url, database_url, persist=False) as relay:
        job_id = await jobs.running()
        publisher = BatchPublisher(bus, job_id)
        tail = Tail(relay.ws_url, job_id)
        following = asyncio.create_task(tail.run(reconnect=False))
        await eventually(lambda: tail.connects > 0, timeout_s=10)
        await publisher.publish(lines_of(range(1, 501)))
        await publisher.flush()
        await jobs.finish(job_id)
        await asyncio.sleep(1.0)
        assert not following.done(), "end was sent before every line was stored"
        assert tail.after == 500  # the live lines arrived meanwhile
        assert await relay.persister.run_until_idle() == 500
        end = await following
    assert end.status == "succeeded" and tail.texts == [f"line {i}" for i in range(1, 501)]


async def test_twenty_clients_on_one_job_share_one_room(
    nats_url: str,
    database_url: str,
    jobs: Jobs,
    bus: Any,
    docker: aiodocker.Docker,
    busybox_image: str,
) -> None:
    n = 40_000
    async with relay_in_process(nats_url, database_url) as relay:
        job_id = await jobs.running()
        publisher = BatchPublisher(bus, job_id)
        tails = [Tail(relay.ws_url, job_id, by_subprotocol=bool(i % 2)) for i in range(20)]
        following = [asyncio.create_task(t.run(reconnect=False)) for t in tails]
        await eventually(lambda: sum(t.connects for t in tails) == 20, timeout_s=20)
        assert len(relay.ctx.rooms) == 1
        room = relay.ctx.rooms.get(job_id)
        assert room is not None and len(room.followers) == 20
        assert await run_container(docker, busybox_image, printing(n), publisher) == n
        await jobs.finish(job_id)
        await asyncio.gather(*following)
    for tail in tails:
        assert tail.texts == expected(n) and tail.close_codes == [1000]
    assert max(t.frames for t in tails) < n // 10, "lines were not batched into frames"


async def test_a_client_that_stops_reading_is_closed_1013_and_others_are_unaffected(
    nats_url: str, database_url: str, jobs: Jobs, bus: Any
) -> None:
    n = 400_000
    limits = RoomLimits(ring_bytes=2 * 1024 * 1024, pending_bytes=1024 * 1024)
    ws = WsSettings(follow=FollowLimits(frame_bytes=128 * 1024))
    async with (
        relay_in_process(nats_url, database_url, limits=limits, ws=ws) as relay,
        aiohttp.ClientSession() as session,
    ):
        job_id = await jobs.running()
        publisher = BatchPublisher(bus, job_id)
        tails = [Tail(relay.ws_url, job_id) for _ in range(3)]
        following = [asyncio.create_task(t.run(reconnect=False, timeout_s=120)) for t in tails]
        url = f"{relay.ws_url}/v1/jobs/{job_id}/logs/ws"
        async with session.ws_connect(
            url, headers={"Authorization": "Bearer acme-token"}
        ) as stalled:
            ring_peak = 0
            for first in range(1, n + 1, 1000):  # about 100 000 lines/s
                await publisher.publish(lines_of(range(first, first + 1000)))
                ring_peak = max(ring_peak, int(relay.ctx.metrics.ring_bytes._value.get()))
                await asyncio.sleep(0.01)
            await publisher.flush()
            await jobs.finish(job_id)
            await asyncio.gather(*following)
            # Now read what the stalled client was sent: lines from 1 on, then 1013.
            last = 0
            async with asyncio.timeout(30):
                async for msg in stalled:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    seqs = [line["seq"] for line in msgspec.json.decode(msg.data)["lines"]]
                    assert seqs == list(range(last + 1, last + 1 + len(seqs)))
                    last = seqs[-1] if seqs else last
            assert stalled.close_code == 1013
            assert 0 < last < n
        # It resumes where it was cut: the rest of the lines once each, then the end.
        rest: list[int] = []
        end: dict[str, Any] | None = None
        async with (
            session.ws_connect(
                f"{url}?after={last}", headers={"Authorization": "Bearer acme-token"}
            ) as resumed,
            asyncio.timeout(60),
        ):
            async for msg in resumed:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                frame = msgspec.json.decode(msg.data)
                if frame["type"] == "end":
                    end = frame
                    continue
                rest.extend(line["seq"] for line in frame["lines"])
        assert rest == list(range(last + 1, n + 1))
        assert end is not None and end["status"] == "succeeded"
        assert resumed.close_code == 1000
        # Counted once the relay's side of the close is done.
        closed = relay.ctx.metrics.closed.labels("1013")
        await eventually(lambda: closed._value.get() == 1, timeout_s=10)
    for tail in tails:
        assert tail.after == n and tail.close_codes == [1000]
    assert ring_peak <= limits.ring_bytes + 256 * 1024, ring_peak


async def test_postgresql_restarted_mid_job_every_line_is_stored_once(
    pg_server: EmbeddedPostgres,
    nats_url: str,
    database_url: str,
    jobs: Jobs,
    bus: Any,
    pool: Pool,
    docker: aiodocker.Docker,
    busybox_image: str,
) -> None:
    n = 80_000
    async with relay_process(nats_url, database_url) as relay:
        tailed = await tailed_midway(relay.ws_url, jobs, bus, docker, busybox_image, n)
        await pg_server.restart()  # the persister's writes fail meanwhile; JetStream keeps them
        end = await tailed.finish(jobs)
        assert relay.process is not None and relay.process.returncode is None
    await assert_every_line_once(tailed, end, pool, n)


async def test_readyz_is_503_while_postgresql_or_nats_is_down_and_200_after(
    pg_server: EmbeddedPostgres,
    nats_server: EmbeddedNats,
    nats_url: str,
    database_url: str,
    jobs: Jobs,
    bus: Any,
) -> None:
    async with relay_process(nats_url, database_url) as relay, aiohttp.ClientSession() as http:

        async def ready_status() -> int:
            async with http.get(f"{relay.url}/readyz") as response:
                return response.status

        for server in (pg_server, nats_server):
            await server.stop()
            try:
                await eventually(lambda: _is(ready_status(), 503), 20, 0.2)
            finally:
                await server.start()
            await eventually(lambda: _is(ready_status(), 200), 20, 0.2)
        assert relay.process is not None and relay.process.returncode is None
        # And it works again, not only answers: a batch is persisted and served.
        job_id = await jobs.running()
        publisher = BatchPublisher(bus, job_id)
        await publisher.publish(lines_of(range(1, 11)))
        await publisher.flush()

        async def served() -> int:
            url = f"{relay.url}/v1/jobs/{job_id}/logs"
            async with http.get(url, headers={"Authorization": "Bearer acme-token"}) as response:
                return len((await response.json())["lines"]) if response.status == 200 else -1

        await eventually(lambda: _is(served(), 10), 20, 0.2)


async def _is(status: Awaitable[int], wanted: int) -> bool:
    return await status == wanted
