"""The scheduler's HTTP API against the contract, on the in-memory store and on PostgreSQL."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from dockyard.handling.batching import CommandBatcher
from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.store.memory import InMemoryEventStore
from dockyard.store.pool import create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews
from dockyard.web.auth import Tokens
from tests.support.orchestration import secrets_ring

ACME = {"Authorization": "Bearer acme-token"}
GLOBEX = {"Authorization": "Bearer globex-token"}
ADMIN = {"Authorization": "Bearer admin-token"}
TOKENS = {"acme-token": "acme", "globex-token": "globex", "admin-token": "admin"}


@pytest_asyncio.fixture(loop_scope="session")
async def memory_client() -> AsyncIterator[TestClient[Any, Any]]:
    memory = InMemoryEventStore()
    ctx = Context(
        store=memory, views=memory, tokens=Tokens(TOKENS), secrets=secrets_ring("scheduler")
    )
    async with TestClient(TestServer(build_app(ctx))) as test_client:
        yield test_client


@pytest_asyncio.fixture(loop_scope="session")
async def postgres_client(database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    pool = await create_pool(database_url)
    store = PgEventStore(pool)
    batcher = CommandBatcher(store)  # as the service runs: commands through the batcher
    try:
        ctx = Context(
            store=store,
            views=PgJobViews(pool),
            tokens=Tokens(TOKENS),
            batcher=batcher,
            secrets=secrets_ring("scheduler"),
        )
        async with TestClient(TestServer(build_app(ctx))) as test_client:
            yield test_client
    finally:
        await batcher.close()
        await pool.close()


@pytest.fixture(params=["memory", "postgres"])
def client(request: pytest.FixtureRequest) -> TestClient[Any, Any]:
    """The same API over both stores: the fake cannot drift from PostgreSQL."""
    test_client: TestClient[Any, Any] = request.getfixturevalue(f"{request.param}_client")
    return test_client


async def _error(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return dict(body["error"])


async def submit(client: TestClient[Any, Any], body: dict[str, Any], **kw: Any) -> Any:
    response = await client.post("/v1/jobs", json=body, headers=kw.get("headers", ACME))
    assert response.status == kw.get("status", 201), await response.text()
    return await response.json()


async def test_submit_answers_the_job_view(client: TestClient[Any, Any]) -> None:
    job = await submit(client, {"image": "busybox", "command": ["echo", "hi"]})
    assert set(job) == {
        "id",
        "tenant",
        "status",
        "attempt",
        "max_attempts",
        "exit_code",
        "reason",
        "error",
        "orchestrator",
        "created_at",
        "queued_at",
        "started_at",
        "finished_at",
        "spec",
        "version",
        "usage",
        "limits_hit",
    }
    assert job["status"] == "queued" and job["attempt"] == 1 and job["tenant"] == "acme"
    assert (job["usage"], job["limits_hit"]) == (None, [])  # null until the container starts
    assert job["version"] == 2 and job["spec"]["user"] == "65534:65534"
    fetched = await (await client.get(f"/v1/jobs/{job['id']}", headers=ACME)).json()
    assert fetched == job


async def test_secrets_are_masked_in_the_view(client: TestClient[Any, Any]) -> None:
    job = await submit(
        client, {"image": "busybox", "env": {"TOKEN": "s3cr3t", "A": "b"}, "secrets": ["TOKEN"]}
    )
    assert job["spec"]["env"] == {"TOKEN": "***", "A": "b"}


async def test_run_at_in_the_future_is_scheduled(client: TestClient[Any, Any]) -> None:
    job = await submit(client, {"image": "busybox", "run_at": "2999-01-01T00:00:00Z"})
    assert job["status"] == "scheduled" and job["queued_at"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": "busybox", "bogus": 1}, "bogus"),
        ({"image": "busybox", "timeout_s": -1}, "timeout_s"),
        ({"image": "busybox", "resources": {"pids": 0}}, "resources.pids"),
        ({"command": ["x"]}, "image"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    client: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    error = await _error(
        await client.post("/v1/jobs", json=body, headers=ACME), 422, "invalid_field"
    )
    assert error["details"]["field"] == field
    await assert_nothing_stored(client)


async def assert_nothing_stored(client: TestClient[Any, Any]) -> None:
    """A rejected request stores nothing: no job (of any tenant), no schedule."""
    jobs = await (await client.get("/v1/jobs", headers=ADMIN)).json()
    assert jobs["jobs"] == []
    schedules = await (await client.get("/v1/schedules", headers=ADMIN)).json()
    assert schedules["schedules"] == []


async def test_malformed_body_is_400(client: TestClient[Any, Any]) -> None:
    response = await client.post("/v1/jobs", data=b"{not json", headers=ACME)
    await _error(response, 400, "malformed_body")
    await _error(await client.post("/v1/jobs", data=b"[1]", headers=ACME), 400, "malformed_body")
    await assert_nothing_stored(client)


async def test_body_over_one_mib_is_413(client: TestClient[Any, Any]) -> None:
    big = io.BytesIO(b'{"image": "busybox", "env": {"X": "' + b"a" * 1024 * 1024 + b'"}}')
    headers = {**ACME, "Content-Type": "application/json"}
    await _error(await client.post("/v1/jobs", data=big, headers=headers), 413, "body_too_large")
    await assert_nothing_stored(client)


async def test_missing_or_bad_token_is_401(client: TestClient[Any, Any]) -> None:
    await _error(await client.post("/v1/jobs", json={"image": "b"}), 401, "unauthorized")
    bad = {"Authorization": "Bearer nope"}
    await _error(await client.get("/v1/jobs", headers=bad), 401, "unauthorized")
    await _error(
        await client.post("/v1/jobs", json={"image": "busybox"}, headers=bad), 401, "unauthorized"
    )
    await assert_nothing_stored(client)


async def test_another_tenants_job_is_404(client: TestClient[Any, Any]) -> None:
    job = await submit(client, {"image": "busybox"})
    for path in ("", "/events"):
        response = await client.get(f"/v1/jobs/{job['id']}{path}", headers=GLOBEX)
        await _error(response, 404, "not_found")
    await _error(
        await client.post(f"/v1/jobs/{job['id']}/cancel", headers=GLOBEX), 404, "not_found"
    )
    assert (await client.get(f"/v1/jobs/{job['id']}", headers=ADMIN)).status == 200
    await _error(await client.get(f"/v1/jobs/{uuid.uuid4()}", headers=ACME), 404, "not_found")
    await _error(await client.get("/v1/jobs/not-a-uuid", headers=ACME), 404, "not_found")


async def test_idempotency_key_gives_the_same_job(client: TestClient[Any, Any]) -> None:
    body = {"image": "busybox", "idempotency_key": "k1"}
    first = await submit(client, body)
    again = await submit(client, body, status=200)
    assert again["id"] == first["id"]
    other_tenant = await submit(client, body, headers=GLOBEX)
    assert other_tenant["id"] != first["id"]


async def test_list_is_newest_first_with_a_cursor(client: TestClient[Any, Any]) -> None:
    ids = [
        (await submit(client, {"image": "busybox", "labels": {"n": str(i)}}))["id"]
        for i in range(5)
    ]
    await submit(client, {"image": "busybox"}, headers=GLOBEX)
    page = await (await client.get("/v1/jobs?limit=2", headers=ACME)).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    rest = await (
        await client.get(f"/v1/jobs?limit=10&cursor={page['next_cursor']}", headers=ACME)
    ).json()
    assert [j["id"] for j in rest["jobs"]] == ids[::-1][2:]
    assert rest["next_cursor"] is None
    labelled = await (await client.get("/v1/jobs?label=n=3", headers=ACME)).json()
    assert [j["id"] for j in labelled["jobs"]] == [ids[3]]
    queued = await (await client.get("/v1/jobs?status=queued", headers=ACME)).json()
    assert len(queued["jobs"]) == 5
    everyone = await (await client.get("/v1/jobs", headers=ADMIN)).json()
    assert len(everyone["jobs"]) == 6
    await _error(await client.get("/v1/jobs?status=bogus", headers=ACME), 422, "invalid_field")
    await _error(await client.get("/v1/jobs?limit=0", headers=ACME), 422, "invalid_field")
    await _error(await client.get("/v1/jobs?cursor=zzz", headers=ACME), 422, "invalid_field")


async def test_cancel_a_queued_job_then_conflict(client: TestClient[Any, Any]) -> None:
    job = await submit(client, {"image": "busybox"})
    response = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=ACME)
    assert response.status == 202
    cancelled = await response.json()
    assert cancelled["status"] == "cancelled" and cancelled["reason"] == "cancelled"
    again = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=ACME)
    await _error(again, 409, "already_finished")


async def test_events_are_the_history_without_gaps(client: TestClient[Any, Any]) -> None:
    job = await submit(client, {"image": "busybox"})
    await client.post(f"/v1/jobs/{job['id']}/cancel", headers=ACME)
    history = await (await client.get(f"/v1/jobs/{job['id']}/events", headers=ACME)).json()
    events = history["events"]
    assert [e["version"] for e in events] == [1, 2, 3, 4]
    assert [e["type"] for e in events] == [
        "job_submitted",
        "job_queued",
        "cancel_requested",
        "job_cancelled",
    ]
    assert events[1]["data"]["attempt"] == 1


async def test_health_and_openapi(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/metrics")).status == 401
    metrics = await (await client.get("/metrics", headers=ADMIN)).text()
    assert "dockyard_jobs_submitted" in metrics
    document = await (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.") and "/v1/jobs" in document["paths"]


async def test_schedules_create_list_delete(client: TestClient[Any, Any]) -> None:
    body = {"name": "nightly", "cron": "0 3 * * *", "job": {"image": "busybox"}}
    response = await client.post("/v1/schedules", json=body, headers=ACME)
    assert response.status == 201, await response.text()
    created = await response.json()
    assert created["job"]["labels"] == {"schedule": "nightly"}
    assert created["next_fire"].endswith(("03:00:00Z", "03:00:00+00:00"))
    await _error(
        await client.post("/v1/schedules", json=body, headers=ACME), 409, "schedule_exists"
    )
    listed = await (await client.get("/v1/schedules", headers=ACME)).json()
    assert [s["name"] for s in listed["schedules"]] == ["nightly"]
    assert (await (await client.get("/v1/schedules", headers=GLOBEX)).json())["schedules"] == []
    await _error(await client.delete("/v1/schedules/nightly", headers=GLOBEX), 404, "not_found")
    assert (await client.delete("/v1/schedules/nightly", headers=ACME)).status == 204
    await _error(await client.delete("/v1/schedules/nightly", headers=ACME), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "cron": "* * * *", "job": {"image": "b"}}, "cron"),
        ({"name": "a", "job": {"image": "b"}}, "cron"),
        ({"name": "a", "cron": "* * * * *", "interval_s": 5, "job": {"image": "b"}}, "cron"),
        ({"name": "a", "interval_s": 0, "job": {"image": "b"}}, "interval_s"),
        ({"name": "a", "interval_s": 5, "job": {"image": "B A D"}}, "job.image"),
        ({"name": "a", "interval_s": 5, "job": {"image": "b", "zzz": 1}}, "job.zzz"),
        ({"name": "a", "interval_s": 5, "job": {"image": "b"}, "extra": 1}, "extra"),
        ({"name": "no spaces", "interval_s": 5, "job": {"image": "b"}}, "name"),
    ],
)
async def test_bad_schedules_are_422_naming_the_field(
    client: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    error = await _error(
        await client.post("/v1/schedules", json=body, headers=ACME), 422, "invalid_field"
    )
    assert error["details"]["field"] == field
    await assert_nothing_stored(client)
