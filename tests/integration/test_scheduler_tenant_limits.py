"""What DOCKYARD_TENANT_LIMITS allows a tenant, at the API on PostgreSQL: uid 0, a writable
root and (for a tenant without egress) `network: egress` are 422s naming the field, for jobs
and schedules, and store nothing; the tenants allowed get them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from dockyard.core.tenant_limits import TenantLimits, TenantPolicies
from dockyard.handling.batching import CommandBatcher
from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.scheduler.firing import fire_due
from dockyard.scheduler.schedule_store import PgScheduleStore
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews
from dockyard.web.auth import Tokens

TENANTS = TenantPolicies(
    {
        "trusted": TenantLimits(allow_root=True),
        "*": TenantLimits(allow_egress=False),
    }
)


class Api:
    def __init__(self, client: TestClient[Any, Any], pool: Pool) -> None:
        self.client, self.pool = client, pool

    async def post(self, path: str, body: dict[str, Any], tenant: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {tenant}-token"}
        response = await self.client.post(path, json=body, headers=headers)
        return response.status, await response.json()

    async def stored(self) -> tuple[int, int]:
        events = await self.pool.fetchval("SELECT count(*) FROM events")
        schedules = await self.pool.fetchval("SELECT count(*) FROM schedules")
        return int(events), int(schedules)


@pytest_asyncio.fixture(loop_scope="session")
async def api(database_url: str) -> AsyncIterator[Api]:
    pool = await create_pool(database_url)
    store = PgEventStore(pool)
    batcher = CommandBatcher(store)
    ctx = Context(
        store=store,
        views=PgJobViews(pool),
        tokens=Tokens({"acme-token": "acme", "trusted-token": "trusted"}),
        schedules=PgScheduleStore(pool),
        batcher=batcher,
        tenants=TENANTS,
    )
    try:
        async with TestClient(TestServer(build_app(ctx))) as client:
            yield Api(client, pool)
    finally:
        await batcher.close()
        await pool.close()


REFUSED = [
    ({"user": "0:0"}, "user", "uid 0"),
    ({"user": "root"}, "user", "uid 0"),
    ({"read_only": False}, "read_only", "writable root"),
    ({"network": "egress"}, "network", "egress is not allowed"),
]


@pytest.mark.parametrize(("spec", "field", "words"), REFUSED)
async def test_what_the_tenant_may_not_ask_for_is_422_naming_the_field_and_stores_nothing(
    api: Api, spec: dict[str, Any], field: str, words: str
) -> None:
    before = await api.stored()

    status, body = await api.post("/v1/jobs", {"image": "busybox", **spec}, "acme")
    assert status == 422, body
    assert body["error"]["details"]["field"] == field
    assert words in body["error"]["message"]

    schedule = {"name": f"s-{field}", "interval_s": 60, "job": {"image": "busybox", **spec}}
    status, body = await api.post("/v1/schedules", schedule, "acme")
    assert status == 422, body
    assert body["error"]["details"]["field"] == f"job.{field}"
    assert await api.stored() == before


async def test_a_tenant_with_allow_root_may_run_as_root_with_a_writable_root(api: Api) -> None:
    body = {"image": "busybox", "user": "0:0", "read_only": False, "network": "egress"}
    status, answer = await api.post("/v1/jobs", body, "trusted")

    assert status == 201, answer
    assert (answer["spec"]["user"], answer["spec"]["read_only"]) == ("0:0", False)


async def test_the_default_user_and_isolated_networks_are_fine_for_everyone(api: Api) -> None:
    status, answer = await api.post("/v1/jobs", {"image": "busybox", "network": "isolated"}, "acme")

    assert status == 201, answer


async def test_a_schedule_made_while_allowed_is_not_fired_once_the_tenant_is_not(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"name": "as-root", "interval_s": 60, "job": {"image": "busybox", "user": "0"}}
    status, answer = await api.post("/v1/schedules", body, "trusted")
    assert status == 201, answer
    events_before, _ = await api.stored()
    store, schedules = PgEventStore(api.pool), PgScheduleStore(api.pool)
    later = lambda: datetime.now(UTC) + timedelta(seconds=61)  # noqa: E731

    revoked = TenantPolicies({"trusted": TenantLimits(allow_root=False)})
    assert await fire_due(store, schedules, later, tenants=revoked) == 0
    assert (await api.stored())[0] == events_before
    assert "schedule.not_fired name=as-root" in caplog.text and "job.user" in caplog.text

    # Allowed again: the next fire time makes its job (the one skipped stays skipped).
    next_time = lambda: datetime.now(UTC) + timedelta(seconds=121)  # noqa: E731
    assert await fire_due(store, schedules, next_time, tenants=TENANTS) == 1
