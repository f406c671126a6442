"""One trace per job: from the API request through dispatch, claim, the container's run and its
completion to the log relay, on real NATS, PostgreSQL and Docker.

The services run in this process and share one recording provider: each span says its service
in its `dockyard.service` attribute (in production each process also names it in its resource).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan

from dockyard.core import Job
from dockyard.core.events import JobClaimed
from dockyard.job_logs.store import LogStore
from dockyard.log_relay.holders import AttemptHolders
from dockyard.log_relay.persister import LogPersister
from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.store.pool import create_pool
from dockyard.store.read_model import PgJobViews
from dockyard.telemetry import tracing
from dockyard.web.auth import Tokens
from tests.support.orchestration import ControlPlane, running_orchestrator
from tests.support.tracing import named, one, recording_spans, service_of, trace_id_of

TOKENS = {"acme-token": "acme"}
# The caller's own trace: the job's joins it.
CALLER_TRACE = uuid.uuid4().int
CALLER_SPAN = 0x00F067AA0BA902B7
CALLER = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"


def settled(job: Job) -> bool:
    return job.finished and not job.resources


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    return int(span.context.span_id)


async def run_traced_job(nats_url: str, database_url: str, image: str) -> tuple[str, Any]:
    """Submit through the API, run on an orchestrator, persist the log; the job and its events."""
    pool = await create_pool(database_url)
    try:
        async with ControlPlane(nats_url, database_url) as control:
            ctx = Context(store=control.store, views=PgJobViews(pool), tokens=Tokens(TOKENS))
            async with (
                running_orchestrator(nats_url),
                TestClient(TestServer(build_app(ctx))) as client,
            ):
                response = await client.post(
                    "/v1/jobs",
                    json={"image": image, "command": ["sh", "-c", "echo one; echo two"]},
                    headers={"Authorization": "Bearer acme-token", "traceparent": CALLER},
                )
                assert response.status == 201, await response.text()
                job_id = str((await response.json())["id"])
                job = await control.wait_for(job_id, settled, 60.0, "settled")
                assert job.status == "succeeded", job.error
            persister = LogPersister(control.js, LogStore(pool), holders=AttemptHolders(pool))
            assert await persister.run_until_idle() == 2
            return job_id, await control.events(job_id)
    finally:
        await pool.close()


async def test_one_trace_from_the_api_through_the_orchestrator_to_the_log_relay(
    nats_url: str, database_url: str, busybox_image: str
) -> None:
    with recording_spans() as exporter:
        job_id, events = await run_traced_job(nats_url, database_url, busybox_image)
        spans: Sequence[ReadableSpan] = exporter.get_finished_spans()

    mine = [span for span in spans if span.context.trace_id == CALLER_TRACE]
    assert {service_of(span) for span in mine} == {"scheduler", "orchestrator", "log-relay"}
    assert {span.context.trace_id for span in spans} == {CALLER_TRACE}  # nothing went astray

    # The chain: caller -> submit -> dispatch -> claim -> attempt -> run, report, persist.
    submit = one(spans, "dockyard.submit")
    dispatch = one(spans, "dockyard.dispatch")
    claim = one(spans, "dockyard.claim")
    attempt = one(spans, "dockyard.attempt")
    assert parent_of(submit) == CALLER_SPAN
    assert parent_of(dispatch) == span_id(submit)
    assert parent_of(claim) == span_id(dispatch)
    assert parent_of(attempt) == span_id(claim)
    assert [service_of(s) for s in (submit, dispatch, claim, attempt)] == [
        "scheduler",
        "scheduler",
        "orchestrator",
        "orchestrator",
    ]
    assert claim.attributes is not None and claim.attributes["dockyard.claim.answer"] == "granted"
    assert attempt.attributes is not None
    assert attempt.attributes[tracing.JOB] == job_id
    assert attempt.attributes["dockyard.outcome"] == "succeeded"
    for name in ("dockyard.container.create", "dockyard.container.run", "dockyard.report_exit"):
        assert parent_of(one(spans, name)) == span_id(attempt), name
    run = one(spans, "dockyard.container.run")
    assert [event.name for event in run.events] == ["started", "exited"]
    persisted = named(spans, "dockyard.logs.persist")
    assert persisted, "the log relay made no span"
    assert {parent_of(span) for span in persisted} == {span_id(attempt)}
    assert {service_of(span) for span in persisted} == {"log-relay"}

    # Every event of the job is in its trace; the claim in the claim's span.
    assert {trace_id_of(event.meta.traceparent) for event in events} == {CALLER_TRACE}
    (claimed,) = [event for event in events if isinstance(event, JobClaimed)]
    assert claimed.meta.traceparent is not None
    assert int(claimed.meta.traceparent.split("-")[2], 16) == span_id(claim)
