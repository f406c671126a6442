"""Schedules, pure: what a schedule is, when it fires, and the job each firing makes.

Missed fire times (the scheduler was down) collapse into one: the latest due fire time.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from croniter import croniter
from msgspec import Meta, Struct
from msgspec.structs import replace

from dockyard.core.spec import (
    JobSpec,
    SpecError,
    Timestamp,
    anchored,
    convert_spec,
    validation_error,
)
from dockyard.core.spec_bounds import BUILT_IN, SpecBounds, check_maxima, left_out, with_defaults
from dockyard.core.view import masked_spec

# Five fields of printable ASCII separated by spaces: no tab, newline or other control character.
CronText = Annotated[str, Meta(pattern=anchored(r"[!-~]+(?: +[!-~]+){4}"), max_length=200)]
# A label of every job it makes (`schedule=<name>`), and in the scheduler's log.
ScheduleName = Annotated[str, Meta(pattern=anchored(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"))]
MIN_INTERVAL_S = 1.0
IntervalS = Annotated[float, Meta(ge=MIN_INTERVAL_S, le=366 * 86_400)]


class ScheduleBody(Struct, frozen=True, forbid_unknown_fields=True):
    """POST /v1/schedules, as a person writes it."""

    name: ScheduleName
    job: dict[str, Any]
    cron: CronText | None = None
    interval_s: IntervalS | None = None


class Schedule(Struct, frozen=True, kw_only=True):
    tenant: str
    name: str
    job: JobSpec
    cron: str | None
    interval_s: float | None
    created_at: datetime
    last_fire: datetime | None = None
    next_fire: datetime
    # The bounded fields (spec_bounds.BOUNDED) its job left out: each firing gets the
    # operator's defaults of the day there. Stored by leaving them out of the stored spec.
    defaulted: tuple[str, ...] = ()


class ScheduleView(Struct, frozen=True, kw_only=True):
    tenant: str
    name: str
    cron: str | None
    interval_s: float | None
    job: JobSpec
    created_at: Timestamp
    last_fire: Timestamp | None
    next_fire: Timestamp


_body = msgspec.json.Decoder(ScheduleBody)


def parse_schedule(
    body: bytes, tenant: str, now: datetime, bounds: SpecBounds = BUILT_IN
) -> Schedule:
    """Decode and check a schedule; SpecError names the field (`job.` for the spec's)."""
    try:
        raw = _body.decode(body)
    except msgspec.ValidationError as error:
        raise validation_error(str(error)) from None
    if (raw.cron is None) == (raw.interval_s is None):
        raise SpecError("cron", "give exactly one of cron and interval_s")
    if raw.cron is not None and not valid_cron(raw.cron):
        raise SpecError("cron", "not a 5-field cron expression (minute hour day month weekday)")
    defaulted = left_out(raw.job)
    try:
        spec = with_defaults(convert_spec(raw.job), defaulted, bounds)
        check_maxima(spec, bounds)
    except SpecError as error:
        raise SpecError(f"job.{error.field}".rstrip("."), error.message, error.details) from None
    if spec.run_at is not None or spec.idempotency_key is not None:
        field = "job.run_at" if spec.run_at is not None else "job.idempotency_key"
        raise SpecError(field, "a schedule decides when its jobs run and keeps them apart")
    spec = replace(spec, labels={**spec.labels, "schedule": raw.name})
    schedule = Schedule(
        tenant=tenant,
        name=raw.name,
        job=spec,
        cron=raw.cron,
        interval_s=raw.interval_s,
        created_at=now,
        next_fire=now,
        defaulted=defaulted,
    )
    return replace(schedule, next_fire=next_fire_after(schedule, now))


def stored_job(schedule: Schedule) -> dict[str, Any]:
    """The job as the schedules table keeps it: without the fields it left out, so that
    `left_out` finds them again when it is read."""
    job: dict[str, Any] = msgspec.to_builtins(schedule.job)
    for field in schedule.defaulted:
        parent, _, key = field.rpartition(".")
        (job[parent] if parent else job).pop(key, None)
    return job


def fired_spec(schedule: Schedule, bounds: SpecBounds) -> JobSpec:
    """The spec of a firing: the operator's defaults of the day where the schedule left a
    field out; SpecError if it is over a maximum set since."""
    spec = with_defaults(schedule.job, schedule.defaulted, bounds)
    check_maxima(spec, bounds)
    return spec


def valid_cron(expr: str) -> bool:
    return len(expr.split()) == 5 and bool(croniter.is_valid(expr))


def latest_fire(schedule: Schedule, now: datetime) -> datetime | None:
    """The latest fire time at or before `now` (None if the first is still to come)."""
    if schedule.interval_s is not None:
        periods = math.floor((now - schedule.created_at).total_seconds() / schedule.interval_s)
        if periods < 1:
            return None
        return schedule.created_at + timedelta(seconds=periods * schedule.interval_s)
    assert schedule.cron is not None
    previous: datetime = croniter(schedule.cron, now).get_prev(datetime)
    following: datetime = croniter(schedule.cron, previous).get_next(datetime)
    latest = following if following <= now else previous
    return latest if latest > schedule.created_at else None


def next_fire_after(schedule: Schedule, now: datetime) -> datetime:
    if schedule.interval_s is not None:
        elapsed = (now - schedule.created_at).total_seconds()
        periods = math.floor(elapsed / schedule.interval_s) + 1
        return schedule.created_at + timedelta(seconds=periods * schedule.interval_s)
    assert schedule.cron is not None
    nxt: datetime = croniter(schedule.cron, now).get_next(datetime)
    return nxt


def fire_key(fire_time: datetime) -> str:
    """The fire time as part of the job's id: microseconds, UTC, one spelling only."""
    return fire_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def view(schedule: Schedule) -> ScheduleView:
    return ScheduleView(
        tenant=schedule.tenant,
        name=schedule.name,
        cron=schedule.cron,
        interval_s=schedule.interval_s,
        job=masked_spec(schedule.job),
        created_at=schedule.created_at,
        last_fire=schedule.last_fire,
        next_fire=schedule.next_fire,
    )
