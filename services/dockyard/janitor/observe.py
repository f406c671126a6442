"""Reading the world for one sweep: PostgreSQL, the Docker engine, NATS — each part on its own.

A source that does not answer leaves its part of the `World` unknown (None, or absent) and
is reported as a failed step; the rules that need it then do nothing, so an unreachable
engine or bucket never looks like an empty one. Only the database is essential: without it
no job can be judged, and the sweep stops there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

import msgspec
import nats.errors
import nats.js.errors
from msgspec import Struct
from msgspec.structs import replace
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dockyard.bus import names
from dockyard.bus.errors import BusError, translate, translated
from dockyard.bus.names import LABEL_DEPLOYMENT, LABEL_JOB
from dockyard.bus.protocol import decode_heartbeat
from dockyard.core.errors import Rejected
from dockyard.janitor import queries
from dockyard.janitor.bucket_watch import STANDALONE, BucketWatch
from dockyard.janitor.config import JanitorConfig
from dockyard.janitor.facts import JobFacts, Orchestrator, World, job_facts
from dockyard.janitor.ledger_watch import LedgerWatch
from dockyard.janitor.plan import Policy, verdict_candidates
from dockyard.janitor.report import StepFailure
from dockyard.runtime.ports import (
    ContainerRuntime,
    ContainerRuntimeError,
    Resource,
    RuntimeUnavailable,
)
from dockyard.store.pool import Pool

log = logging.getLogger("dockyard.janitor")

EngineId = Callable[[], Awaitable[str]]
T = TypeVar("T")

_ABSENT = (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError)


class Sources(Struct, frozen=True, kw_only=True):
    """What a sweep reads and writes; None for a part this janitor does without."""

    pool: Pool
    runtime: ContainerRuntime | None = None
    engine_id: EngineId | None = None
    js: JetStreamContext | None = None
    # The installation's id: only containers and networks carrying it are this janitor's to
    # judge (None: every Dockyard-labelled one, for tests and tools).
    deployment: str | None = None


def engine_scope(config: JanitorConfig, deployment: str | None) -> dict[str, str | None]:
    """The labels every container and network this janitor judges carries (any value if
    None): its `select`, and its installation's id when it has one."""
    scope: dict[str, str | None] = dict(config.select)
    if deployment is not None:
        scope[LABEL_DEPLOYMENT] = deployment
    return scope


