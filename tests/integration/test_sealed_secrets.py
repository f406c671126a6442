"""Sealed secrets on the real NATS, PostgreSQL and Docker (#20, security review F4): what
crosses the bus is ciphertext, the container gets the value, a rotated key still opens jobs
sealed with the old one, and a job sealed with a key its orchestrator lacks fails in words."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiodocker
import msgspec
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from dockyard.core.events import JobSubmitted
from dockyard.core.spec import JobSpec
from dockyard.core.state import Job
from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.scheduler.firing import fire_due
from dockyard.scheduler.schedule_store import PgScheduleStore
from dockyard.scheduler.schedules import parse_schedule
from dockyard.scheduler.secret_sealing import sealed_for_schedule
from dockyard.sealing import KeyRing, is_sealed, job_scope
from dockyard.store.pool import create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews
from dockyard.web.auth import Tokens
from tests.support.orchestration import (
    ControlPlane,
    assert_nothing_left,
    new_orchestrator_id,
    running_orchestrator,
)

ACME = {"Authorization": "Bearer acme-token"}
HASH = 'printf %s "$TOKEN" | sha256sum'


class Api:
    def __init__(self, client: TestClient[Any, Any], plane: ControlPlane, ctx: Context) -> None:
        self.client, self.plane, self.ctx = client, plane, ctx

    async def submit(self, body: dict[str, Any]) -> str:
        response = await self.client.post("/v1/jobs", json=body, headers=ACME)
        assert response.status == 201, await response.text()
        return str((await response.json())["id"])


@pytest_asyncio.fixture(loop_scope="session")
async def api(nats_url: str, database_url: str) -> AsyncIterator[Api]:
    async with ControlPlane(nats_url, database_url) as plane:
        ctx = Context(
            store=plane.store,
            views=PgJobViews(plane.pool),
            schedules=PgScheduleStore(plane.pool),
            tokens=Tokens({"acme-token": "acme"}),
            batcher=plane.batcher,
        )
        async with TestClient(TestServer(build_app(ctx))) as client:
            yield Api(client, plane, ctx)


@asynccontextmanager
async def everything_on_nats(nats_url: str) -> AsyncIterator[list[bytes]]:
    """Every message any client sends meanwhile (subject, headers and payload)."""
    seen: list[bytes] = []

    async def keep(msg: Msg) -> None:
        headers = repr(msg.headers or {}).encode()
        seen.append(msg.subject.encode() + b" " + headers + b" " + msg.data)

    nc = NatsClient()
    await nc.connect(nats_url, name="test eavesdropper")
    try:
        await nc.subscribe(">", cb=keep)
        await nc.flush()
        yield seen
    finally:
        await nc.drain()


def job(busybox_image: str, value: str) -> dict[str, Any]:
    return {
        "image": busybox_image,
        "command": ["sh", "-c", HASH],
        "env": {"TOKEN": value},
        "secrets": ["TOKEN"],
    }


def finished(job: Job) -> bool:
    return job.finished and not job.resources


async def run(api: Api, body: dict[str, Any], docker: aiodocker.Docker, nats_url: str,
              ring: KeyRing | None) -> tuple[str, Job]:  # fmt: skip
    orchestrator_id = new_orchestrator_id()
    async with running_orchestrator(nats_url, orchestrator_id, secrets=ring):
        job_id = await api.submit(body)
        done = await api.plane.wait_for(job_id, finished, 60, "finished")
    await assert_nothing_left(docker, orchestrator_id)
    return job_id, done


def ring_of(*keys: bytes, holder: str) -> KeyRing:
    return KeyRing.of(*keys, holder=holder)


async def test_a_secret_crosses_nats_and_postgres_sealed_and_reaches_the_container(
    api: Api, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    key = os.urandom(32)
    api.ctx.secrets = ring_of(key, holder="scheduler")
    value = f"v-{secrets.token_hex(16)}"
    async with everything_on_nats(nats_url) as seen:
        job_id, done = await run(
            api, job(busybox_image, value), docker, nats_url, ring_of(key, holder="orchestrator")
        )
    assert (done.status, done.exit_code) == ("succeeded", 0), done.error
    lines = [line.text for line in await api.plane.log_lines(job_id)]
    assert lines[-1].split()[0] == hashlib.sha256(value.encode()).hexdigest()
    assert len(seen) > 5 and any(b"claim" in message for message in seen)
    assert [m for m in seen if value.encode() in m] == []
    submitted = (await api.plane.events(job_id))[0]
    assert isinstance(submitted, JobSubmitted) and is_sealed(submitted.spec.env["TOKEN"])
    rows = await api.plane.pool.fetch("SELECT data::text AS data FROM events")
    assert rows and [r for r in rows if value in r["data"]] == []
    assert [r for r in await api.plane.pool.fetch("SELECT * FROM jobs") if value in str(r)] == []


async def test_a_rotated_key_still_opens_jobs_sealed_with_the_old_one(
    api: Api, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    api.ctx.secrets = ring_of(old, holder="scheduler")  # sealed before the rotation
    value = f"v-{secrets.token_hex(16)}"
    rotated = ring_of(new, old, holder="orchestrator")  # DOCKYARD_SECRETS_KEY=new,old
    job_id, done = await run(api, job(busybox_image, value), docker, nats_url, rotated)
    assert (done.status, done.exit_code) == ("succeeded", 0), done.error
    lines = [line.text for line in await api.plane.log_lines(job_id)]
    assert lines[-1].split()[0] == hashlib.sha256(value.encode()).hexdigest()


async def test_a_job_sealed_with_a_key_its_orchestrator_lacks_fails_in_words(
    api: Api, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    api.ctx.secrets = ring_of(os.urandom(32), holder="scheduler")
    value = f"v-{secrets.token_hex(16)}"
    other = ring_of(os.urandom(32), holder="orchestrator")
    job_id, done = await run(api, job(busybox_image, value), docker, nats_url, other)
    assert (done.status, done.reason) == ("failed", "container_error")
    assert done.error == "its secrets were sealed with a key this orchestrator does not have"
    lines = [line.text for line in await api.plane.log_lines(job_id)]
    assert lines == [f"container error: {done.error}"]
    assert "Traceback" not in str(done.error)


async def test_a_schedule_fires_jobs_sealed_for_their_own_id_and_not_with_a_lost_key(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The template is sealed for the schedule; each fired job for its id, with the newest
    key. A template whose key the scheduler no longer has is not fired, and says why."""
    pool = await create_pool(database_url)
    try:
        store, schedules = PgEventStore(pool), PgScheduleStore(pool)
        old, new = os.urandom(32), os.urandom(32)
        value = f"v-{secrets.token_hex(16)}"
        created = datetime.now(UTC) - timedelta(seconds=90)
        for name, key in (("kept", old), ("lost", os.urandom(32))):
            body = {"name": name, "interval_s": 60, "job": job("busybox", value)}
            schedule = parse_schedule(msgspec.json.encode(body), "acme", created)
            sealed = sealed_for_schedule(schedule.job, ring_of(key, holder="x"), "acme", name)
            await schedules.create(msgspec.structs.replace(schedule, job=sealed))
        rotated = ring_of(new, old, holder="scheduler")
        with caplog.at_level(logging.ERROR, "dockyard.scheduler.firing"):
            assert await fire_due(store, schedules, secrets=rotated) == 1
        [row] = await pool.fetch("SELECT id FROM jobs")
        job_id = str(row["id"])
        submitted = (await store.load(job_id))[0].event
        assert isinstance(submitted, JobSubmitted)
        sealed_value = submitted.spec.env["TOKEN"]
        assert sealed_value.split(":")[2] == rotated.keys[0].id  # the newest key
        assert rotated.open(sealed_value, f"dockyard:v1:{job_scope(job_id)}:env.TOKEN") == value
        [lost] = [r for r in caplog.records if "schedule.not_fired" in r.getMessage()]
        assert "name=lost" in lost.getMessage()
        assert "sealed with a key this scheduler does not have" in lost.getMessage()
        assert value not in caplog.text
        # Not fired, but moved on: it does not try again at every tick.
        assert {s.name: s.last_fire is not None for s in await schedules.listing("acme")} == {
            "kept": True,
            "lost": True,
        }
    finally:
        await pool.close()


