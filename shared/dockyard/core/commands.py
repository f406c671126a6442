"""Commands: what someone asks of a job, in the imperative. `decide` turns them into events."""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct

from dockyard.core.events import Metadata, ReleaseHow, ResourceKind
from dockyard.core.reasons import Reason
from dockyard.core.spec import JobSpec


class SubmitJob(Struct, frozen=True, kw_only=True):
    tenant: str
    spec: JobSpec
    schedule: str | None = None
    fire_time: datetime | None = None


class EnqueueDue(Struct, frozen=True, kw_only=True):
    """Queue a scheduled job whose time has come."""


class ClaimJob(Struct, frozen=True, kw_only=True):
    attempt: int
    orchestrator: str


class RecordResource(Struct, frozen=True, kw_only=True):
    attempt: int
    kind: ResourceKind
    name: str
    orchestrator: str


class ReleaseResource(Struct, frozen=True, kw_only=True):
    attempt: int
    kind: ResourceKind
    name: str
    how: ReleaseHow = "removed"


class ReportStarted(Struct, frozen=True, kw_only=True):
    attempt: int
    container_id: str
    orchestrator: str


class ReportExit(Struct, frozen=True, kw_only=True):
    """How an attempt ended. `reason` None with exit code 0 is success."""

    attempt: int
    exit_code: int | None
    reason: Reason | None = None
    error: str | None = None
    duration_s: float = 0.0
    started_at: datetime | None = None


class RequestCancel(Struct, frozen=True, kw_only=True):
    requested_by: str


class MarkOrchestratorLost(Struct, frozen=True, kw_only=True):
    attempt: int
    orchestrator: str
    silent_s: float


Command = (
    SubmitJob
    | EnqueueDue
    | ClaimJob
    | RecordResource
    | ReleaseResource
    | ReportStarted
    | ReportExit
    | RequestCancel
    | MarkOrchestratorLost
)


class Context(Struct, frozen=True, kw_only=True):
    """What decide needs from the world, passed in so the core stays pure."""

    job_id: str
    now: datetime
    meta: Metadata = Metadata()
