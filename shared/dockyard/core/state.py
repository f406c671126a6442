"""The job as a value, and its life as a pure fold: `evolve(job, event) -> job`.

No clock, no I/O: every time comes from an event. An event whose id was already applied
changes nothing; an event that the status graph does not allow raises a typed error.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import singledispatch
from typing import Final, Literal, get_args

from msgspec import Struct
from msgspec.structs import replace

from dockyard.core.errors import IllegalTransition, StaleAttempt
from dockyard.core.events import (
    CancelRequested,
    ContainerStarted,
    Event,
    JobCancelled,
    JobClaimed,
    JobFailed,
    JobQueued,
    JobScheduled,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    OrchestratorLost,
    ResourceIntended,
    ResourceReleased,
    RetryScheduled,
    ScheduleFired,
    UsageRecorded,
    type_name,
)
from dockyard.core.reasons import Reason
from dockyard.core.spec import JobSpec
from dockyard.core.usage import Usage, merged

Status = Literal[
    "scheduled", "queued", "starting", "running", "succeeded", "failed", "timed_out", "cancelled"
]
STATUSES: Final[tuple[str, ...]] = get_args(Status)
TERMINAL: Final[frozenset[str]] = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
ACTIVE: Final[frozenset[str]] = frozenset({"starting", "running"})


class Job(Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    spec: JobSpec
    status: Status
    attempt: int
    created_at: datetime
    version: int
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    due_at: datetime | None = None
    exit_code: int | None = None
    reason: Reason | None = None
    error: str | None = None
    orchestrator: str | None = None
    container_id: str | None = None
    schedule: str | None = None
    cancel_requested: bool = False
    # The resource ledger: "kind:name@attempt" of everything created and not yet released.
    resources: frozenset[str] = frozenset()
    # Ids of the events folded in, so a redelivered event is a no-op.
    seen: frozenset[str] = frozenset()
    # The job's trace (its JobSubmitted's): events decided later for the job carry it too.
    traceparent: str | None = None
    tracestate: str | None = None
    # The last attempt's usage (None until its container starts) and the limits it reached.
    usage: Usage | None = None
    limits_hit: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def max_attempts(self) -> int:
        return self.spec.retry.max_attempts


def resource_key(kind: str, name: str, attempt: int) -> str:
    return f"{kind}:{name}@{attempt}"


def fold(events: Iterable[Event], job: Job | None = None) -> Job | None:
    """Replay a history: the job as these events leave it."""
    for event in events:
        job = evolve(job, event)
    return job


def evolve(job: Job | None, event: Event) -> Job:
    """Apply one event, or raise IllegalTransition / StaleAttempt."""
    if job is None:
        if not isinstance(event, JobSubmitted):
            raise IllegalTransition(event.job_id, None, type_name(type(event)), "no such job yet")
        return _submitted(event)
    if event.event_id in job.seen:
        return job
    if event.job_id != job.id:
        raise IllegalTransition(job.id, job.status, type_name(type(event)), "another job's event")
    changed = _apply(event, job)
    return replace(changed, version=job.version + 1, seen=job.seen | {event.event_id})


def _submitted(event: JobSubmitted) -> Job:
    return Job(
        id=event.job_id,
        tenant=event.tenant,
        spec=event.spec,
        status="scheduled",
        attempt=1,
        created_at=event.at,
        due_at=event.at,
        version=1,
        seen=frozenset({event.event_id}),
        traceparent=event.meta.traceparent,
        tracestate=event.meta.tracestate,
    )


def _require(job: Job, event: Event, allowed: frozenset[str] | set[str], why: str) -> None:
    if job.status not in allowed:
        raise IllegalTransition(job.id, job.status, type_name(type(event)), why)


def _fence(job: Job, attempt: int) -> None:
    if attempt != job.attempt:
        raise StaleAttempt(job.id, attempt, job.attempt)


@singledispatch
def _apply(event: Event, job: Job) -> Job:  # pragma: no cover - every type is registered
    raise TypeError(f"no transition for {type(event).__name__}")


@_apply.register
def _(event: JobSubmitted, job: Job) -> Job:
    raise IllegalTransition(job.id, job.status, "job_submitted", "the job exists already")


@_apply.register
def _(event: JobScheduled, job: Job) -> Job:
    _require(job, event, {"scheduled"}, "only a job not yet queued can wait")
    return replace(job, due_at=event.due_at)


@_apply.register
def _(event: ScheduleFired, job: Job) -> Job:
    _require(job, event, {"scheduled"}, "a schedule fires only a new job")
    return replace(job, schedule=event.schedule)


@_apply.register
def _(event: JobQueued, job: Job) -> Job:
    _require(job, event, {"scheduled"}, "only a scheduled job can be queued")
    _fence(job, event.attempt)
    return replace(job, status="queued", queued_at=event.at, due_at=None)


@_apply.register
def _(event: JobClaimed, job: Job) -> Job:
    _require(job, event, {"queued"}, "only a queued job can be claimed")
    _fence(job, event.attempt)
    return replace(job, status="starting", orchestrator=event.orchestrator)


@_apply.register
def _(event: ResourceIntended, job: Job) -> Job:
    _require(job, event, ACTIVE, "resources are made only while an attempt runs")
    _fence(job, event.attempt)
    return replace(job, resources=job.resources | {_key(event)})


@_apply.register
def _(event: ResourceReleased, job: Job) -> Job:
    key = _key(event)
    if key not in job.resources:
        raise IllegalTransition(job.id, job.status, "resource_released", f"{key} is not held")
    return replace(job, resources=job.resources - {key})


@_apply.register
def _(event: ContainerStarted, job: Job) -> Job:
    _require(job, event, {"starting"}, "only a starting job can start running")
    _fence(job, event.attempt)
    return replace(
        job,
        status="running",
        started_at=event.at,
        container_id=event.container_id,
        usage=Usage(),
        limits_hit=(),
    )


@_apply.register
def _(event: UsageRecorded, job: Job) -> Job:
    _require(job, event, {"running"}, "only a running attempt uses anything")
    _fence(job, event.attempt)
    return replace(job, usage=event.usage, limits_hit=merged(job.limits_hit, event.limits_hit))


@_apply.register
def _(event: JobSucceeded, job: Job) -> Job:
    _require(job, event, ACTIVE, "only a running attempt can succeed")
    _fence(job, event.attempt)
    return _used(
        _finish(job, event, "succeeded", None, None, event.exit_code, event.started_at), event
    )


@_apply.register
def _(event: JobFailed, job: Job) -> Job:
    # A job that never started fails too when it cannot be delivered (FailUndeliverable).
    _require(job, event, {"scheduled", "queued", *ACTIVE}, "a finished job cannot fail")
    _fence(job, event.attempt)
    return _used(
        _finish(job, event, "failed", event.reason, event.error, event.exit_code, event.started_at),
        event,
    )


@_apply.register
def _(event: JobTimedOut, job: Job) -> Job:
    _require(job, event, ACTIVE, "only a running attempt can time out")
    _fence(job, event.attempt)
    timed_out = _finish(
        job, event, "timed_out", "timed_out", event.error, event.exit_code, event.started_at
    )
    return _used(timed_out, event)


@_apply.register
def _(event: CancelRequested, job: Job) -> Job:
    _require(job, event, {"scheduled", "queued", *ACTIVE}, "a finished job cannot be cancelled")
    return replace(job, cancel_requested=True)


@_apply.register
def _(event: JobCancelled, job: Job) -> Job:
    _require(job, event, {"scheduled", "queued", *ACTIVE}, "a finished job cannot be cancelled")
    _fence(job, event.attempt)
    cancelled = _finish(
        job, event, "cancelled", "cancelled", event.error, event.exit_code, event.started_at
    )
    return _used(cancelled, event)


@_apply.register
def _(event: OrchestratorLost, job: Job) -> Job:
    _require(job, event, ACTIVE, "only a running attempt can lose its orchestrator")
    _fence(job, event.attempt)
    return replace(job, reason="orchestrator_lost", error=_lost_error(event))


@_apply.register
def _(event: RetryScheduled, job: Job) -> Job:
    _require(job, event, ACTIVE, "only a running attempt can be retried")
    _fence(job, event.attempt)
    if event.next_attempt != job.attempt + 1:
        raise IllegalTransition(job.id, job.status, "retry_scheduled", "attempts go up by one")
    return replace(
        _used(job, event),
        status="scheduled",
        attempt=event.next_attempt,
        due_at=event.due_at,
        reason=event.reason,
        error=event.error,
        exit_code=event.exit_code,
        orchestrator=None,
        container_id=None,
        started_at=None,
        queued_at=None,
    )


def _finish(
    job: Job,
    event: Event,
    status: Status,
    reason: Reason | None,
    error: str | None,
    exit_code: int | None,
    started_at: datetime | None,
) -> Job:
    return replace(
        job,
        status=status,
        reason=reason,
        error=error,
        exit_code=exit_code,
        finished_at=event.at,
        started_at=job.started_at or started_at,
    )


def _used(
    job: Job, event: JobSucceeded | JobFailed | JobTimedOut | JobCancelled | RetryScheduled
) -> Job:
    """The attempt's final figures, where its end carried them (earlier versions' did not)."""
    if event.usage is None and not event.limits_hit:
        return job
    return replace(
        job,
        usage=event.usage if event.usage is not None else job.usage,
        limits_hit=merged(job.limits_hit, event.limits_hit),
    )


def _key(event: ResourceIntended | ResourceReleased) -> str:
    return resource_key(event.kind, event.name, event.attempt)


def _lost_error(event: OrchestratorLost) -> str:
    return (
        f"orchestrator {event.orchestrator} stopped answering "
        f"({event.silent_s:.0f} s without a heartbeat) while running attempt {event.attempt}"
    )
