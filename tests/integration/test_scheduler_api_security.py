"""The scheduler's API on the real stack (PostgreSQL, NATS, the outbox relay) against two
findings of the security review: F5, a field that reaches a NATS subject, a label or a log
ending in a newline (it stopped the outbox for every tenant), and F4, secret env values in
the answers (the events carried them unmasked; sidecars could not have secrets at all)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from dockyard.bus import names
from dockyard.bus.messages import decode_work_offer
from dockyard.core.events import JobSubmitted
from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.scheduler.schedule_store import PgScheduleStore
from dockyard.sealing import is_sealed, job_scope, open_spec, schedule_scope
from dockyard.store.read_model import PgJobViews
from dockyard.web.auth import Tokens
from tests.support.nats import fetch_all
from tests.support.orchestration import ControlPlane, secrets_ring

ACME = {"Authorization": "Bearer acme-token"}
SECRET = "s3cr3t-VALUE"
SIDECAR_SECRET = "sidecar-s3cr3t"


class Api:
    def __init__(self, client: TestClient[Any, Any], plane: ControlPlane, ctx: Context) -> None:
        self.client = client
        self.plane = plane
        self.ctx = ctx

    async def raw(self, method: str, path: str, status: int, **kw: Any) -> bytes:
        response = await self.client.request(method, path, headers=ACME, **kw)
        body = await response.read()
        assert response.status == status, body
        return body

    async def stored(self) -> dict[str, int]:
        counts = {}
        for table in ("events", "jobs", "schedules"):
            counts[table] = await self.plane.pool.fetchval(f"SELECT count(*) FROM {table}")
        return counts


@pytest_asyncio.fixture(loop_scope="session")
async def api(nats_url: str, database_url: str) -> AsyncIterator[Api]:
    async with ControlPlane(nats_url, database_url) as plane:
        ctx = Context(
            store=plane.store,
            views=PgJobViews(plane.pool),
            schedules=PgScheduleStore(plane.pool),
            tokens=Tokens({"acme-token": "acme"}),
            batcher=plane.batcher,
            secrets=secrets_ring("scheduler"),
        )
        async with TestClient(TestServer(build_app(ctx))) as client:
            yield Api(client, plane, ctx)


async def _invalid(response: ClientResponse, field: str) -> str:
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "invalid_field" and error["details"]["field"] == field
    assert "regex" not in error["message"]
    return str(error["message"])


async def _offered(api: Api, job_id: str, timeout_s: float = 15.0) -> None:
    """The job's work offer reaches NATS: the outbox relay is not stuck."""
    async with asyncio.timeout(timeout_s):
        while True:
            msgs = await fetch_all(
                api.plane.js, names.OFFERS_STREAM, names.offer_subject("default")
            )
            if any(decode_work_offer(msg.data).job_id == job_id for msg in msgs):
                return
            await asyncio.sleep(0.1)


# F5: validation.


