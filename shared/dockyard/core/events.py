"""Every event of a job's life: frozen msgspec Structs in one tagged union.

An event is a fact in the past tense. Its `event_id` makes redelivery harmless; its `v` is the
schema version of its type, raised only for a breaking change, with an upcaster for the old one.
Attempt-scoped events carry `attempt`: it is the fencing epoch that makes stale reports harmless.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from msgspec import Struct

from dockyard.core.reasons import Reason
from dockyard.core.spec import JobSpec
from dockyard.core.usage import Usage

ResourceKind = Literal["container", "network", "sidecar"]
ReleaseHow = Literal["removed", "gone"]


class Metadata(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where an event came from: for tracing one job across services, not for the fold."""

    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    producer: str | None = None


NO_METADATA = Metadata()


class EventBase(Struct, frozen=True, kw_only=True, tag_field="type"):
    event_id: str
    job_id: str
    at: datetime
    v: int = 1
    meta: Metadata = NO_METADATA


class JobSubmitted(EventBase, tag="job_submitted", kw_only=True, frozen=True):
    tenant: str
    spec: JobSpec


class JobScheduled(EventBase, tag="job_scheduled", kw_only=True, frozen=True):
    """The job waits until `due_at` (its `run_at`) before it is queued."""

    due_at: datetime


class ScheduleFired(EventBase, tag="schedule_fired", kw_only=True, frozen=True):
    """The job was made by a schedule for this fire time (one job per fire time)."""

    schedule: str
    fire_time: datetime


class JobQueued(EventBase, tag="job_queued", kw_only=True, frozen=True):
    attempt: int
    queue: str
    # The job asks for an `egress` network: its offer says so, so that an orchestrator that
    # cannot enforce the egress deny list leaves it for another without claiming it.
    egress: bool = False


class JobClaimed(EventBase, tag="job_claimed", kw_only=True, frozen=True):
    attempt: int
    orchestrator: str


class ResourceIntended(EventBase, tag="resource_intended", kw_only=True, frozen=True):
    """Recorded before the orchestrator creates a container, sidecar or network."""

    attempt: int
    kind: ResourceKind
    name: str
    orchestrator: str
    # The Docker engine (its `docker info` ID) the resource lives on: a janitor only judges
    # what its own engine can show it.
    engine: str | None = None


class ResourceReleased(EventBase, tag="resource_released", kw_only=True, frozen=True):
    """The resource was removed by its owner, or found gone by the janitor."""

    attempt: int
    kind: ResourceKind
    name: str
    how: ReleaseHow = "removed"


class ContainerStarted(EventBase, tag="container_started", kw_only=True, frozen=True):
    attempt: int
    container_id: str
    orchestrator: str


class UsageRecorded(EventBase, tag="usage_recorded", kw_only=True, frozen=True):
    """What the running attempt has used so far (at most one per job per report period)."""

    attempt: int
    usage: Usage
    limits_hit: tuple[str, ...] = ()


class JobSucceeded(EventBase, tag="job_succeeded", kw_only=True, frozen=True):
    attempt: int
    exit_code: int = 0
    duration_s: float = 0.0
    started_at: datetime | None = None
    # The attempt's final usage (None from earlier versions, or where none was read).
    usage: Usage | None = None
    limits_hit: tuple[str, ...] = ()


class JobFailed(EventBase, tag="job_failed", kw_only=True, frozen=True):
    attempt: int
    reason: Reason
    error: str
    exit_code: int | None = None
    started_at: datetime | None = None
    usage: Usage | None = None
    limits_hit: tuple[str, ...] = ()


class JobTimedOut(EventBase, tag="job_timed_out", kw_only=True, frozen=True):
    attempt: int
    error: str
    duration_s: float
    exit_code: int | None = None
    started_at: datetime | None = None
    usage: Usage | None = None
    limits_hit: tuple[str, ...] = ()


class CancelRequested(EventBase, tag="cancel_requested", kw_only=True, frozen=True):
    requested_by: str


class JobCancelled(EventBase, tag="job_cancelled", kw_only=True, frozen=True):
    attempt: int
    error: str
    exit_code: int | None = None
    started_at: datetime | None = None
    usage: Usage | None = None
    limits_hit: tuple[str, ...] = ()


class OrchestratorLost(EventBase, tag="orchestrator_lost", kw_only=True, frozen=True):
    """The orchestrator running this attempt went silent past its lease."""

    attempt: int
    orchestrator: str
    silent_s: float


class RetryScheduled(EventBase, tag="retry_scheduled", kw_only=True, frozen=True):
    """The attempt failed for a reason the retry policy covers; the next one waits for due_at."""

    attempt: int
    next_attempt: int
    reason: Reason
    error: str
    exit_code: int | None = None
    due_at: datetime
    backoff_s: float
    usage: Usage | None = None  # the failed attempt's final usage
    limits_hit: tuple[str, ...] = ()


Event = (
    JobSubmitted
    | JobScheduled
    | ScheduleFired
    | JobQueued
    | JobClaimed
    | ResourceIntended
    | ResourceReleased
    | ContainerStarted
    | UsageRecorded
    | JobSucceeded
    | JobFailed
    | JobTimedOut
    | CancelRequested
    | JobCancelled
    | OrchestratorLost
    | RetryScheduled
)

EVENT_TYPES: tuple[type[EventBase], ...] = (
    JobSubmitted,
    JobScheduled,
    ScheduleFired,
    JobQueued,
    JobClaimed,
    ResourceIntended,
    ResourceReleased,
    ContainerStarted,
    UsageRecorded,
    JobSucceeded,
    JobFailed,
    JobTimedOut,
    CancelRequested,
    JobCancelled,
    OrchestratorLost,
    RetryScheduled,
)

TERMINAL_EVENTS = (JobSucceeded, JobFailed, JobTimedOut, JobCancelled)


def type_name(cls: type[EventBase]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