async def test_a_sidecars_sealed_secret_reaches_the_sidecar_and_is_masked_in_the_log(
    api: Api, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    key = os.urandom(32)
    api.ctx.secrets = ring_of(key, holder="scheduler")
    value = f"pw-{secrets.token_hex(12)}"
    client = (
        'for i in $(seq 1 30); do v=$(nc -w 1 db 8080) && [ -n "$v" ] && break; sleep 0.2; done; '
        'printf %s "$v" | sha256sum; echo "the password is $v"'
    )
    body = {
        "image": busybox_image,
        "command": ["sh", "-c", client],
        "sidecars": [
            {
                "name": "db",
                "image": busybox_image,
                "command": ["nc", "-ll", "-p", "8080", "-e", "sh", "-c", 'echo "$PW"'],
                "env": {"PW": value},
                "secrets": ["PW"],
            }
        ],
    }
    job_id, done = await run(api, body, docker, nats_url, ring_of(key, holder="orchestrator"))
    assert (done.status, done.exit_code) == ("succeeded", 0), done.error
    lines = [line.text for line in await api.plane.log_lines(job_id)]
    assert lines[0].split()[0] == hashlib.sha256(value.encode()).hexdigest()
    assert lines[1] == "the password is ***"
    submitted = (await api.plane.events(job_id))[0]
    assert isinstance(submitted, JobSubmitted)
    assert is_sealed(submitted.spec.sidecars[0].env["PW"])


async def test_a_plaintext_secret_stored_before_sealing_still_runs(
    api: Api, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    """An event an earlier version stored, with the value in plain text: the orchestrator,
    which has a key, takes a value not in the sealed form as it is."""
    value = f"v-{secrets.token_hex(16)}"
    orchestrator_id = new_orchestrator_id()
    ring = ring_of(os.urandom(32), holder="orchestrator")
    async with running_orchestrator(nats_url, orchestrator_id, secrets=ring):
        job_id = await api.plane.submit(msgspec.convert(job(busybox_image, value), JobSpec))
        done = await api.plane.wait_for(job_id, finished, 60, "finished")
    await assert_nothing_left(docker, orchestrator_id)
    assert (done.status, done.exit_code) == ("succeeded", 0), done.error
    lines = [line.text for line in await api.plane.log_lines(job_id)]
    assert lines[-1].split()[0] == hashlib.sha256(value.encode()).hexdigest()


async def test_a_scheduler_without_a_key_fires_no_schedule_with_secrets(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A template stored in plain text by an earlier version: without a key to seal it, its
    job is not made (never stored in plain text again); one without secrets still fires."""
    pool = await create_pool(database_url)
    try:
        store, schedules = PgEventStore(pool), PgScheduleStore(pool)
        created = datetime.now(UTC) - timedelta(seconds=90)
        value = f"v-{secrets.token_hex(16)}"
        for name, body in (("secret", job("busybox", value)), ("plain", {"image": "busybox"})):
            raw = {"name": name, "interval_s": 60, "job": body}
            await schedules.create(parse_schedule(msgspec.json.encode(raw), "acme", created))
        with caplog.at_level(logging.ERROR, "dockyard.scheduler.firing"):
            assert await fire_due(store, schedules, secrets=None) == 1
        [row] = await pool.fetch("SELECT labels::text AS labels FROM jobs")
        assert '"plain"' in row["labels"]
        [skipped] = [r for r in caplog.records if "schedule.not_fired" in r.getMessage()]
        assert "name=secret" in skipped.getMessage()
        assert "DOCKYARD_SECRETS_KEY is not set" in skipped.getMessage()
        rows = await pool.fetch("SELECT data::text AS data FROM events")
        assert [r for r in rows if value in r["data"]] == []
    finally:
        await pool.close()
