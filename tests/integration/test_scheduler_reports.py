"""Reports reach the event log once and in a legal order, whatever NATS delivers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest_asyncio
from msgspec.structs import replace
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus import names, protocol
from dockyard.bus.connection import connect, jetstream
from dockyard.bus.publish import publish
from dockyard.bus.topology import ensure_topology
from dockyard.core import (
    ClaimJob,
    Command,
    MarkOrchestratorLost,
    ReleaseResource,
    ReportExit,
    ReportStarted,
    SubmitJob,
    fold,
    uuid7,
)
from dockyard.core.spec import JobSpec, RetryPolicy
from dockyard.handling.execute import execute
from dockyard.orchestrator.reporter import Reporter, report_id
from dockyard.scheduler.due import PgDueJobs, enqueue_due
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.scheduler.reports import ReportConsumer
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore


class Plane:
    def __init__(self, pool: Pool, nc: NatsClient, js: JetStreamContext) -> None:
        self.pool, self.nc, self.js = pool, nc, js
        self.store = PgEventStore(pool)
        self.metrics = SchedulerMetrics()
        self.reports = ReportConsumer(nc, js, self.store, metrics=self.metrics)

    def refused(self) -> float:
        sample = self.metrics.registry.get_sample_value(
            "dockyard_senders_refused_total", {"kind": "report"}
        )
        return sample or 0.0

    async def running_job(self, retry: RetryPolicy | None = None) -> str:
        job_id = uuid7()
        spec = JobSpec(image="busybox", retry=retry or RetryPolicy())
        await execute(self.store, job_id, SubmitJob(tenant="acme", spec=spec))
        await execute(self.store, job_id, ClaimJob(attempt=1, orchestrator="o1"))
        return job_id

    async def report(
        self,
        job_id: str,
        command: Command,
        report_id: str | None = None,
        *,
        sender: str = "o1",
        subject: str | None = None,
    ) -> None:
        """A report as orchestrator `sender` sends it: on its own subject, naming itself (a
        command that names an orchestrator keeps the one it names), unless `subject` says
        where else."""
        if isinstance(command, ReportExit | ReleaseResource) and command.orchestrator is None:
            command = replace(command, orchestrator=sender)
        message = protocol.Report(
            report_id=report_id or uuid7(),
            job_id=job_id,
            command=command,  # type: ignore[arg-type]
            sent_at=datetime.now(UTC),
        )
        if subject is None:
            subject = names.report_batch_subject(sender)
            payload = protocol.encode_report_batch(protocol.ReportBatch(reports=[message]))
        else:
            payload = protocol.encode(message)
        await publish(
            self.js, subject, payload, msg_id=message.report_id, stream=names.REPORTS_STREAM
        )

    async def types(self, job_id: str) -> list[str]:
        return [type(r.event).__struct_config__.tag for r in await self.store.load(job_id)]  # type: ignore[misc]


@pytest_asyncio.fixture(loop_scope="session")
async def plane(nats_url: str, database_url: str) -> AsyncIterator[Plane]:
    pool = await create_pool(database_url)
    nc = await connect(nats_url, "test reports")
    js = jetstream(nc)
    await ensure_topology(js)
    yield Plane(pool, nc, js)
    await nc.close()
    await pool.close()


STARTED = ReportStarted(attempt=1, container_id="c1", orchestrator="o1")


async def test_the_same_report_delivered_twice_is_recorded_once(plane: Plane) -> None:
    job_id = await plane.running_job()
    await plane.report(job_id, STARTED)
    await plane.report(job_id, STARTED)  # a second copy under another message id
    await plane.report(job_id, ReportExit(attempt=1, exit_code=0), report_id="exit-1")
    await plane.report(job_id, ReportExit(attempt=1, exit_code=0), report_id="exit-1")
    await plane.report(job_id, ReportExit(attempt=1, exit_code=0))
    await plane.reports.run_until_idle()
    assert await plane.types(job_id) == [
        "job_submitted",
        "job_queued",
        "job_claimed",
        "container_started",
        "job_succeeded",
    ]


async def test_an_exit_report_overtaking_the_start_report_still_ends_the_job(plane: Plane) -> None:
    job_id = await plane.running_job()
    await plane.report(job_id, ReportExit(attempt=1, exit_code=3, started_at=datetime.now(UTC)))
    await plane.report(job_id, STARTED)  # late: the job is over, nothing to record
    await plane.reports.run_until_idle()
    job = fold(r.event for r in await plane.store.load(job_id))
    assert job is not None
    assert (job.status, job.exit_code, job.reason) == ("failed", 3, "exit_code")
    assert job.started_at is not None
    assert "container_started" not in await plane.types(job_id)


async def test_a_stale_start_report_is_refused_and_its_container_told_to_stop(
    plane: Plane,
) -> None:
    job_id = await plane.running_job(RetryPolicy(max_attempts=2, backoff_s=0))
    await plane.report(job_id, ReportExit(attempt=1, exit_code=1))
    await plane.reports.run_until_idle()
    orders: asyncio.Queue[protocol.StopOrder] = asyncio.Queue()

    async def on_order(msg: object) -> None:
        await orders.put(protocol.decode_stop(msg.data))  # type: ignore[attr-defined]

    sub = await plane.nc.subscribe(names.control_subject("o1"), cb=on_order)
    await plane.report(job_id, STARTED)  # attempt 1 is over: its container must not run
    await plane.reports.run_until_idle()
    order = await asyncio.wait_for(orders.get(), 5)
    await sub.unsubscribe()
    assert (order.job_id, order.attempt) == (job_id, 1)
    assert (await plane.types(job_id)).count("container_started") == 0


async def test_a_retry_waits_for_its_backoff_then_is_queued_once(plane: Plane) -> None:
    job_id = await plane.running_job(RetryPolicy(max_attempts=2, backoff_s=30))
    await plane.report(job_id, ReportExit(attempt=1, exit_code=1))
    await plane.reports.run_until_idle()
    due = PgDueJobs(plane.pool)
    now = datetime.now(UTC)
    assert await enqueue_due(plane.store, due, clock=lambda: now + timedelta(seconds=29)) == 0
    later = now + timedelta(seconds=31)
    queued = await asyncio.gather(
        *(enqueue_due(plane.store, due, clock=lambda: later) for _ in range(3))
    )  # three schedulers tick at once
    assert sum(queued) == 1
    job = fold(r.event for r in await plane.store.load(job_id))
    assert job is not None and (job.status, job.attempt) == ("queued", 2)


async def test_reports_sent_together_go_in_few_messages_and_are_recorded_in_order(
    plane: Plane,
) -> None:
    """The orchestrator's Reporter batches what is sent while a publish waits for its ack;
    the consumer records every report of a batch, each job's in the order sent."""
    reporter = Reporter(plane.nc, plane.js, orchestrator="o1")
    jobs = [await plane.running_job() for _ in range(30)]

    async def one_job(job_id: str) -> None:
        await reporter.send(job_id, STARTED)
        await reporter.send(job_id, ReportExit(attempt=1, exit_code=0))

    await asyncio.gather(*(one_job(j) for j in jobs))
    assert reporter.sent == 60
    assert reporter.messages < 60  # batched
    await plane.reports.run_until_idle()
    for job_id in jobs:
        assert await plane.types(job_id) == [
            "job_submitted",
            "job_queued",
            "job_claimed",
            "container_started",
            "job_succeeded",
        ]


