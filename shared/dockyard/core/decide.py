"""`decide(job, command, ctx, new_id) -> events`: what may happen next, without I/O.

Commands that repeat what already happened give no events (so a redelivered report is harmless);
commands that cannot apply raise the core's typed errors.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import singledispatch
from typing import TypedDict

from msgspec.structs import replace

from dockyard.core.commands import (
    ClaimJob,
    Command,
    Context,
    EnqueueDue,
    FailUndeliverable,
    MarkOrchestratorLost,
    RecordResource,
    ReleaseResource,
    ReportExit,
    ReportStarted,
    ReportUsage,
    RequestCancel,
    SubmitJob,
)
from dockyard.core.errors import (
    AlreadyFinished,
    ForeignResource,
    IllegalTransition,
    NotTheHolder,
    StaleAttempt,
    UnknownJob,
)
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
    Metadata,
    OrchestratorLost,
    ResourceIntended,
    ResourceKind,
    ResourceReleased,
    RetryScheduled,
    ScheduleFired,
    UsageRecorded,
)
from dockyard.core.reasons import Reason
from dockyard.core.resource_names import is_attempt_name
from dockyard.core.retry import backoff_s, should_retry
from dockyard.core.spec import JobSpec
from dockyard.core.state import ACTIVE, Job, evolve, resource_key

NewId = Callable[[], str]


class _Base(TypedDict):
    event_id: str
    job_id: str
    at: datetime
    meta: Metadata


class _Maker:
    """Stamps the common fields on every event one decision makes.

    Events stay in their job's trace: without a trace context of the command's own (a span of
    the service that sent it), they carry the job's, as its JobSubmitted recorded it.
    """

    def __init__(self, ctx: Context, new_id: NewId, job: Job | None = None) -> None:
        self.ctx = ctx
        self.new_id = new_id
        meta = ctx.meta
        if meta.traceparent is None and job is not None and job.traceparent is not None:
            meta = replace(meta, traceparent=job.traceparent, tracestate=job.tracestate)
        self.meta = meta

    def base(self) -> _Base:
        return {
            "event_id": self.new_id(),
            "job_id": self.ctx.job_id,
            "at": self.ctx.now,
            "meta": self.meta,
        }


def decide(job: Job | None, command: Command, ctx: Context, new_id: NewId) -> list[Event]:
    if isinstance(command, SubmitJob):
        return [] if job is not None else _submit(command, _Maker(ctx, new_id))
    if job is None:
        raise UnknownJob(ctx.job_id)
    return _decide(command, job, _Maker(ctx, new_id, job))


def _submit(cmd: SubmitJob, m: _Maker) -> list[Event]:
    events: list[Event] = [JobSubmitted(**m.base(), tenant=cmd.tenant, spec=cmd.spec)]
    if cmd.schedule is not None and cmd.fire_time is not None:
        events.append(ScheduleFired(**m.base(), schedule=cmd.schedule, fire_time=cmd.fire_time))
    run_at = cmd.spec.run_at
    if run_at is not None and run_at > m.ctx.now:
        events.append(JobScheduled(**m.base(), due_at=run_at))
    else:
        events.append(
            JobQueued(**m.base(), attempt=1, queue=cmd.spec.queue, egress=_egress(cmd.spec))
        )
    return events


@singledispatch
def _decide(command: Command, job: Job, m: _Maker) -> list[Event]:  # pragma: no cover
    raise TypeError(f"no decision for {type(command).__name__}")


@_decide.register
def _(cmd: EnqueueDue, job: Job, m: _Maker) -> list[Event]:
    if job.status != "scheduled" or (job.due_at is not None and job.due_at > m.ctx.now):
        return []
    return [
        JobQueued(**m.base(), attempt=job.attempt, queue=job.spec.queue, egress=_egress(job.spec))
    ]


def _egress(spec: JobSpec) -> bool:
    return spec.effective_network == "egress"


@_decide.register
def _(cmd: ClaimJob, job: Job, m: _Maker) -> list[Event]:
    _fence(job, cmd.attempt)
    for r in cmd.resources:  # the claim as a whole, or nothing of it
        _require_own_name(job, cmd.attempt, r.kind, r.name)
    claimed: list[Event] = []
    if not (job.status in ACTIVE and job.orchestrator == cmd.orchestrator):
        # (otherwise the same orchestrator asks again: its claim stands)
        if job.status != "queued":
            raise IllegalTransition(job.id, job.status, "job_claimed", "the job is not queued")
        claimed = [JobClaimed(**m.base(), attempt=cmd.attempt, orchestrator=cmd.orchestrator)]
    intended = [
        ResourceIntended(
            **m.base(),
            attempt=cmd.attempt,
            kind=r.kind,
            name=r.name,
            orchestrator=cmd.orchestrator,
            engine=r.engine,
        )
        for r in cmd.resources
        if resource_key(r.kind, r.name, cmd.attempt) not in job.resources
    ]
    return claimed + intended


@_decide.register
def _(cmd: RecordResource, job: Job, m: _Maker) -> list[Event]:
    _fence(job, cmd.attempt)
    _require_own_name(job, cmd.attempt, cmd.kind, cmd.name)
    if resource_key(cmd.kind, cmd.name, cmd.attempt) in job.resources:
        return []
    _require_active(job, "resource_intended")
    return [
        ResourceIntended(
            **m.base(),
            attempt=cmd.attempt,
            kind=cmd.kind,
            name=cmd.name,
            orchestrator=cmd.orchestrator,
            engine=cmd.engine,
        )
    ]


@_decide.register
def _(cmd: ReleaseResource, job: Job, m: _Maker) -> list[Event]:
    if resource_key(cmd.kind, cmd.name, cmd.attempt) not in job.resources:
        return []
    return [
        ResourceReleased(**m.base(), attempt=cmd.attempt, kind=cmd.kind, name=cmd.name, how=cmd.how)
    ]


@_decide.register
def _(cmd: ReportStarted, job: Job, m: _Maker) -> list[Event]:
    _fence(job, cmd.attempt)
    if job.status == "running" or job.finished:
        return []  # already recorded, or the exit report overtook this one
    _require_active(job, "container_started")
    _require_holder(job, cmd.attempt, cmd.orchestrator)
    return [
        ContainerStarted(
            **m.base(),
            attempt=cmd.attempt,
            container_id=cmd.container_id,
            orchestrator=cmd.orchestrator,
        )
    ]


@_decide.register
def _(cmd: ReportExit, job: Job, m: _Maker) -> list[Event]:
    _fence(job, cmd.attempt)
    if job.finished:
        return []
    _require_active(job, "job_exited")
    if cmd.orchestrator is not None:  # None: the janitor's verdict, appended by itself
        _require_holder(job, cmd.attempt, cmd.orchestrator)
    implied = _implied_start(job, cmd, m)
    if implied:
        job = evolve(job, implied[0])
    return implied + _exit_events(job, cmd, m)


def _implied_start(job: Job, cmd: ReportExit, m: _Maker) -> list[Event]:
    """The start an exit report vouches for when its own start report is not recorded.

    An orchestrator stores its start report before its exit report, but on a cluster the start
    can reach the scheduler second (redelivered after a failed attempt to record it) or, in a
    consumer leader change, not at all; the exit says the container ran, so the history still
    shows one start per attempt, at the time the container started.
    """
    if job.status != "starting" or cmd.started_at is None or cmd.container_id is None:
        return []
    if cmd.orchestrator is None:
        return []
    base = m.base()
    base["at"] = cmd.started_at
    return [
        ContainerStarted(
            **base,
            attempt=cmd.attempt,
            container_id=cmd.container_id,
            orchestrator=cmd.orchestrator,
        )
    ]


def _exit_events(job: Job, cmd: ReportExit, m: _Maker) -> list[Event]:
    if cmd.reason is None and cmd.exit_code == 0:
        return [
            JobSucceeded(
                **m.base(),
                attempt=cmd.attempt,
                exit_code=0,
                duration_s=cmd.duration_s,
                started_at=cmd.started_at,
                usage=cmd.usage,
                limits_hit=cmd.limits_hit,
            )
        ]
    reason: Reason = cmd.reason or "exit_code"
    error = cmd.error or f"the command exited with code {cmd.exit_code}"
    if job.cancel_requested:
        reason = "cancelled"
    return _end_attempt(job, m, reason, error, cmd.exit_code, cmd.duration_s, cmd)


@_decide.register
def _(cmd: ReportUsage, job: Job, m: _Maker) -> list[Event]:
    # A late or early sample is dropped, not refused: the exit carries the final figures.
    if cmd.attempt != job.attempt or job.status != "running":
        return []
    _require_holder(job, cmd.attempt, cmd.orchestrator)
    if cmd.usage == job.usage and set(cmd.limits_hit) <= set(job.limits_hit):
        return []
    return [
        UsageRecorded(**m.base(), attempt=cmd.attempt, usage=cmd.usage, limits_hit=cmd.limits_hit)
    ]


@_decide.register
def _(cmd: RequestCancel, job: Job, m: _Maker) -> list[Event]:
    if job.finished:
        raise AlreadyFinished(job.id, job.status)
    if job.cancel_requested:
        return []
    events: list[Event] = [CancelRequested(**m.base(), requested_by=cmd.requested_by)]
    if job.status in ("scheduled", "queued"):
        error = f"cancelled by {cmd.requested_by} before it started"
        events.append(JobCancelled(**m.base(), attempt=job.attempt, error=error))
    return events


@_decide.register
def _(cmd: MarkOrchestratorLost, job: Job, m: _Maker) -> list[Event]:
    if cmd.attempt != job.attempt or job.orchestrator != cmd.orchestrator:
        return []  # the job moved on already: a late verdict must not double anything
    if job.status not in ACTIVE:
        return []
    lost = OrchestratorLost(
        **m.base(), attempt=cmd.attempt, orchestrator=cmd.orchestrator, silent_s=cmd.silent_s
    )
    reason: Reason = "cancelled" if job.cancel_requested else "orchestrator_lost"
    error = (
        f"orchestrator {cmd.orchestrator} stopped answering for {cmd.silent_s:.0f} s "
        f"while running attempt {cmd.attempt}"
    )
    return [lost, *_end_attempt(job, m, reason, error, None, 0.0, None)]


@_decide.register
def _(cmd: FailUndeliverable, job: Job, m: _Maker) -> list[Event]:
    if job.finished:
        return []
    return [JobFailed(**m.base(), attempt=job.attempt, reason="container_error", error=cmd.error)]


def _end_attempt(
    job: Job,
    m: _Maker,
    reason: Reason,
    error: str,
    exit_code: int | None,
    duration_s: float,
    exit_report: ReportExit | None,
) -> list[Event]:
    started_at = exit_report.started_at if exit_report else None
    usage = exit_report.usage if exit_report else None
    hits = exit_report.limits_hit if exit_report else ()
    attempt = job.attempt
    if should_retry(job.spec.retry, job.attempt, reason, exit_code):
        delay = backoff_s(job.spec.retry, job.attempt)
        return [
            RetryScheduled(
                **m.base(),
                attempt=attempt,
                next_attempt=job.attempt + 1,
                reason=reason,
                error=error,
                exit_code=exit_code,
                due_at=m.ctx.now + timedelta(seconds=delay),
                backoff_s=delay,
                usage=usage,
                limits_hit=hits,
            )
        ]
    if reason == "cancelled":
        return [
            JobCancelled(
                **m.base(),
                attempt=attempt,
                error=error,
                exit_code=exit_code,
                started_at=started_at,
                usage=usage,
                limits_hit=hits,
            )
        ]
    if reason == "timed_out":
        return [
            JobTimedOut(
                **m.base(),
                attempt=attempt,
                error=error,
                duration_s=duration_s,
                exit_code=exit_code,
                started_at=started_at,
                usage=usage,
                limits_hit=hits,
            )
        ]
    return [
        JobFailed(
            **m.base(),
            attempt=attempt,
            reason=reason,
            error=error,
            exit_code=exit_code,
            started_at=started_at,
            usage=usage,
            limits_hit=hits,
        )
    ]


def _require_own_name(job: Job, attempt: int, kind: ResourceKind, name: str) -> None:
    """The ledger holds only names Dockyard gives this attempt: the janitor removes what it
    holds, so a forged claim or report must not put anything else there."""
    sidecars = (s.name for s in job.spec.sidecars)
    if not is_attempt_name(kind, name, job.id, attempt, sidecars):
        raise ForeignResource(job.id, attempt, kind, name)


def _require_holder(job: Job, attempt: int, orchestrator: str) -> None:
    """Only the orchestrator that claimed the attempt reports on it."""
    if job.orchestrator != orchestrator:
        raise NotTheHolder(job.id, attempt, orchestrator, job.orchestrator)


def _fence(job: Job, attempt: int) -> None:
    if attempt != job.attempt:
        raise StaleAttempt(job.id, attempt, job.attempt)


def _require_active(job: Job, what: str) -> None:
    if job.finished:
        raise AlreadyFinished(job.id, job.status)
    if job.status not in ACTIVE:
        raise IllegalTransition(job.id, job.status, what, "the attempt has not been claimed")