async def test_a_queue_ending_in_a_newline_is_a_422_stores_nothing_and_blocks_nothing(
    api: Api,
) -> None:
    response = await api.client.post(
        "/v1/jobs", json={"image": "busybox", "queue": "x\n"}, headers=ACME
    )
    message = await _invalid(response, "queue")
    assert "letters, digits" in message
    assert await api.stored() == {"events": 0, "jobs": 0, "schedules": 0}
    job = await api.client.post("/v1/jobs", json={"image": "busybox"}, headers=ACME)
    assert job.status == 201
    await _offered(api, (await job.json())["id"])


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"image": "busybox\n"}, "image"),
        ({"queue": "a.b"}, "queue"),
        ({"queue": "a>"}, "queue"),
        ({"queue": "\x00x"}, "queue"),
        ({"env": {"KEY\n": "v"}}, "env"),
        ({"env": {"A": "v"}, "secrets": ["A\n"]}, "secrets[0]"),
        ({"labels": {"team\n": "v"}}, "labels"),
        ({"labels": {"team": "a\nb"}}, "labels[...]"),
        ({"workdir": "/work\x01"}, "workdir"),
        ({"user": "root\n"}, "user"),
        ({"idempotency_key": "k\r\n"}, "idempotency_key"),
        ({"sidecars": [{"name": "db\n", "image": "postgres"}]}, "sidecars[0].name"),
        (
            {"sidecars": [{"name": "db", "image": "postgres", "env": {"A\n": "x"}}]},
            "sidecars[0].env",
        ),
    ],
)
async def test_a_refused_character_is_a_422_naming_the_field(
    api: Api, spec: dict[str, Any], field: str
) -> None:
    response = await api.client.post("/v1/jobs", json={"image": "busybox", **spec}, headers=ACME)
    await _invalid(response, field)
    assert await api.stored() == {"events": 0, "jobs": 0, "schedules": 0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "nightly\n", "interval_s": 60}, "name"),
        ({"name": "nightly", "cron": "0 3 * * *\n"}, "cron"),
        ({"name": "nightly", "cron": "0\t3 * * *"}, "cron"),
        ({"name": "nightly", "interval_s": 60, "job": {"image": "b", "queue": "x\n"}}, "job.queue"),
    ],
)
async def test_a_refused_schedule_field_is_a_422_naming_it(
    api: Api, body: dict[str, Any], field: str
) -> None:
    schedule = {"job": {"image": "busybox"}, **body}
    await _invalid(await api.client.post("/v1/schedules", json=schedule, headers=ACME), field)
    assert await api.stored() == {"events": 0, "jobs": 0, "schedules": 0}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("queue=x%0A", "queue"),
        ("queue=a.b", "queue"),
        ("label=team%0A=v", "label"),
        ("label=team=a%0Ab", "label"),
        ("cursor=abc%0A", "cursor"),
    ],
)
async def test_a_refused_list_filter_is_a_422_naming_it(api: Api, query: str, field: str) -> None:
    await _invalid(await api.client.get(f"/v1/jobs?{query}", headers=ACME), field)


async def test_a_name_or_id_nothing_can_have_is_404(api: Api) -> None:
    body = {"name": "nightly", "interval_s": 60, "job": {"image": "busybox"}}
    await api.raw("POST", "/v1/schedules", 201, json=body)
    await api.raw("DELETE", "/v1/schedules/nightly%0A", 404)
    await api.raw("DELETE", "/v1/schedules/nightly", 204)
    job_id = msgspec.json.decode(await api.raw("POST", "/v1/jobs", 201, json={"image": "b"}))["id"]
    for suffix in ("", "/events"):
        await api.raw("GET", f"/v1/jobs/{job_id}%0A{suffix}", 404)
    await api.raw("POST", f"/v1/jobs/{job_id}%0A/cancel", 404)


# F4: masking.


def _spec() -> dict[str, Any]:
    return {
        "image": "busybox",
        "env": {"TOKEN": SECRET, "A": "b"},
        "secrets": ["TOKEN"],
        "sidecars": [
            {
                "name": "db",
                "image": "postgres",
                "env": {"POSTGRES_PASSWORD": SIDECAR_SECRET, "POSTGRES_DB": "app"},
                "secrets": ["POSTGRES_PASSWORD"],
            }
        ],
    }


def _assert_masked(raw: bytes) -> None:
    assert SECRET.encode() not in raw and SIDECAR_SECRET.encode() not in raw, raw
    assert b'"TOKEN":"***"' in raw and b'"POSTGRES_PASSWORD":"***"' in raw, raw