async def test_a_refused_report_in_a_batch_does_not_hold_back_the_others(
    plane: Plane,
) -> None:
    reporter = Reporter(plane.nc, plane.js, orchestrator="o1")
    job_id = await plane.running_job()
    await asyncio.gather(
        reporter.send(job_id, STARTED), reporter.send(uuid7(), STARTED)
    )  # the second job does not exist: refused, logged, acknowledged with the batch
    await plane.reports.run_until_idle()
    assert "container_started" in await plane.types(job_id)
    info = await plane.js.stream_info(names.REPORTS_STREAM)
    assert info.state.messages == 0


# -- who sent it: the subject, never the payload (F2)


async def test_forged_reports_from_another_orchestrator_for_a_claimed_job_store_nothing(
    plane: Plane,
) -> None:
    """Orchestrator o2, on its own subject and naming itself, reports on o1's attempt."""
    job_id = await plane.running_job()  # claimed by o1
    before = await plane.types(job_id)
    forged_start = ReportStarted(attempt=1, container_id="evil", orchestrator="o2")
    await plane.report(job_id, forged_start, sender="o2")
    await plane.report(job_id, ReportExit(attempt=1, exit_code=0), sender="o2")
    await plane.reports.run_until_idle()
    assert await plane.types(job_id) == before  # refused by decide: nothing stored
    await plane.report(job_id, STARTED)  # the holder's own reports still count
    await plane.report(job_id, ReportExit(attempt=1, exit_code=0))
    await plane.reports.run_until_idle()
    assert await plane.types(job_id) == [*before, "container_started", "job_succeeded"]
    info = await plane.js.stream_info(names.REPORTS_STREAM)
    assert info.state.messages == 0  # the forgeries were acknowledged, not redelivered


async def test_a_report_naming_another_orchestrator_than_its_subject_is_dropped(
    plane: Plane,
) -> None:
    """o2 sends on its own subject a report that names o1, the holder: dropped unread."""
    job_id = await plane.running_job()
    before, refused = await plane.types(job_id), plane.refused()
    await plane.report(job_id, STARTED, sender="o2")  # STARTED names o1
    await plane.report(job_id, ReportExit(attempt=1, exit_code=0, orchestrator="o1"), sender="o2")
    await plane.reports.run_until_idle()
    assert await plane.types(job_id) == before
    assert plane.refused() == refused + 2


async def test_reports_without_a_sender_subject_or_declaring_an_orchestrator_lost_are_dropped(
    plane: Plane,
) -> None:
    """An earlier version's single-report subject names no sender; an orchestrator never
    declares one lost (the janitor does, in the event store itself)."""
    job_id = await plane.running_job()
    before, refused = await plane.types(job_id), plane.refused()
    legacy = names.report_subject(job_id)
    await plane.report(job_id, ReportExit(attempt=1, exit_code=0), subject=legacy)
    lost = MarkOrchestratorLost(attempt=1, orchestrator="o1", silent_s=60)
    await plane.report(job_id, lost, sender="o1")
    await plane.reports.run_until_idle()
    assert await plane.types(job_id) == before
    assert plane.refused() == refused + 2


async def test_a_forged_report_sent_first_under_the_holders_message_id_does_not_shadow_it(
    plane: Plane,
) -> None:
    """o2 publishes first under the id anyone can derive from o1's exit (`job:1:exit`):
    JetStream drops a repeated id whatever its subject, but o1's id is under its own nonce."""
    job_id = await plane.running_job()
    exit_id = report_id(job_id, ReportExit(attempt=1, exit_code=0))
    forged = ReportExit(attempt=1, exit_code=0, orchestrator="o2")
    await plane.report(job_id, forged, report_id=exit_id, sender="o2")
    reporter = Reporter(plane.nc, plane.js, orchestrator="o1")
    await reporter.send(job_id, STARTED)
    await reporter.send(job_id, ReportExit(attempt=1, exit_code=0))
    await plane.reports.run_until_idle()
    assert (await plane.types(job_id))[-2:] == ["container_started", "job_succeeded"]
