"""The janitor against real Docker, PostgreSQL and NATS: reconciling both ways, lost and stuck
jobs, re-offers, retention, several janitors, a janitor killed mid-sweep, Docker unreachable.

Job histories are written through the same `execute` the services use; containers are made
directly, labelled as an orchestrator would label them, with a per-test orchestrator id that
scopes every janitor here (the engine is shared with other work on this machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aiodocker
import aiohttp
import msgspec
import pytest
import pytest_asyncio

from dockyard.bus import connect, ensure_topology, jetstream, names
from dockyard.bus.deployment import deployment_id
from dockyard.bus.messages import decode_work_offer
from dockyard.bus.protocol import Heartbeat, RunningJob, encode_heartbeat
from dockyard.core import (
    ClaimJob,
    Command,
    EnqueueDue,
    ForeignResource,
    Job,
    MarkOrchestratorLost,
    RecordResource,
    ReportExit,
    ReportStarted,
    SubmitJob,
    fold,
    uuid7,
)
from dockyard.core.events import (
    Event,
    JobFailed,
    JobTimedOut,
    OrchestratorLost,
    ReleaseHow,
    ResourceIntended,
    ResourceKind,
    ResourceReleased,
    RetryScheduled,
)
from dockyard.core.spec import JobSpec
from dockyard.core.state import resource_key
from dockyard.handling.execute import execute
from dockyard.janitor import queries
from dockyard.janitor.service import engine_id_of, run_janitor
from dockyard.job_logs import retention as log_store_sql
from dockyard.job_logs.chunks import Chunk
from dockyard.job_logs.store import LogStore
from dockyard.runtime.docker import DockerRuntime
from dockyard.runtime.hardening import container_name
from dockyard.runtime.ports import ContainerRuntime, Resource
from dockyard.runtime.ports import ResourceKind as EngineKind
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.rebuild import rebuild
from tests.support.janitor import (
    Leftovers,
    labelled_with,
    labels,
    running_janitor,
    scoped_orchestrator_id,
)
from tests.support.orchestration import REPO, TEST_LEASE_S

NOW = lambda: datetime.now(UTC)  # noqa: E731


class Db:
    """The test's database: its event store and pool, and job histories written through it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.store = PgEventStore(pool)

    async def run(self, job_id: str, *commands: Command, ago_s: float = 0.0) -> None:
        at = NOW() - timedelta(seconds=ago_s)
        for command in commands:
            await execute(self.store, job_id, command, clock=lambda: at)

    async def events(self, job_id: str) -> list[Event]:
        return [r.event for r in await self.store.load(job_id)]

    async def plant(self, job_id: str, kind: ResourceKind, name: str, **fields: Any) -> None:
        """A ledger entry written past decide, which refuses names the attempt cannot have:
        what a forged claim left before names were checked (or a forger with the database)."""
        history = await self.store.load(job_id)
        job = fold(r.event for r in history)
        assert job is not None
        entry = ResourceIntended(
            event_id=uuid7(), job_id=job_id, at=NOW(), attempt=job.attempt, kind=kind,
            name=name, **fields,
        )  # fmt: skip
        await self.store.append(job_id, len(history), [entry], view=fold([entry], job))

    async def job(self, job_id: str) -> Job:
        job = fold(await self.events(job_id))
        assert job is not None
        return job


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[Db]:
    pool = await create_pool(database_url)
    yield Db(pool)
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def leftovers(
    docker: aiodocker.Docker, busybox_image: str, nats_url: str
) -> AsyncIterator[Leftovers]:
    nc = await connect(nats_url, "test deployment")
    try:  # what an orchestrator of this installation puts on everything it makes
        deployment = await ensure_topology(jetstream(nc), lease_s=TEST_LEASE_S)
    finally:
        await nc.close()
    made = Leftovers(docker, busybox_image, {names.LABEL_DEPLOYMENT: deployment})
    yield made
    await made.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def engine(docker: aiodocker.Docker) -> str:
    return await engine_id_of(docker)()


def job_spec(**fields: Any) -> JobSpec:
    body: dict[str, Any] = {"image": "busybox", "command": ["true"], **fields}
    return msgspec.convert(body, JobSpec)


def submit(**fields: Any) -> SubmitJob:
    return SubmitJob(tenant="acme", spec=job_spec(**fields))


def record(job_id: str, attempt: int, orchestrator: str, engine: str | None, **kw: Any) -> Command:
    kind = kw.pop("kind", "container")
    name = kw.pop("name", container_name(job_id, attempt))
    return RecordResource(
        attempt=attempt, kind=kind, name=name, orchestrator=orchestrator, engine=engine
    )


def started(attempt: int, orchestrator: str) -> ReportStarted:
    return ReportStarted(attempt=attempt, container_id=f"c{attempt}", orchestrator=orchestrator)