class Observer:
    def __init__(self, sources: Sources, config: JanitorConfig, policy: Policy) -> None:
        self._sources = sources
        self._config = config
        self._policy = policy
        self._engine: str | None = None
        self.ledger = LedgerWatch()
        # The last heartbeat seen from each orchestrator: how long a silent one has been silent.
        self._last_beat: dict[str, datetime] = {}
        self._bucket = BucketWatch(config.lease_s)

    async def observe(self, now: datetime, failures: list[StepFailure]) -> World:
        """One sweep's World; raises StoreUnavailable when the database cannot be read."""
        pool = self._sources.pool
        wanted: set[str] = set(await queries.active_job_ids(pool))
        reoffer_before = now - timedelta(seconds=self._config.reoffer_after_s)
        wanted |= set(await queries.queued_since(pool, reoffer_before))
        docker = await self._step("observe.docker", failures, self._docker())
        engine = self._engine if docker is not None else None
        if docker is not None:
            wanted |= {r.labels[LABEL_JOB] for r in docker if r.labels.get(LABEL_JOB)}
        if engine is not None:
            found = await self._step("observe.ledger", failures, self.ledger.refresh(pool, engine))
            wanted |= found or set()
        jobs, unknown = await self._jobs(wanted, failures)
        world = World(now=now, jobs=jobs, unknown_jobs=unknown, engine=engine, docker=docker)
        world = replace(world, orchestrators=await self._orchestrators(world, failures))
        world = replace(world, idle_queues=await self._idle_queues(world, failures))
        pending = await self._step("observe.reports", failures, self._pending_reports(world))
        return replace(world, pending_reports=pending)

    def forget_settled(self, world: World) -> None:
        """Drop ledger candidates a fold shows have nothing open on this engine."""
        if world.engine is None:
            return  # the engine was not seen: nothing can be told about its entries
        for job_id in list(self.ledger.jobs):
            facts = world.jobs.get(job_id)
            if facts is not None and all(e.engine != world.engine for e in facts.ledger):
                self.ledger.settled(job_id)

    async def _step(self, step: str, failures: list[StepFailure], work: Awaitable[T]) -> T | None:
        try:
            return await work
        except (ContainerRuntimeError, BusError, OSError) as exc:
            failures.append(StepFailure(step, str(exc)))
            log.warning(
                "janitor.step_failed step=%s error=%s",
                step,
                exc,
                extra={"event": "janitor.step_failed", "step": step},
            )
            return None

    async def _docker(self) -> tuple[Resource, ...]:
        runtime, engine_id = self._sources.runtime, self._sources.engine_id
        if runtime is None or engine_id is None:
            raise RuntimeUnavailable("this janitor has no Docker engine")
        if self._engine is None:
            self._engine = await engine_id()
        labels = {**engine_scope(self._config, self._sources.deployment), LABEL_JOB: None}
        return tuple(await runtime.list_labelled(labels))

    async def _jobs(
        self, wanted: set[str], failures: list[StepFailure]
    ) -> tuple[dict[str, JobFacts], frozenset[str]]:
        ids, not_ids = queries.split_ids(wanted)
        found = await queries.histories(self._sources.pool, ids)
        jobs: dict[str, JobFacts] = {}
        for job_id, events in found.items():
            try:
                facts = job_facts(events)
            except Rejected as exc:  # a history the core cannot fold: leave that job alone
                failures.append(StepFailure("observe.jobs", f"job {job_id}: {exc}"))
                continue
            if facts is not None:
                jobs[job_id] = facts
        # Unknown: not a job id at all, or a job id without history. (A label spelling a
        # known job's id differently is neither: the planner leaves it alone.)
        unknown = not_ids | {i for i in wanted - not_ids if queries.canonical(i) not in found}
        return jobs, frozenset(unknown)

    async def _orchestrators(
        self, world: World, failures: list[StepFailure]
    ) -> dict[str, Orchestrator]:
        holders = {
            f.job.orchestrator
            for f in world.jobs.values()
            if f.job.status in ("starting", "running") and f.job.orchestrator
        }
        js = self._sources.js
        if not holders or js is None:
            return {}
        why_not = self._bucket.why_not(await _bucket_leader(js), time.monotonic())
        if why_not is not None:  # no verdict: every key may have aged out unwritten
            failures.append(StepFailure("observe.heartbeats", why_not))
            return {}
        try:
            with translated():
                kv = await js.key_value(names.HEARTBEATS_BUCKET)
            seen: dict[str, Orchestrator] = {}
            for orchestrator in sorted(holders):
                seen[orchestrator] = await self._heartbeat(kv, orchestrator, world.now)
            return seen
        except BusError as exc:
            failures.append(StepFailure("observe.heartbeats", str(exc)))
            return {}

    async def _heartbeat(self, kv: KeyValue, orchestrator: str, now: datetime) -> Orchestrator:
        try:
            # Not under `translated`: nats-py's KeyValueError lacks the `code` it reads.
            entry = await kv.get(names.heartbeat_key(orchestrator))
        except _ABSENT:
            last = self._last_beat.get(orchestrator)
            silent_s = self._config.lease_s
            if last is not None:
                silent_s = max(silent_s, (now - last).total_seconds())
            return Orchestrator(alive=False, silent_s=silent_s)
        except (nats.errors.Error, OSError) as exc:
            raise translate(exc) from exc
        try:
            self._last_beat[orchestrator] = decode_heartbeat(entry.value or b"").sent_at
        except msgspec.DecodeError:
            self._last_beat[orchestrator] = now
        return Orchestrator(alive=True)

    async def _idle_queues(self, world: World, failures: list[StepFailure]) -> frozenset[str]:
        queues = {f.job.spec.queue for f in world.jobs.values() if f.job.status == "queued"}
        js = self._sources.js
        if not queues or js is None:
            return frozenset()
        idle: set[str] = set()
        for queue in sorted(queues):
            try:
                with translated():
                    info = await js.consumer_info(names.OFFERS_STREAM, names.offer_durable(queue))
            except BusError as exc:
                if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                    failures.append(StepFailure("observe.queues", f"queue {queue}: {exc}"))
                continue  # no consumer: nobody serves the queue, its offers wait in the stream
            if info.num_pending == 0:
                idle.add(queue)
        return frozenset(idle)

    async def _oldest_report(
        self, js: JetStreamContext, subject: str, now: datetime
    ) -> datetime | None:
        """When the oldest report still waiting on `subject` was stored; None if none waits."""
        try:
            with translated():
                msg = await js.get_msg(names.REPORTS_STREAM, seq=1, subject=subject, next=True)
        except BusError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise
        return msg.time or now

    async def _pending_reports(self, world: World) -> dict[str, float] | None:
        candidates = verdict_candidates(world, self._policy)
        if not candidates:
            return {}
        js = self._sources.js
        if js is None:
            return None
        waiting: dict[str, float] = {}
        by_orchestrator: dict[str, datetime | None] = {}
        for job_id in sorted(candidates):
            sent = await self._oldest_report(js, names.report_subject(job_id), world.now)
            orchestrator = world.jobs[job_id].job.orchestrator if job_id in world.jobs else None
            if orchestrator is not None:
                # Its reports go in batches on its own subject: one waiting there may be this
                # job's, so the job waits for it (judged at the next sweep).
                if orchestrator not in by_orchestrator:
                    subject = names.report_batch_subject(orchestrator)
                    by_orchestrator[orchestrator] = await self._oldest_report(
                        js, subject, world.now
                    )
                batched = by_orchestrator[orchestrator]
                if batched is not None and (sent is None or batched < sent):
                    sent = batched
            if sent is not None:
                waiting[job_id] = max(0.0, (world.now - sent).total_seconds())
        return waiting


async def _bucket_leader(js: JetStreamContext) -> str | None:
    """The server leading the heartbeat bucket's stream; None if it has none or cannot say."""
    try:
        with translated():
            info = await js.stream_info(f"KV_{names.HEARTBEATS_BUCKET}")
    except BusError:
        return None
    if info.cluster is None:
        return STANDALONE
    return info.cluster.leader or None
