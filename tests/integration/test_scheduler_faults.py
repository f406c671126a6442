"""The scheduler killed -9 and restarted, and PostgreSQL restarted, while jobs are submitted:
every job the API accepted exists once with its full history, and is offered exactly once."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from dockyard.bus import names
from dockyard.bus.connection import connect, jetstream
from dockyard.bus.messages import decode_work_offer
from dockyard.embedded import EmbeddedNats, EmbeddedPostgres
from dockyard.store.pool import create_pool
from dockyard.store.postgres import PgEventStore

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fault-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SchedulerProcess:
    def __init__(self, nats_url: str, database_url: str, tmp: Path) -> None:
        self.port = _free_port()
        self.log = tmp / "scheduler.log"
        self.env = {
            **os.environ,
            "DOCKYARD_NATS_URL": nats_url,
            "DOCKYARD_DATABASE_URL": database_url,
            "DOCKYARD_API_LISTEN": f"127.0.0.1:{self.port}",
            "DOCKYARD_TOKENS": f"acme:{TOKEN}",
        }
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dockyard.cli",
                "scheduler",
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=out,
            )
        async with asyncio.timeout(30):
            while True:
                try:
                    async with http.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield session


async def _submit_many(
    http: aiohttp.ClientSession, url: str, accepted: list[str], stop: asyncio.Event
) -> None:
    """Submit until told to stop; keep the ids the API answered 201 for."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            async with http.post(
                f"{url}/v1/jobs", json={"image": "busybox", "labels": {"n": str(n)}}
            ) as response:
                if response.status == 201:
                    accepted.append((await response.json())["id"])
        except (TimeoutError, aiohttp.ClientError):
            await asyncio.sleep(0.05)


async def _offers(nats_url: str) -> Counter[str]:
    nc = await connect(nats_url, "test offers")
    try:
        js = jetstream(nc)
        sub = await js.pull_subscribe_bind(names.offer_durable("default"), names.OFFERS_STREAM)
        seen: Counter[str] = Counter()
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except (TimeoutError, Exception):
                return seen
            for msg in msgs:
                seen[decode_work_offer(msg.data).job_id] += 1
                await msg.ack()
    finally:
        await nc.close()


async def _check_every_accepted_job(database_url: str, accepted: list[str], nats_url: str) -> None:
    pool = await create_pool(database_url)
    store = PgEventStore(pool)
    try:
        for job_id in accepted:
            history = await store.load(job_id)
            types = [type(r.event).__struct_config__.tag for r in history]  # type: ignore[misc]
            assert types == ["job_submitted", "job_queued"], (job_id, types)
        total = await pool.fetchval("SELECT count(*) FROM jobs")
    finally:
        await store.close()
        await pool.close()
    offers = await _offers(nats_url)
    assert total >= len(accepted)  # a killed request may have committed without answering
    missing = [j for j in accepted if offers[j] != 1]
    assert not missing, f"{len(missing)} accepted jobs not offered exactly once"
    assert all(count == 1 for count in offers.values())


@pytest.mark.timeout(180)
async def test_scheduler_sigkilled_mid_stream_loses_and_doubles_nothing(
    nats_url: str, database_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    scheduler = SchedulerProcess(nats_url, database_url, tmp_path)
    accepted: list[str] = []
    try:
        for _ in range(3):
            await scheduler.start(http)
            stop = asyncio.Event()
            load = asyncio.create_task(_submit_many(http, scheduler.url, accepted, stop))
            await asyncio.sleep(1.0)
            await scheduler.kill()  # mid-stream: requests and publishes in flight
            stop.set()
            await load
        await scheduler.start(http)  # the last one publishes what the killed ones left
        await asyncio.sleep(2.0)
        await _check_every_accepted_job(database_url, accepted, nats_url)
    finally:
        await scheduler.kill()
    assert len(accepted) > 20, scheduler.log.read_text()[-3000:]


@pytest.mark.timeout(180)
async def test_postgresql_restarted_while_jobs_flow_loses_nothing(
    nats_url: str,
    database_url: str,
    pg_server: EmbeddedPostgres,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    scheduler = SchedulerProcess(nats_url, database_url, tmp_path)
    accepted: list[str] = []
    try:
        await scheduler.start(http)
        stop = asyncio.Event()
        load = asyncio.create_task(_submit_many(http, scheduler.url, accepted, stop))
        await asyncio.sleep(1.0)
        before = len(accepted)
        await pg_server.restart()
        await asyncio.sleep(3.0)
        stop.set()
        await load
        assert len(accepted) > before, "the API never recovered after the restart"
        await asyncio.sleep(2.0)
        await _check_every_accepted_job(database_url, accepted, nats_url)
    finally:
        await scheduler.kill()


async def _ready_status(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with http.get(f"{url}/readyz") as response:
        return response.status, await response.json()


async def _until_ready_is(
    http: aiohttp.ClientSession, url: str, status: int, timeout_s: float = 20.0
) -> dict[str, object]:
    async with asyncio.timeout(timeout_s):
        while True:
            got, body = await _ready_status(http, url)
            if got == status:
                return body
            await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_readyz_is_503_naming_what_is_down_and_200_once_it_is_back(
    nats_url: str,
    database_url: str,
    pg_server: EmbeddedPostgres,
    nats_server: EmbeddedNats,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    scheduler = SchedulerProcess(nats_url, database_url, tmp_path)
    try:
        await scheduler.start(http)
        for server in (pg_server, nats_server):
            await server.stop()
            try:
                body = await _until_ready_is(http, scheduler.url, 503)
            finally:
                await server.start()
            error = body["error"]
            assert isinstance(error, dict) and error["code"] == "not_ready"
            checks = error["details"]
            assert isinstance(checks, dict) and list(checks.values()).count(False) == 1
            assert scheduler.process is not None and scheduler.process.returncode is None
            await _until_ready_is(http, scheduler.url, 200)  # back without a restart
        async with http.post(f"{scheduler.url}/v1/jobs", json={"image": "busybox"}) as response:
            assert response.status == 201  # and serving again
    finally:
        await scheduler.kill()
