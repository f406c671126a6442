"""The operator's defaults and maxima (DOCKYARD_DEFAULT_*, DOCKYARD_MAX_*) at the API, on
PostgreSQL: a spec over a maximum is a 422 naming the field and the maximum and stores
nothing; the defaults a job got are in its stored spec; schedules get both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from dockyard.core.spec_bounds import SpecBounds
from dockyard.handling.batching import CommandBatcher
from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.scheduler.firing import fire_due
from dockyard.scheduler.schedule_store import PgScheduleStore
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews
from dockyard.web.auth import Tokens

ACME = {"Authorization": "Bearer acme-token"}
BOUNDS = SpecBounds(
    default_cpus=0.5,
    default_memory_mb=128,
    default_pids=64,
    default_timeout_s=600,
    max_cpus=2,
    max_memory_mb=1024,
    max_pids=100,
    max_timeout_s=900,
)
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class Api:
    def __init__(self, client: TestClient[Any, Any], pool: Pool, ctx: Context) -> None:
        self.client, self.pool, self.ctx = client, pool, ctx

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        response = await self.client.post(path, json=body, headers=ACME)
        return response.status, await response.json()

    async def stored(self) -> tuple[int, int]:
        """Events and schedules in the database: what a refused request must not add to."""
        events = await self.pool.fetchval("SELECT count(*) FROM events")
        schedules = await self.pool.fetchval("SELECT count(*) FROM schedules")
        return int(events), int(schedules)

    async def stored_spec(self, job_id: str) -> dict[str, Any]:
        """The spec in the job's job_submitted event, as PostgreSQL keeps it."""
        data = await self.pool.fetchval(
            "SELECT data FROM events WHERE job_id = $1 AND type = 'job_submitted'", job_id
        )
        spec: dict[str, Any] = msgspec.json.decode(data)["spec"]
        return {"resources": spec["resources"], "timeout_s": spec["timeout_s"]}


@pytest_asyncio.fixture(loop_scope="session")
async def api(database_url: str) -> AsyncIterator[Api]:
    pool = await create_pool(database_url)
    store = PgEventStore(pool)
    batcher = CommandBatcher(store)
    ctx = Context(
        store=store,
        views=PgJobViews(pool),
        tokens=Tokens({"acme-token": "acme"}),
        schedules=PgScheduleStore(pool),
        batcher=batcher,
        bounds=BOUNDS,
        clock=lambda: T0,
    )
    try:
        async with TestClient(TestServer(build_app(ctx))) as client:
            yield Api(client, pool, ctx)
    finally:
        await batcher.close()
        await pool.close()


@pytest.mark.parametrize(
    ("spec", "field", "maximum"),
    [
        ({"resources": {"cpus": 2.5}}, "resources.cpus", 2),
        ({"resources": {"memory_mb": 2048}}, "resources.memory_mb", 1024),
        ({"resources": {"pids": 101}}, "resources.pids", 100),
        ({"timeout_s": 901}, "timeout_s", 900),
    ],
)
async def test_a_spec_over_a_maximum_is_422_naming_field_and_max_and_stores_nothing(
    api: Api, spec: dict[str, Any], field: str, maximum: float
) -> None:
    before = await api.stored()

    status, body = await api.post("/v1/jobs", {"image": "busybox", **spec})

    assert status == 422, body
    assert body["error"]["code"] == "invalid_field"
    assert body["error"]["details"] == {"field": field, "max": maximum}
    assert f"maximum of {maximum:g}" in body["error"]["message"]
    assert await api.stored() == before


async def test_a_spec_at_the_maximum_is_taken(api: Api) -> None:
    spec = {"resources": {"cpus": 2, "memory_mb": 1024, "pids": 100}, "timeout_s": 900}
    status, job = await api.post("/v1/jobs", {"image": "busybox", **spec})

    assert status == 201, job
    assert job["spec"]["resources"] == {"cpus": 2.0, "memory_mb": 1024, "pids": 100}


async def test_the_defaults_a_job_got_are_in_its_stored_spec(api: Api) -> None:
    status, job = await api.post("/v1/jobs", {"image": "busybox", "resources": {"pids": 10}})

    assert status == 201, job
    expected = {"cpus": 0.5, "memory_mb": 128, "pids": 10}  # what it gave stays its own
    assert job["spec"]["resources"] == expected
    assert job["spec"]["timeout_s"] == 600
    stored = await api.stored_spec(job["id"])
    assert stored == {"resources": expected, "timeout_s": 600}

    # A later change of the settings never alters the job made before it.
    api.ctx.bounds = SpecBounds(default_memory_mb=256)
    again = await api.client.get(f"/v1/jobs/{job['id']}", headers=ACME)
    assert (await again.json())["spec"]["resources"] == expected


async def test_a_schedule_over_a_maximum_is_422_and_stores_nothing(api: Api) -> None:
    before = await api.stored()
    body = {"name": "big", "interval_s": 60, "job": {"image": "busybox", "timeout_s": 1000}}

    status, answer = await api.post("/v1/schedules", body)

    assert status == 422, answer
    assert answer["error"]["details"] == {"field": "job.timeout_s", "max": 900}
    assert await api.stored() == before


async def test_a_schedule_fires_with_the_defaults_of_the_day(api: Api) -> None:
    body = {"name": "tick", "interval_s": 60, "job": {"image": "busybox", "resources": {"pids": 7}}}
    status, answer = await api.post("/v1/schedules", body)
    assert status == 201, answer
    assert answer["job"]["resources"] == {"cpus": 0.5, "memory_mb": 128, "pids": 7}
    schedules = PgScheduleStore(api.pool)
    later = SpecBounds(default_cpus=0.25, default_memory_mb=64, default_timeout_s=30)

    made = await fire_due(api.ctx.store, schedules, lambda: T0 + timedelta(seconds=61), later)

    assert made == 1
    page = await PgJobViews(api.pool).list_views("acme", labels={"schedule": "tick"}, limit=5)
    (job,) = page.jobs
    assert job["spec"]["resources"] == {"cpus": 0.25, "memory_mb": 64, "pids": 7}  # type: ignore[index]
    assert job["spec"]["timeout_s"] == 30  # type: ignore[index]


async def test_a_schedule_over_a_maximum_set_since_is_not_fired(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"name": "tick", "interval_s": 60, "job": {"image": "busybox", "timeout_s": 800}}
    status, answer = await api.post("/v1/schedules", body)
    assert status == 201, answer
    events_before, _ = await api.stored()
    lowered = SpecBounds(max_timeout_s=700)

    made = await fire_due(
        api.ctx.store, PgScheduleStore(api.pool), lambda: T0 + timedelta(seconds=61), lowered
    )

    assert made == 0
    assert (await api.stored())[0] == events_before
    assert "schedule.not_fired name=tick" in caplog.text and "timeout_s" in caplog.text
