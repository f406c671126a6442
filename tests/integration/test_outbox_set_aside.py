"""One message NATS refuses never stops the outbox relay (issue #17, finding F5).

Real PostgreSQL and nats-server: an event whose subject nats-py refuses, one over the server's
max_payload, and rows an earlier version let in are set aside — recorded, their job failed,
counted — while every other event is delivered once, in its job's order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus import names, outbox
from dockyard.core.events import Event, JobFailed, JobQueued, JobSubmitted
from dockyard.core.ids import uuid7
from dockyard.core.spec import JobSpec
from dockyard.handling.execute import execute
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.scheduler.undeliverable import FailUndeliverableJobs
from dockyard.store.pool import Pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.set_aside import PgSetAsideLog
from tests.integration.test_outbox_relay import (  # the relay's fixtures and helpers
    AUDIT,
    append_jobs,
    js,
    nc,
    pool,
    relay_for,
    store,
    stream_order,
)

__all__ = ["js", "nc", "pool", "store"]  # fixtures, used by name


def bad_job(spec: JobSpec, queue: str) -> list[Event]:
    job_id, at = uuid7(), datetime.now(UTC)
    return [
        JobSubmitted(event_id=uuid7(), job_id=job_id, at=at, tenant="t", spec=spec),
        JobQueued(event_id=uuid7(), job_id=job_id, at=at, attempt=1, queue=queue),
    ]


def relay_setting_aside(
    store: PgEventStore, pool: Pool, nc: NatsClient, metrics: SchedulerMetrics, **kw: object
) -> outbox.OutboxRelay:
    set_aside = FailUndeliverableJobs(PgSetAsideLog(pool), partial(execute, store), metrics)
    return relay_for(store, nc, set_aside=set_aside, **kw)


async def delivered(js: JetStreamContext) -> list[tuple[str, str]]:
    return await stream_order(js, names.EVENTS_STREAM, AUDIT)


async def set_aside_rows(pool: Pool) -> list[tuple[str, str, str]]:
    rows = await pool.fetch("SELECT event_id::text, type, error FROM outbox_set_aside")
    return [(r["event_id"], r["type"], r["error"]) for r in rows]


def counted(metrics: SchedulerMetrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("dockyard_outbox_set_aside_total", {"type": kind})


async def assert_failed_undeliverable(store: PgEventStore, job_id: str) -> JobFailed:
    """The job ended `failed` once, never retried, with an error its owner can read."""
    events = [r.event for r in await store.load(job_id)]
    failed = [e for e in events if isinstance(e, JobFailed)]
    assert len(failed) == 1, events
    assert failed[0].reason == "container_error"
    assert "could not deliver" in failed[0].error and "will not be retried" in failed[0].error
    assert events[-1] is failed[0]
    return failed[0]


async def append(store: PgEventStore, events: list[Event]) -> None:
    await store.append(events[0].job_id, 0, events)


async def test_outbox_subject_nats_refuses_is_set_aside_and_the_rest_delivered(
    store: PgEventStore,
    pool: Pool,
    js: JetStreamContext,
    nc: NatsClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The start-up validation would set `x\n` aside before NATS sees it; here it is let
    # through, as an event committed after the relay started is, so nats-py refuses it.
    monkeypatch.setattr(outbox, "why_undeliverable", lambda event: None)
    before = await append_jobs(store, jobs=20)
    bad = bad_job(JobSpec("busybox"), queue="x\n")
    await append(store, bad)
    after = await append_jobs(store, jobs=20)
    metrics = SchedulerMetrics()
    await relay_setting_aside(store, pool, nc, metrics, page_size=16).run_until_idle()

    stored = await delivered(js)
    failed = await assert_failed_undeliverable(store, bad[0].job_id)
    assert "subject" in failed.error
    good = [e for ids in (before | after).values() for e in ids]
    want = [*good, bad[0].event_id, failed.event_id]  # all but the refused job_queued
    assert sorted(m for _, m in stored) == sorted(want)
    for job, ids in (before | after).items():
        assert [m for s, m in stored if s.split(".")[2] == job] == ids
    offers = await stream_order(js, names.OFFERS_STREAM, names.offer_durable("default"))
    assert sorted(m for _, m in offers) == sorted(names.offer_msg_id(j, 1) for j in before | after)
    assert [(e, t) for e, t, _ in await set_aside_rows(pool)] == [(bad[1].event_id, "job_queued")]
    assert counted(metrics, "job_queued") == 1


async def test_outbox_payload_over_max_payload_is_set_aside_once_across_a_restart(
    store: PgEventStore, pool: Pool, js: JetStreamContext, nc: NatsClient
) -> None:
    huge = JobSpec("busybox", env={"BLOB": "x" * (nc.max_payload + 1)})
    bad = bad_job(huge, queue="default")
    before = await append_jobs(store, jobs=10)
    await append(store, bad)
    after = await append_jobs(store, jobs=10)
    metrics = SchedulerMetrics()
    await relay_setting_aside(store, pool, nc, metrics).run_until_idle()

    failed = await assert_failed_undeliverable(store, bad[0].job_id)
    assert "max_payload" in failed.error
    assert [(e, t) for e, t, _ in await set_aside_rows(pool)] == [
        (bad[0].event_id, "job_submitted")
    ]
    assert counted(metrics, "job_submitted") == 1
    good = [e for ids in (before | after).values() for e in ids]
    want = sorted([*good, bad[1].event_id, failed.event_id])
    assert sorted(m for _, m in await delivered(js)) == want

    # A relay that starts over from the beginning (a crash before any checkpoint): the same
    # event is set aside again without a second record, a second count or a second failure.
    again = SchedulerMetrics()
    relay = relay_setting_aside(store, pool, nc, again, checkpoint="outbox-again")
    await relay.run_until_idle()
    assert len(await set_aside_rows(pool)) == 1
    assert counted(again, "job_submitted") is None
    await assert_failed_undeliverable(store, bad[0].job_id)
    assert await delivered(js) == []  # everything again was a duplicate JetStream dropped


async def test_outbox_rows_an_earlier_version_let_in_are_set_aside_at_start(
    store: PgEventStore, pool: Pool, js: JetStreamContext, nc: NatsClient
) -> None:
    """F5's own row: `queue: "x\\n"` stored by a version whose patterns let it through."""
    bad = bad_job(JobSpec("busybox", queue="x\n"), queue="x\n")
    await append(store, bad)
    good = await append_jobs(store, jobs=5)
    metrics = SchedulerMetrics()
    await relay_setting_aside(store, pool, nc, metrics).run_until_idle()

    failed = await assert_failed_undeliverable(store, bad[0].job_id)
    assert "not valid" in failed.error
    rows = await set_aside_rows(pool)
    assert sorted((e, t) for e, t, _ in rows) == sorted(
        [(bad[0].event_id, "job_submitted"), (bad[1].event_id, "job_queued")]
    )
    want = sorted([*(e for ids in good.values() for e in ids), failed.event_id])
    assert sorted(m for _, m in await delivered(js)) == want
