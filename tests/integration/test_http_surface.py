"""The HTTP surface of the scheduler and the log relay against the security review's F15, F17
and F18: /metrics needs the admin token and keeps tenants' queue names out of its labels; the
page's relay URL and CSP come from configuration, never from `Host`; every request leaves one
structured access record (never a token) and a refused token is counted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from dockyard import config
from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.scheduler.page_routes import RelayAddress
from dockyard.store.memory import InMemoryEventStore
from dockyard.web.access import redacted_query
from dockyard.web.auth import Tokens
from tests.support.log_relay import PAGE_ORIGIN, relay_in_process

ACME_TOKEN = "acme-t0ken-DO-NOT-LOG"
ADMIN_TOKEN = "admin-t0ken-DO-NOT-LOG"
BAD_TOKEN = "guessed-t0ken-DO-NOT-LOG"
TOKENS = {ACME_TOKEN: "acme", ADMIN_TOKEN: "admin"}
ACME = {"Authorization": f"Bearer {ACME_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PAGE = RelayAddress.from_settings(
    config.load({"DOCKYARD_API_LISTEN": "0.0.0.0:8700", "DOCKYARD_LOGS_LISTEN": "0.0.0.0:8701"}),
    {},
)


@pytest_asyncio.fixture(loop_scope="session")
async def scheduler() -> AsyncIterator[TestClient[Any, Any]]:
    memory = InMemoryEventStore()
    ctx = Context(
        store=memory,
        views=memory,
        tokens=Tokens(TOKENS),
        metrics=SchedulerMetrics(queues=("default", "gpu")),
        page=PAGE,
    )
    async with TestClient(TestServer(build_app(ctx))) as client:
        yield client


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dockyard.access"]


def assert_no_token_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Not in any record's text, nor in any field a JSON log line would carry."""
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        for token in (ACME_TOKEN, ADMIN_TOKEN, BAD_TOKEN):
            assert token not in text, record.__dict__


async def test_scheduler_metrics_need_the_admin_token(scheduler: TestClient[Any, Any]) -> None:
    assert (await scheduler.get("/metrics")).status == 401
    bad = await scheduler.get("/metrics", headers={"Authorization": f"Bearer {BAD_TOKEN}"})
    assert bad.status == 401
    forbidden = await scheduler.get("/metrics", headers=ACME)
    assert forbidden.status == 403
    assert (await forbidden.json())["error"]["code"] == "forbidden"
    answer = await scheduler.get("/metrics", headers=ADMIN)
    assert answer.status == 200
    text = await answer.text()
    assert "dockyard_jobs_submitted" in text
    assert "dockyard_http_auth_failures_total 2.0" in text  # the two 401s above
    assert (await scheduler.get("/healthz")).status == 200  # probes stay open


async def test_a_job_on_an_unknown_queue_is_counted_as_other(
    scheduler: TestClient[Any, Any],
) -> None:
    for queue in ("acme-secret-project-x", "default", "gpu", "acme-other-secret"):
        body = {"image": "busybox", "queue": queue}
        assert (await scheduler.post("/v1/jobs", json=body, headers=ACME)).status == 201
    text = await (await scheduler.get("/metrics", headers=ADMIN)).text()
    assert "acme-secret-project-x" not in text and "acme-other-secret" not in text
    assert 'dockyard_jobs_submitted_total{queue="other"} 2.0' in text
    assert 'dockyard_jobs_submitted_total{queue="default"} 1.0' in text
    assert 'dockyard_jobs_submitted_total{queue="gpu"} 1.0' in text


def test_queue_depths_of_unknown_queues_are_summed_as_other() -> None:
    metrics = SchedulerMetrics(queues=("default",))
    metrics.set_queue_depths([("default", 3), ("tenant-a", 2), ("tenant-b", 5)])
    sample = metrics.registry.get_sample_value
    assert sample("dockyard_queue_depth", {"queue": "default"}) == 3
    assert sample("dockyard_queue_depth", {"queue": "other"}) == 7
    assert sample("dockyard_queue_depth", {"queue": "tenant-a"}) is None