async def test_no_answer_about_a_job_carries_its_or_its_sidecars_secrets(api: Api) -> None:
    spec = {**_spec(), "idempotency_key": "once"}
    created = await api.raw("POST", "/v1/jobs", 201, json=spec)
    _assert_masked(created)
    job_id = msgspec.json.decode(created)["id"]
    _assert_masked(await api.raw("POST", "/v1/jobs", 200, json=spec))  # the same job again
    _assert_masked(await api.raw("GET", "/v1/jobs", 200))
    _assert_masked(await api.raw("GET", "/v1/jobs?label=&queue=default", 200))
    _assert_masked(await api.raw("GET", f"/v1/jobs/{job_id}", 200))
    events = await api.raw("GET", f"/v1/jobs/{job_id}/events", 200)
    _assert_masked(events)
    assert b'"type":"job_submitted"' in events
    _assert_masked(await api.raw("POST", f"/v1/jobs/{job_id}/cancel", 202))
    _assert_masked(await api.raw("GET", f"/v1/jobs/{job_id}/events", 200))
    # The events hold them sealed for this job: only a holder of the key opens them.
    submitted = (await api.plane.events(job_id))[0]
    assert isinstance(submitted, JobSubmitted)
    assert is_sealed(submitted.spec.env["TOKEN"])
    opened = open_spec(submitted.spec, secrets_ring("orchestrator"), job_scope(job_id))
    assert opened.env["TOKEN"] == SECRET
    assert opened.sidecars[0].env["POSTGRES_PASSWORD"] == SIDECAR_SECRET


async def test_no_answer_about_a_schedule_carries_its_jobs_secrets(api: Api) -> None:
    body = {"name": "nightly", "interval_s": 60, "job": _spec()}
    _assert_masked(await api.raw("POST", "/v1/schedules", 201, json=body))
    _assert_masked(await api.raw("GET", "/v1/schedules", 200))
    # The table holds them sealed for the schedule; each fired job gets them sealed for it.
    [schedule] = await api.ctx.schedules.listing("acme")
    assert is_sealed(schedule.job.env["TOKEN"])
    opened = open_spec(schedule.job, secrets_ring("scheduler"), schedule_scope("acme", "nightly"))
    assert opened.env["TOKEN"] == SECRET
    assert opened.sidecars[0].env["POSTGRES_PASSWORD"] == SIDECAR_SECRET


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/schedules"])
async def test_secrets_without_a_key_are_a_422_naming_secrets_and_store_nothing(
    api: Api, path: str
) -> None:
    body = _spec() if path == "/v1/jobs" else {"name": "n", "interval_s": 60, "job": _spec()}
    api.ctx.secrets = None
    try:
        response = await api.client.post(path, json=body, headers=ACME)
    finally:
        api.ctx.secrets = secrets_ring("scheduler")
    field = "secrets" if path == "/v1/jobs" else "job.secrets"
    message = await _invalid(response, field)
    assert "DOCKYARD_SECRETS_KEY" in message and SECRET not in message
    assert await api.stored() == {"events": 0, "jobs": 0, "schedules": 0}
    # A spec without secrets needs no key.
    api.ctx.secrets = None
    try:
        plain = await api.client.post("/v1/jobs", json={"image": "busybox"}, headers=ACME)
    finally:
        api.ctx.secrets = secrets_ring("scheduler")
    assert plain.status == 201


@pytest.mark.parametrize(
    ("path", "field"),
    [("/v1/jobs", "env.TOKEN"), ("/v1/schedules", "job.sidecars[0].env.POSTGRES_PASSWORD")],
)
async def test_a_secret_shorter_than_six_characters_is_a_422_naming_it(
    api: Api, path: str, field: str
) -> None:
    spec = _spec()
    if path == "/v1/jobs":
        spec["env"]["TOKEN"] = "12345"
        body: dict[str, Any] = spec
    else:
        spec["sidecars"][0]["env"]["POSTGRES_PASSWORD"] = "pw"
        body = {"name": "n", "interval_s": 60, "job": spec}
    message = await _invalid(await api.client.post(path, json=body, headers=ACME), field)
    assert "shorter than 6" in message and "12345" not in message
    assert await api.stored() == {"events": 0, "jobs": 0, "schedules": 0}


async def test_a_sidecar_secret_naming_no_key_of_its_env_is_a_422(api: Api) -> None:
    spec = _spec()
    spec["sidecars"][0]["secrets"] = ["TOKEN"]  # the job's key, not the sidecar's
    await _invalid(
        await api.client.post("/v1/jobs", json=spec, headers=ACME), "sidecars[0].secrets"
    )
    assert await api.stored() == {"events": 0, "jobs": 0, "schedules": 0}