def of_type(events: list[Event], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def put_heartbeat(nats_url: str, orchestrator: str, jobs: list[tuple[str, int]]) -> None:
    nc = await connect(nats_url, "test heartbeat")
    try:
        js = jetstream(nc)
        await ensure_topology(js, lease_s=TEST_LEASE_S)
        kv = await js.key_value(names.HEARTBEATS_BUCKET)
        beat = Heartbeat(
            orchestrator=orchestrator,
            queues=["default"],
            max_jobs=4,
            lease_s=TEST_LEASE_S,
            started_at=NOW(),
            sent_at=NOW(),
            jobs=[RunningJob(job_id=j, attempt=a, log_seq=0) for j, a in jobs],
        )
        await kv.put(names.heartbeat_key(orchestrator), encode_heartbeat(beat))
    finally:
        await nc.close()


# -- Docker against the ledger ------------------------------------------------------------


async def test_another_installations_containers_are_never_taken_for_orphans(
    nats_url: str, database_url: str, docker: aiodocker.Docker, leftovers: Leftovers
) -> None:
    """Two installations on one engine: each janitor judges only containers carrying its own
    installation's id (kept in NATS), so neither removes the other's running jobs."""
    nc = await connect(nats_url, "test deployment")
    try:
        ours = await ensure_topology(jetstream(nc), lease_s=TEST_LEASE_S)
        assert ours == await deployment_id(jetstream(nc))  # made once, then the same
    finally:
        await nc.close()
    orch = scoped_orchestrator_id()
    theirs_job, ours_job = uuid7(), uuid7()
    theirs = await leftovers.container(
        container_name(theirs_job, 1),
        {**labels(theirs_job, 1, orch), names.LABEL_DEPLOYMENT: "another-installation"},
    )
    mine = await leftovers.container(
        container_name(ours_job, 1), {**labels(ours_job, 1, orch), names.LABEL_DEPLOYMENT: ours}
    )
    async with running_janitor(
        nats_url, database_url, docker, orch, own_deployment_only=True
    ) as janitor:
        report = await janitor.turn(30)
    assert report.ok, report.lines()
    assert [a.what for a in report.actions] == [
        f"remove container {container_name(ours_job, 1)} (its job is unknown)"
    ]
    assert await leftovers.exists(theirs) and not await leftovers.exists(mine)


async def test_orphan_of_an_unknown_job_is_removed_and_unlabelled_containers_untouched(
    nats_url: str, database_url: str, docker: aiodocker.Docker, leftovers: Leftovers
) -> None:
    orch = scoped_orchestrator_id()
    orphan_job = uuid7()
    orphan = await leftovers.container(container_name(orphan_job, 1), labels(orphan_job, 1, orch))
    plain = await leftovers.container(f"plain-{orch}", {"test.owner": orch})
    partial = await leftovers.container(  # Dockyard's other labels, but no dockyard.job
        f"partial-{orch}", {names.LABEL_ORCHESTRATOR: orch, names.LABEL_ATTEMPT: "1"}
    )
    async with running_janitor(nats_url, database_url, docker, orch, grace_s=3600) as patient:
        report = await patient.turn(30)
        assert report.ok and report.actions == []  # inside the grace period: kept
    assert await leftovers.exists(orphan)

    # Unscoped, in a dry run (it changes nothing): only labelled containers are ever planned.
    async with running_janitor(nats_url, database_url, docker, None) as unscoped:
        dry = await unscoped.sweep(dry_run=True)
    planned = " ".join(a.what for a in dry.actions)
    assert container_name(orphan_job, 1) in planned
    assert f"plain-{orch}" not in planned and f"partial-{orch}" not in planned

    async with running_janitor(nats_url, database_url, docker, orch) as janitor:
        report = await janitor.turn(30)
        assert report.ok, report.lines()
        assert [(a.action, a.outcome, a.what) for a in report.actions] == [
            (
                "remove_resource",
                "done",
                f"remove container {container_name(orphan_job, 1)} (its job is unknown)",
            )
        ]
        metrics = janitor.metrics.render().decode()
    assert not await leftovers.exists(orphan)
    assert await leftovers.exists(plain) and await leftovers.exists(partial)
    assert 'dockyard_janitor_removed_total{kind="container"} 1.0' in metrics
    assert "dockyard_janitor_sweep_duration_seconds_count 1.0" in metrics
    assert 'dockyard_janitor_sweeps_total{outcome="ok"} 1.0' in metrics


async def test_stale_attempts_container_is_removed_while_the_new_attempts_stays(
    nats_url: str,
    database_url: str,
    docker: aiodocker.Docker,
    leftovers: Leftovers,
    db: Db,
    engine: str,
) -> None:
    orch, orch2 = scoped_orchestrator_id(), scoped_orchestrator_id()
    job_id = uuid7()
    await db.run(
        job_id,
        submit(retry={"max_attempts": 3, "backoff_s": 0}),
        ClaimJob(attempt=1, orchestrator=orch),
        record(job_id, 1, orch, engine),
        started(1, orch),
        MarkOrchestratorLost(attempt=1, orchestrator=orch, silent_s=20),
        EnqueueDue(),
        ClaimJob(attempt=2, orchestrator=orch2),
        record(job_id, 2, orch2, engine),
        started(2, orch2),
    )
    old = await leftovers.container(container_name(job_id, 1), labels(job_id, 1, orch))
    new = await leftovers.container(container_name(job_id, 2), labels(job_id, 2, orch))
    await put_heartbeat(nats_url, orch2, [(job_id, 2)])
    async with running_janitor(nats_url, database_url, docker, orch) as janitor:
        report = await janitor.turn(30)
    assert report.ok, report.lines()
    assert not await leftovers.exists(old)
    assert await leftovers.exists(new)
    job = await db.job(job_id)
    assert (job.status, job.attempt) == ("running", 2)
    assert job.resources == {resource_key("container", container_name(job_id, 2), 2)}
    [released] = of_type(await db.events(job_id), ResourceReleased)
    assert (released.attempt, released.how) == (1, "removed")


async def test_ledger_entries_the_engine_does_not_have_are_recorded_gone(
    nats_url: str, database_url: str, docker: aiodocker.Docker, db: Db, engine: str
) -> None:
    orch = scoped_orchestrator_id()
    job_id = uuid7()
    mine = container_name(job_id, 1)
    elsewhere = container_name(job_id, 1, "elsewhere")
    unknown_engine = container_name(job_id, 1, "unknown")
    await db.run(
        job_id,
        submit(sidecars=[{"name": n, "image": "busybox"} for n in ("elsewhere", "unknown")]),
        ClaimJob(attempt=1, orchestrator=orch),
        record(job_id, 1, orch, engine),
        record(job_id, 1, orch, "SOME:OTHER:ENGINE", kind="sidecar", name=elsewhere),
        record(job_id, 1, orch, None, kind="sidecar", name=unknown_engine),
        started(1, orch),
        ReportExit(attempt=1, exit_code=0),
    )
    async with running_janitor(nats_url, database_url, docker, orch) as janitor:
        first = await janitor.turn(30)
        second = await janitor.turn(30)
    assert first.ok and second.ok
    assert [a.outcome for a in first.actions] == ["done"]
    assert second.actions == []  # settled once
    [gone] = of_type(await db.events(job_id), ResourceReleased)
    assert (gone.name, gone.how) == (mine, "gone")
    job = await db.job(job_id)
    assert job.resources == {  # other engines' janitors (or nobody) judge these
        resource_key("sidecar", elsewhere, 1),
        resource_key("sidecar", unknown_engine, 1),
    }


async def test_janitor_never_removes_a_container_planted_in_the_ledger(
    nats_url: str,
    database_url: str,
    docker: aiodocker.Docker,
    busybox_image: str,
    leftovers: Leftovers,
    db: Db,
    engine: str,
) -> None:
    """Security review F3: ledger names come over NATS. A finished job's ledger names a
    container without Dockyard's labels (say the installation's own PostgreSQL), another
    job's running container, one under the job's own name from another installation, and a
    bare network: the janitor inspects each, finds its labels do not prove it the attempt's,
    and leaves it alone, settling the entry as gone."""
    orch = scoped_orchestrator_id()
    job_id, other_job = uuid7(), uuid7()
    anyones = Leftovers(docker, busybox_image)  # no installation labels: not Dockyard's at all
    try:
        plain = await anyones.container(f"planted-{orch}", {"test.owner": orch})
        bare_network = await anyones.network(f"planted-net-{orch}", {"test.owner": orch})
        # Another tenant's running job, which the engine lists as Dockyard's.
        await db.run(other_job, submit(), ClaimJob(attempt=1, orchestrator=orch), started(1, orch))
        await put_heartbeat(nats_url, orch, [(other_job, 1)])
        others = await leftovers.container(container_name(other_job, 1), labels(other_job, 1, orch))
        # The job's own name and labels, but another installation's.
        elsewhere = await leftovers.container(
            container_name(job_id, 1),
            {**labels(job_id, 1, orch), names.LABEL_DEPLOYMENT: "another-installation"},
        )
        await db.run(
            job_id,
            submit(),
            ClaimJob(attempt=1, orchestrator=orch),
            record(job_id, 1, orch, engine),
            started(1, orch),
        )
        planted = {"orchestrator": orch, "engine": engine}
        for name in (f"planted-{orch}", container_name(other_job, 1)):
            with pytest.raises(ForeignResource):  # decide refuses it now ...
                await db.run(job_id, record(job_id, 1, orch, engine, name=name))
            await db.plant(job_id, "container", name, **planted)  # ... so past decide
        await db.plant(job_id, "network", f"planted-net-{orch}", **planted)
        await db.run(job_id, ReportExit(attempt=1, exit_code=0))

        async with running_janitor(
            nats_url, database_url, docker, orch, own_deployment_only=True
        ) as janitor:
            report = await janitor.turn(30)
            again = await janitor.turn(30)
            metrics = janitor.metrics.render().decode()

        assert report.ok and again.ok, report.lines() + again.lines()
        assert sorted(a.action for a in report.actions) == ["settle_entry"] * 4
        assert again.actions == []  # settled once
        for container in (plain, others, elsewhere):
            assert (await docker.containers.container(container).show())["State"]["Running"]
        assert await anyones.network_exists(bare_network)
        released = {e.name: e.how for e in of_type(await db.events(job_id), ResourceReleased)}
        assert released == {
            f"planted-{orch}": "gone",
            container_name(other_job, 1): "gone",
            container_name(job_id, 1): "gone",
            f"planted-net-{orch}": "gone",
        }
        assert (await db.job(job_id)).resources == frozenset()
        assert (await db.job(other_job)).status == "running"
        assert 'dockyard_janitor_foreign_total{kind="container"} 3.0' in metrics
        assert 'dockyard_janitor_foreign_total{kind="network"} 1.0' in metrics
        assert 'dockyard_janitor_removed_total{kind="container"}' not in metrics
    finally:
        await anyones.cleanup()


# -- lost orchestrators and stuck jobs -------------------------------------------------------


async def test_silent_orchestrators_jobs_are_requeued_once_and_stuck_jobs_ended(
    nats_url: str, database_url: str, docker: aiodocker.Docker, db: Db
) -> None:
    ghost, alive = scoped_orchestrator_id(), scoped_orchestrator_id()
    lost_job, timed_out, never_started = uuid7(), uuid7(), uuid7()
    await db.run(
        lost_job,
        submit(retry={"max_attempts": 2, "backoff_s": 0}),
        ClaimJob(attempt=1, orchestrator=ghost),
        started(1, ghost),
    )
    await db.run(
        timed_out, submit(timeout_s=1), ClaimJob(attempt=1, orchestrator=alive), started(1, alive)
    )
    await db.run(never_started, submit(), ClaimJob(attempt=1, orchestrator=alive))
    await put_heartbeat(nats_url, alive, [])  # alive, but does not get on with them
    await asyncio.sleep(1.5)
    async with running_janitor(
        nats_url, database_url, docker, ghost, stuck_margin_s=0, starting_timeout_s=1
    ) as janitor:
        first = await janitor.turn(30)
        again = await janitor.turn(30)
    assert first.ok, first.lines()
    assert again.actions == []
    events = await db.events(lost_job)
    [lost] = of_type(events, OrchestratorLost)
    [retry] = of_type(events, RetryScheduled)
    assert (lost.orchestrator, lost.attempt, retry.reason) == (ghost, 1, "orchestrator_lost")
    assert lost.meta.producer == "janitor"
    assert (await db.job(lost_job)).attempt == 2
    [ended] = of_type(await db.events(timed_out), JobTimedOut)
    assert "past its 1 s timeout" in ended.error
    [failed] = of_type(await db.events(never_started), JobFailed)
    assert failed.reason == "container_error" and "never started" in failed.error


@pytest.mark.parametrize("sent_as", ["one report", "a batch of its orchestrator"])
async def test_a_report_waiting_in_the_reports_stream_holds_the_lost_verdict(
    nats_url: str, database_url: str, docker: aiodocker.Docker, db: Db, sent_as: str
) -> None:
    """An orchestrator that reported its exit and then vanished (or shut down) is not lost:
    its report says what happened, once the scheduler records it. Orchestrators send
    reports in batches on their own subject, so a batch waiting from the job's orchestrator
    holds the verdict too (it may hold the exit)."""
    from dockyard.bus import protocol
    from dockyard.bus.publish import publish

    ghost = scoped_orchestrator_id()
    job_id = uuid7()
    await db.run(
        job_id,
        submit(retry={"max_attempts": 2, "backoff_s": 0}),
        ClaimJob(attempt=1, orchestrator=ghost),
        started(1, ghost),
    )
    report = protocol.Report(
        report_id="r1", job_id=job_id, command=ReportExit(attempt=1, exit_code=0), sent_at=NOW()
    )
    subject, payload = names.report_subject(job_id), protocol.encode(report)
    if sent_as != "one report":
        subject = names.report_batch_subject(ghost)
        payload = protocol.encode_report_batch(protocol.ReportBatch(reports=[report]))
    async with running_janitor(nats_url, database_url, docker, ghost) as janitor:
        assert janitor.sources.js is not None
        await publish(
            janitor.sources.js, subject, payload, msg_id="r1", stream=names.REPORTS_STREAM
        )
        held = await janitor.turn(30)
        assert held.ok and held.actions == []
        await janitor.sources.js.purge_stream(names.REPORTS_STREAM)  # the scheduler took it
        report2 = await janitor.turn(30)
    assert [a.action for a in report2.actions] == ["mark_lost"]


# -- re-offers and retention ------------------------------------------------------------------


async def test_a_job_left_queued_without_an_offer_is_offered_again_once(
    nats_url: str, database_url: str, docker: aiodocker.Docker, db: Db
) -> None:
    job_id, fresh = uuid7(), uuid7()
    await db.run(job_id, submit(), ago_s=1200)  # no outbox relay runs: its offer never went out
    await db.run(fresh, submit())
    async with running_janitor(nats_url, database_url, docker, scoped_orchestrator_id()) as janitor:
        first = await janitor.turn(30)
        js = janitor.sources.js
        assert js is not None
        info = await js.stream_info(names.OFFERS_STREAM)
        assert info.state.messages == 1
        msg = await js.get_msg(names.OFFERS_STREAM, seq=info.state.first_seq)
        offer = decode_work_offer(msg.data or b"")
        # The consumer has an offer waiting now: no second one.
        second = await janitor.turn(30)
    assert [(a.action, a.outcome) for a in first.actions] == [("reoffer", "done")]
    assert (offer.job_id, offer.attempt, offer.queue) == (job_id, 1, "default")
    assert msg.headers and msg.headers[names.MSG_ID] == names.offer_msg_id(job_id, 1)
    assert second.actions == []


async def test_a_re_offer_puts_back_offer_subjects_an_earlier_version_took_out(
    nats_url: str, database_url: str, docker: aiodocker.Docker, db: Db
) -> None:
    job_id = uuid7()
    await db.run(job_id, submit(), ago_s=1200)  # no outbox relay runs: its offer never went out
    async with running_janitor(nats_url, database_url, docker, scoped_orchestrator_id()) as janitor:
        js = janitor.sources.js
        assert js is not None
        config = (await js.stream_info(names.EVENTS_STREAM)).config
        await js.update_stream(config.evolve(subjects=[names.EVENTS_SUBJECTS]))
        turn = await janitor.turn(30)
        info = await js.stream_info(names.OFFERS_STREAM)
    assert [(a.action, a.outcome) for a in turn.actions] == [("reoffer", "done")]
    assert info.config.subjects == [names.EVENTS_SUBJECTS, names.OFFERS_SUBJECTS]
    assert info.state.messages == 1


async def test_retention_removes_old_logs_and_job_rows_but_never_events(
    nats_url: str, database_url: str, docker: aiodocker.Docker, db: Db
) -> None:
    orch = scoped_orchestrator_id()
    old, recent, old_running = uuid7(), uuid7(), uuid7()
    finish = (submit(), ClaimJob(attempt=1, orchestrator=orch), started(1, orch))
    await db.run(old, *finish, ReportExit(attempt=1, exit_code=0), ago_s=3 * 86_400)
    await db.run(recent, *finish, ReportExit(attempt=1, exit_code=0), ago_s=3600)
    await db.run(old_running, *finish, ago_s=3 * 86_400)
    line = b'{"seq":1,"stream":"stdout","text":"hi","at":"2026-01-01T00:00:00Z","attempt":1}'
    await LogStore(db.pool).append([Chunk(j, 1, 1, line) for j in (old, recent, old_running)])
    await db.pool.execute(  # the lines were stored while the jobs ran, not now
        "UPDATE log_jobs l SET since = j.created_at FROM jobs j WHERE j.id = l.job_id"
    )
    old_events = await db.events(old)
    await put_heartbeat(nats_url, orch, [(old_running, 1)])  # alive: not this test's business
    async with running_janitor(
        nats_url,
        database_url,
        docker,
        orch,
        log_retention_s=86_400,
        job_retention_s=2 * 86_400,
        stuck_margin_s=1e9,
    ) as janitor:
        dry = await janitor.sweep(dry_run=True)
        report = await janitor.turn(30)
    assert dry.retention == {"jobs' log lines": 1, "job rows": 1}
    assert report.ok, report.lines()
    assert report.retention == {"log lines": 1, "job rows": 1}
    rows = {str(r["id"]) for r in await db.pool.fetch("SELECT id FROM jobs")}
    assert rows == {recent, old_running}
    logs = {str(r["job_id"]) for r in await db.pool.fetch("SELECT job_id FROM log_jobs")}
    assert logs == {recent, old_running}
    assert await db.events(old) == old_events  # the history stays whole
    await rebuild(db.pool)  # an operator's `dockyard db rebuild` does not bring it back
    assert {str(r["id"]) for r in await db.pool.fetch("SELECT id FROM jobs")} == rows


# -- several janitors, a killed one, an unreachable engine --------------------------------------


async def _messy_world(
    db: Db, leftovers: Leftovers, orch: str, engine: str, jobs: int = 3
) -> tuple[list[str], list[str], list[str]]:
    """Lost jobs, orphans of unknown jobs, finished jobs with ledger entries gone."""
    lost, orphans, gone = [], [], []
    for _ in range(jobs):
        job_id = uuid7()
        await db.run(
            job_id,
            submit(retry={"max_attempts": 2, "backoff_s": 0}),
            ClaimJob(attempt=1, orchestrator=orch),
            started(1, orch),
        )
        lost.append(job_id)
        orphan_job = uuid7()
        orphans.append(
            await leftovers.container(
                container_name(orphan_job, 1), labels(orphan_job, 1, orch), start=False
            )
        )
        finished = uuid7()
        await db.run(
            finished,
            submit(),
            ClaimJob(attempt=1, orchestrator=orch),
            record(finished, 1, orch, engine),
            started(1, orch),
            ReportExit(attempt=1, exit_code=0),
        )
        gone.append(finished)
    return lost, orphans, gone


async def test_two_janitors_at_once_take_turns_and_double_nothing(
    nats_url: str,
    database_url: str,
    docker: aiodocker.Docker,
    leftovers: Leftovers,
    db: Db,
    engine: str,
) -> None:
    orch = scoped_orchestrator_id()
    lost, orphans, gone = await _messy_world(db, leftovers, orch, engine)
    async with (
        running_janitor(nats_url, database_url, docker, orch) as a,
        running_janitor(nats_url, database_url, docker, orch) as b,
    ):
        first, second = await asyncio.gather(a.turn(30), b.turn(30))
    assert first.ok and second.ok, first.lines() + second.lines()
    one, other = sorted([first, second], key=lambda r: r.started_at)
    assert one.ended_at is not None and one.ended_at <= other.started_at, "sweeps overlapped"
    assert one.count("done") == 3 * len(lost)
    assert other.count("done") == 0
    for job_id in lost:
        events = await db.events(job_id)
        assert len(of_type(events, OrchestratorLost)) == 1
        assert len(of_type(events, RetryScheduled)) == 1
    for job_id in gone:
        assert len(of_type(await db.events(job_id), ResourceReleased)) == 1
    assert not [o for o in orphans if await leftovers.exists(o)]


async def test_janitor_sigkilled_mid_sweep_is_finished_by_the_next_one(
    nats_url: str,
    database_url: str,
    docker: aiodocker.Docker,
    leftovers: Leftovers,
    db: Db,
    engine: str,
) -> None:
    orch = scoped_orchestrator_id()
    job_id = uuid7()
    sidecars = [container_name(job_id, 1, f"s{i}") for i in range(24)]
    await db.run(
        job_id,
        submit(sidecars=[{"name": f"s{i}", "image": "busybox"} for i in range(24)]),
        ClaimJob(attempt=1, orchestrator=orch),
        *(record(job_id, 1, orch, engine, kind="sidecar", name=name) for name in sidecars),
        started(1, orch),
        ReportExit(attempt=1, exit_code=0),
    )
    for name in sidecars:
        await leftovers.container(name, labels(job_id, 1, orch))
    env = {
        **os.environ,
        "DOCKYARD_NATS_URL": nats_url,
        "DOCKYARD_DATABASE_URL": database_url,
        "DOCKYARD_LEASE_S": str(TEST_LEASE_S),
        "DOCKYARD_JANITOR_GRACE_S": "0",
        "DOCKYARD_JANITOR_SELECT": f"{names.LABEL_ORCHESTRATOR}={orch}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dockyard.janitor",
        "--once",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(left := await labelled_with(docker, orch)) == len(sidecars):
            assert time.monotonic() < deadline, "the janitor never started removing"
            await asyncio.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # mid-sweep: some removed, the rest not
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    left = await labelled_with(docker, orch)
    assert 0 < len(left) < len(sidecars), f"not killed mid-sweep: {len(left)} left"

    async with running_janitor(nats_url, database_url, docker, orch) as janitor:
        report = await janitor.turn(10)  # the dead one's lock went with its session
    assert report.ok, report.lines()
    assert await labelled_with(docker, orch) == []
    job = await db.job(job_id)
    assert job.resources == frozenset()
    released = Counter(e.name for e in of_type(await db.events(job_id), ResourceReleased))
    assert released == dict.fromkeys(sidecars, 1)  # each entry settled exactly once


class Switchable:
    """The real engine, or one that does not answer (a socket nobody listens on)."""

    def __init__(self, up: aiodocker.Docker, down: aiodocker.Docker) -> None:
        self.runtimes = {True: DockerRuntime(up), False: DockerRuntime(down)}
        self.engines = {True: engine_id_of(up), False: engine_id_of(down)}
        self.reachable = False

    async def engine_id(self) -> str:
        return await self.engines[self.reachable]()

    async def list_labelled(self, labels: Mapping[str, str | None]) -> list[Resource]:
        return await self.runtimes[self.reachable].list_labelled(labels)

    async def inspect_named(self, kind: EngineKind, name: str) -> Resource | None:
        return await self.runtimes[self.reachable].inspect_named(kind, name)

    async def remove(self, container_id: str) -> ReleaseHow:
        return await self.runtimes[self.reachable].remove(container_id)

    async def remove_network(self, name_or_id: str) -> ReleaseHow:
        return await self.runtimes[self.reachable].remove_network(name_or_id)

    async def stop(self, container_id: str, grace_s: float) -> None:
        await self.runtimes[self.reachable].stop(container_id, grace_s)


async def test_docker_unreachable_for_a_sweep_is_reported_and_retried_losing_nothing(
    nats_url: str,
    database_url: str,
    docker: aiodocker.Docker,
    leftovers: Leftovers,
    db: Db,
    engine: str,
) -> None:
    orch = scoped_orchestrator_id()
    lost, orphans, gone = await _messy_world(db, leftovers, orch, engine, jobs=1)
    dead = aiodocker.Docker(url="unix:///nonexistent/docker.sock")
    switch = Switchable(docker, dead)
    try:
        async with running_janitor(
            nats_url,
            database_url,
            docker,
            orch,
            runtime=cast(ContainerRuntime, switch),
            engine_id=switch.engine_id,
        ) as janitor:
            down = await janitor.turn(30)
            assert [f.step for f in down.failures] == ["observe.docker"]
            assert "Cannot connect to Docker" in down.failures[0].error
            # The global work went on: the silent orchestrator's job was requeued.
            assert [a.action for a in down.actions] == ["mark_lost"]
            # Nothing judged on the engine's silence: the orphan stays, the ledger too.
            assert await leftovers.exists(orphans[0])
            assert of_type(await db.events(gone[0]), ResourceReleased) == []
            switch.reachable = True
            up = await janitor.turn(30)
            metrics = janitor.metrics.render().decode()
    finally:
        await dead.close()
    assert up.ok, up.lines()
    assert sorted(a.action for a in up.actions) == ["remove_resource", "settle_entry"]
    assert not await leftovers.exists(orphans[0])
    [released] = of_type(await db.events(gone[0]), ResourceReleased)
    assert released.how == "gone"
    assert len(of_type(await db.events(lost[0]), OrchestratorLost)) == 1
    assert 'dockyard_janitor_step_failures_total{step="observe.docker"} 1.0' in metrics


async def test_dry_run_lists_what_it_would_do_and_changes_nothing(
    nats_url: str,
    database_url: str,
    docker: aiodocker.Docker,
    leftovers: Leftovers,
    db: Db,
    engine: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    orch = scoped_orchestrator_id()
    lost, orphans, gone = await _messy_world(db, leftovers, orch, engine, jobs=1)
    before = {j: await db.events(j) for j in lost + gone}
    for name, value in {
        "DOCKYARD_NATS_URL": nats_url,
        "DOCKYARD_DATABASE_URL": database_url,
        "DOCKYARD_LEASE_S": str(TEST_LEASE_S),
        "DOCKYARD_JANITOR_GRACE_S": "0",
        "DOCKYARD_JANITOR_SELECT": f"{names.LABEL_ORCHESTRATOR}={orch}",
    }.items():
        monkeypatch.setenv(name, value)
    from dockyard.config import load

    out = io.StringIO()
    report = await run_janitor(load(), dry_run=True, out=out)
    assert report is not None and report.dry_run
    printed = out.getvalue().splitlines()
    assert (
        f"would mark orchestrator {orch} lost for job {lost[0]} attempt 1 (silent 6 s)" in printed
    )
    assert any(line.startswith("would remove container dockyard-") for line in printed)
    assert any(line.startswith("would settle ledger entry container") for line in printed)
    assert await leftovers.exists(orphans[0])
    assert {j: await db.events(j) for j in lost + gone} == before


async def test_the_service_sweeps_on_its_interval_serves_metrics_and_stops_on_sigterm(
    nats_url: str, database_url: str, docker: aiodocker.Docker, leftovers: Leftovers
) -> None:
    orch = scoped_orchestrator_id()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DOCKYARD_NATS_URL": nats_url,
        "DOCKYARD_DATABASE_URL": database_url,
        "DOCKYARD_LEASE_S": str(TEST_LEASE_S),
        "DOCKYARD_JANITOR_INTERVAL_S": "1",
        "DOCKYARD_JANITOR_GRACE_S": "0",
        "DOCKYARD_JANITOR_SELECT": f"{names.LABEL_ORCHESTRATOR}={orch}",
        "DOCKYARD_JANITOR_METRICS_LISTEN": f"127.0.0.1:{port}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dockyard.janitor",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        orphan_job = uuid7()
        orphan = await leftovers.container(
            container_name(orphan_job, 1), labels(orphan_job, 1, orch), start=False
        )
        metrics = ""
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            # Until the orphan is removed and a later sweep has run too (the interval works).
            while 'dockyard_janitor_removed_total{kind="container"} 1.0' not in metrics or (
                _sample(metrics, 'dockyard_janitor_sweeps_total{outcome="ok"}') < 2
            ):
                assert time.monotonic() < deadline, metrics
                await asyncio.sleep(0.2)
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as answer:
                        metrics = await answer.text()
        assert not await leftovers.exists(orphan)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    logged = (await process.stderr.read()).decode()
    assert '"event":"janitor.remove_resource"' in logged
    assert '"event":"janitor.stopped"' in logged


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_open_intents_are_an_index_lookup_each_whatever_the_statistics(db: Db) -> None:
    """Each sweep asks which intents were never released. Before the events table was
    analysed, PostgreSQL turned a NOT EXISTS into an anti join over a materialised scan of
    every event (minutes a sweep on half a million events); each intent's check must stay a
    lookup of its own job's events, and the answer the unreleased intents."""
    intent = (
        "INSERT INTO events (job_id, version, event_id, type, data)"
        " SELECT ('00000000-0000-7000-8000-' || lpad(i::text, 12, '0'))::uuid, $2,"
        " gen_random_uuid(), $1, jsonb_build_object('engine', 'e-1', 'kind', 'container',"
        " 'name', 'c-' || i, 'attempt', 1) FROM generate_series(1, $3) i"
    )
    async with db.pool.acquire() as conn:
        await conn.execute(intent, "resource_intended", 1, 3000)
        await conn.execute(intent, "resource_released", 2, 2990)  # the last 10 stay open
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE open_intents (bigint, text, int) AS {queries._OPEN_INTENTS}")
        try:
            rows = await conn.fetch("EXPLAIN EXECUTE open_intents (0, 'e-1', 1000)")
            plan = "\n".join(row[0] for row in rows)
            assert "Anti Join" not in plan and "SubPlan" in plan, plan
        finally:
            await conn.execute("DEALLOCATE open_intents")
            await conn.execute("RESET plan_cache_mode")
    found = await queries.open_intents(db.pool, "e-1", 0)
    assert [job_id[-4:] for _, job_id in found] == [f"{n:04d}" for n in range(2991, 3001)]


async def _pages_read(conn: Any, statement: str, *args: object) -> int:
    report = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", *args)
    top = msgspec.json.decode(report)[0]["Plan"]
    return int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])


async def test_retention_sweeps_read_what_they_purge_not_everything_retained(db: Db) -> None:
    """Every sweep looks for job rows and logs past retention: through the finished-at and
    first-stored indexes, not a scan of every job (a cost that grew with the table)."""
    now = datetime.now(UTC)
    async with db.pool.acquire() as conn:
        await conn.execute(  # 20,000 finished jobs with logs; the oldest 10 past retention
            "INSERT INTO jobs (id, tenant, status, queue, attempt, version, created_at,"
            " finished_at, view) SELECT gen_random_uuid(), 'acme', 'succeeded', 'default', 1,"
            " 7, $1::timestamptz - make_interval(mins => i),"
            " $1::timestamptz - make_interval(mins => i), '{}'"
            " FROM generate_series(1, 20000) i",
            now,
        )
        await conn.execute(
            "INSERT INTO log_jobs (job_id, max_seq, lines, bytes, since)"
            " SELECT id, 1, 1, 1, created_at FROM jobs"
        )
        await conn.execute("ANALYZE jobs, log_jobs")  # as autovacuum soon would
        cutoff = now - timedelta(minutes=19_990)
        undone = conn.transaction()  # EXPLAIN ANALYZE runs the statements
        await undone.start()
        try:
            logs = await _pages_read(conn, log_store_sql._PURGEABLE_LOGS, cutoff, 100)
            await conn.execute("DELETE FROM log_jobs")
            rows = await _pages_read(conn, queries._PURGE_JOBS, ["succeeded"], cutoff, 1000)
        finally:
            await undone.rollback()
        assert logs < 100 and rows < 250, (logs, rows)  # a scan: 326 and 418 here