async def test_every_request_leaves_an_access_record_without_the_token(
    scheduler: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, "dockyard.access"):
        created = await scheduler.post("/v1/jobs", json={"image": "busybox"}, headers=ACME)
        job_id = (await created.json())["id"]
        await scheduler.get(f"/v1/jobs/{job_id}?access_token={ACME_TOKEN}&x=1", headers=ACME)
        await scheduler.get("/v1/jobs", headers={"Authorization": f"Bearer {BAD_TOKEN}"})
        await scheduler.get("/v1/jobs", params={"token": BAD_TOKEN, "status": "queued"})
        await scheduler.get("/metrics", headers=ADMIN)
    records = access_records(caplog)
    fields = [
        {k: getattr(r, k) for k in ("tenant", "method", "path", "status", "query")} for r in records
    ]
    assert fields == [
        {"tenant": "acme", "method": "POST", "path": "/v1/jobs", "status": 201, "query": ""},
        {
            "tenant": "acme",
            "method": "GET",
            "path": f"/v1/jobs/{job_id}",
            "status": 200,
            "query": "access_token=***&x=1",
        },
        {"tenant": None, "method": "GET", "path": "/v1/jobs", "status": 401, "query": ""},
        {
            "tenant": None,
            "method": "GET",
            "path": "/v1/jobs",
            "status": 401,
            "query": "token=***&status=queued",
        },
        {"tenant": "admin", "method": "GET", "path": "/metrics", "status": 200, "query": ""},
    ]
    assert all(r.duration_ms >= 0 and r.event == "http.request" for r in records)  # type: ignore[attr-defined]
    assert [r.levelname for r in records] == ["INFO", "INFO", "WARNING", "WARNING", "DEBUG"]
    assert_no_token_logged(caplog)


def test_credential_looking_query_parameters_are_redacted() -> None:
    assert redacted_query("") == ""
    assert redacted_query("after=3&limit=10") == "after=3&limit=10"
    assert redacted_query("Token=a&api_key=b&password=c&sig=d&after=1") == (
        "Token=***&api_key=***&password=***&sig=***&after=1"
    )


@pytest.mark.parametrize("forged", ["evil.example", "evil.example:8700", "10.0.0.1:8700"])
async def test_a_forged_host_does_not_move_where_the_page_sends_its_token(
    scheduler: TestClient[Any, Any], forged: str
) -> None:
    page = await scheduler.get("/", headers={"Host": forged})
    assert page.status == 200
    csp = page.headers["Content-Security-Policy"]
    answer = await scheduler.get("/config.json", headers={"Host": forged})
    logs_url = (await answer.json())["logs_url"]
    assert "evil" not in csp and "10.0.0.1" not in csp
    assert logs_url == "http://127.0.0.1:8701"  # the listen address, not the Host
    assert "connect-src 'self' http://127.0.0.1:8701 ws://127.0.0.1:8701;" in csp


async def test_the_page_loaded_from_one_of_its_origins_finds_the_relay_there(
    scheduler: TestClient[Any, Any],
) -> None:
    answer = await scheduler.get("/config.json", headers={"Host": "localhost:8700"})
    assert (await answer.json())["logs_url"] == "http://localhost:8701"


def test_the_relay_address_comes_from_configuration() -> None:
    settings = config.load(
        {
            "DOCKYARD_API_LISTEN": "0.0.0.0:8700",
            "DOCKYARD_LOGS_LISTEN": "0.0.0.0:9701",
            "DOCKYARD_ALLOWED_ORIGINS": "https://jobs.example.com,http://[::1]:8700",
        }
    )
    where = RelayAddress.from_settings(settings, {})
    assert where.for_host("jobs.example.com") == "https://jobs.example.com:9701"
    assert where.for_host("::1") == "http://[::1]:9701"
    assert where.for_host("evil.example") == "http://127.0.0.1:9701"
    assert where.for_host(None) == "http://127.0.0.1:9701"
    explicit = RelayAddress.from_settings(settings, {"DOCKYARD_LOGS_URL": "https://logs.x/"})
    assert explicit.for_host("jobs.example.com") == "https://logs.x"


async def test_relay_metrics_need_the_admin_token_and_its_requests_are_logged(
    nats_url: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "dockyard.access"):
        async with relay_in_process(nats_url, database_url, persist=False) as relay:
            relay.ctx.tokens = Tokens(TOKENS)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{relay.url}/metrics") as anonymous:
                    assert anonymous.status == 401
                async with http.get(f"{relay.url}/metrics", headers=ACME) as tenant:
                    assert tenant.status == 403
                async with http.get(f"{relay.url}/metrics", headers=ADMIN) as admin:
                    assert admin.status == 200
                    text = await admin.text()
                missing = f"{relay.url}/v1/jobs/{'0' * 8}-0000-0000-0000-{'0' * 12}/logs"
                async with http.get(missing, headers=ACME) as unknown:
                    assert unknown.status == 404
                # The browser's way: the token in the WebSocket subprotocol header.
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(
                        f"{relay.ws_url}{missing.removeprefix(relay.url)}/ws",
                        protocols=["dockyard.v1", f"bearer.{ACME_TOKEN}"],
                        headers={"Origin": PAGE_ORIGIN},
                    )
                assert refused.value.status == 404
    assert "dockyard_log_lines_persisted" in text
    assert "dockyard_http_auth_failures_total 1.0" in text
    fields = [(r.tenant, r.path, r.status) for r in access_records(caplog)]  # type: ignore[attr-defined]
    assert fields[:2] == [(None, "/metrics", 401), ("acme", "/metrics", 403)]
    assert fields[-2][0::2] == ("acme", 404)
    assert fields[-1][0::2] == ("acme", 404) and fields[-1][1].endswith("/logs/ws")
    assert_no_token_logged(caplog)
