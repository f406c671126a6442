"""Firing schedules: each due schedule makes the job of its latest due fire time.

The job's id is derived from (tenant, schedule, fire time), so however many schedulers fire
the same time, and however often a crashed one retries it, one job exists for it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from dockyard.core import Rejected, SpecError, SubmitJob, fire_job_id
from dockyard.core.deliverable import spec_problem
from dockyard.core.spec import JobSpec
from dockyard.core.spec_bounds import BUILT_IN, SpecBounds
from dockyard.core.tenant_limits import TenantPolicies, check_tenant_spec
from dockyard.handling.execute import Clock, execute, utc_now
from dockyard.process.cancelling import raise_if_cancelled
from dockyard.scheduler.schedule_store import ScheduleStore
from dockyard.scheduler.schedules import (
    Schedule,
    fire_key,
    fired_spec,
    latest_fire,
    next_fire_after,
)
from dockyard.scheduler.secret_sealing import fired_secrets
from dockyard.sealing import KeyRing, SealError
from dockyard.store.ports import ConcurrencyError, EventStore, StoreUnavailable
from dockyard.telemetry import tracing

log = logging.getLogger("dockyard.scheduler.firing")

TICK_S = 0.5
BATCH = 100


async def fire_due(
    store: EventStore,
    schedules: ScheduleStore,
    clock: Clock = utc_now,
    bounds: SpecBounds = BUILT_IN,
    secrets: KeyRing | None = None,
    tenants: TenantPolicies | None = None,
) -> int:
    """Make the job of every due schedule; return how many jobs this call created."""
    made = 0
    now = clock()
    for schedule in await schedules.due(now, BATCH):
        made += await _fire(store, schedules, schedule, clock, bounds, secrets, tenants)
    return made


def _problem(
    schedule: Schedule, bounds: SpecBounds, tenants: TenantPolicies | None = None
) -> str | None:
    try:
        fired_spec(schedule, bounds)
    except SpecError as error:
        return f"its spec asks for more than allowed: {error.field}: {error.message}"
    if tenants is not None:
        # DOCKYARD_TENANT_LIMITS as it is now: an entry changed since the schedule was made.
        try:
            check_tenant_spec(schedule.job, tenants.of(schedule.tenant), prefix="job.")
        except SpecError as error:
            return f"its tenant may not ask for this: {error.field}: {error.message}"
    return spec_problem(schedule.job)


async def _fire(
    store: EventStore,
    schedules: ScheduleStore,
    schedule: Schedule,
    clock: Clock,
    bounds: SpecBounds,
    secrets: KeyRing | None = None,
    tenants: TenantPolicies | None = None,
) -> int:
    now = clock()
    fire_time = latest_fire(schedule, now)
    made = 0
    due = fire_time is not None and (schedule.last_fire is None or fire_time > schedule.last_fire)
    if due and (problem := _problem(schedule, bounds, tenants)) is not None:
        # Stored by an earlier version under looser rules: its jobs could not be delivered.
        _not_fired(schedule, problem)
    elif due and fire_time is not None:
        job_id = fire_job_id(schedule.tenant, schedule.name, fire_key(fire_time))
        spec = _job_spec(schedule, bounds, secrets, job_id)
        made = 0 if spec is None else await _submit(store, schedule, spec, job_id, fire_time, clock)
    await schedules.advance(
        schedule, fire_time or schedule.next_fire, next_fire_after(schedule, now)
    )
    return made


def _job_spec(
    schedule: Schedule, bounds: SpecBounds, secrets: KeyRing | None, job_id: str
) -> JobSpec | None:
    """The fired job's spec, its secrets sealed for it; None (logged) when they do not open,
    sealed with a key this scheduler no longer has."""
    spec = fired_spec(schedule, bounds)
    try:
        return fired_secrets(spec, secrets, schedule.tenant, schedule.name, job_id)
    except SealError as error:
        _not_fired(schedule, str(error))
        return None


def _not_fired(schedule: Schedule, problem: str) -> None:
    log.error(
        "schedule.not_fired name=%s tenant=%s why=%s",
        schedule.name,
        schedule.tenant,
        problem,
        extra={"event": "schedule.not_fired", "tenant": schedule.tenant},
    )


async def _submit(
    store: EventStore,
    schedule: Schedule,
    spec: JobSpec,
    job_id: str,
    fire_time: datetime,
    clock: Clock,
) -> int:
    command = SubmitJob(
        tenant=schedule.tenant, spec=spec, schedule=schedule.name, fire_time=fire_time
    )
    try:
        with tracing.start_trace(
            tracing.SCHEDULER,
            "dockyard.schedule.fire",
            attributes={tracing.JOB: job_id, "dockyard.schedule": schedule.name},
        ) as span:
            meta = tracing.metadata_of(span)
            outcome = await execute(store, job_id, command, meta=meta, clock=clock)
    except (Rejected, ConcurrencyError) as error:
        log.warning("schedule.fire_failed name=%s error=%s", schedule.name, error)
        return 0
    made = int(bool(outcome.events))
    if made:
        log.info(
            "schedule.fired name=%s job=%s fire_time=%s",
            schedule.name,
            job_id,
            fire_time.isoformat(),
            extra={"event": "schedule.fired", "job": job_id},
        )
    return made


async def run_firing(
    store: EventStore,
    schedules: ScheduleStore,
    clock: Clock = utc_now,
    tick_s: float = TICK_S,
    bounds: SpecBounds = BUILT_IN,
    secrets: KeyRing | None = None,
    tenants: TenantPolicies | None = None,
) -> None:
    while True:
        raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
        try:
            await fire_due(store, schedules, clock, bounds, secrets, tenants)
        except StoreUnavailable as error:
            log.warning("schedule.store_unavailable error=%s", error)
        except Exception:  # a loop of a long-running service must outlive any one tick
            log.exception("schedule.tick_failed", extra={"event": "schedule.tick_failed"})
        await asyncio.sleep(tick_s)
