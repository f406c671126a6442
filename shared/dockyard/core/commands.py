"""Commands: what someone asks of a job, in the imperative. `decide` turns them into events."""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct

from dockyard.core.events import Metadata, ReleaseHow, ResourceKind
from dockyard.core.reasons import Reason
from dockyard.core.spec import JobSpec
from dockyard.core.usage import Usage


class CommandBase(Struct, frozen=True, kw_only=True, tag_field="command"):
    """Commands travel (reports from orchestrators and the janitor), so they are tagged."""


class SubmitJob(CommandBase, tag="submit_job", frozen=True, kw_only=True):
    tenant: str
    spec: JobSpec
    schedule: str | None = None
    fire_time: datetime | None = None


class EnqueueDue(CommandBase, tag="enqueue_due", frozen=True, kw_only=True):
    """Queue a scheduled job whose time has come."""


class PlannedResource(Struct, frozen=True, kw_only=True):
    """A resource an orchestrator will create for an attempt, named as the engine names it."""

    kind: ResourceKind
    name: str
    engine: str | None = None


class ClaimJob(CommandBase, tag="claim_job", frozen=True, kw_only=True):
    attempt: int
    orchestrator: str
    # What the attempt creates first, recorded in the ledger with the claim: one append, and
    # the container can be created as soon as the claim is granted.
    resources: list[PlannedResource] = []


class RecordResource(CommandBase, tag="record_resource", frozen=True, kw_only=True):
    attempt: int
    kind: ResourceKind
    name: str
    orchestrator: str
    engine: str | None = None


class ReleaseResource(
    Struct, frozen=True, kw_only=True, tag_field="command", tag="release_resource"
):
    attempt: int
    kind: ResourceKind
    name: str
    how: ReleaseHow = "removed"
    # The orchestrator that sent it (the report consumer checks it against the subject);
    # None from the janitor, which appends its own commands, and from earlier versions.
    orchestrator: str | None = None


class ReportStarted(CommandBase, tag="report_started", frozen=True, kw_only=True):
    attempt: int
    container_id: str
    orchestrator: str


class ReportExit(CommandBase, tag="report_exit", frozen=True, kw_only=True):
    """How an attempt ended. `reason` None with exit code 0 is success."""

    attempt: int
    exit_code: int | None
    reason: Reason | None = None
    error: str | None = None
    duration_s: float = 0.0
    started_at: datetime | None = None
    # The orchestrator that ran the attempt: decide refuses an exit from any other. None from
    # the janitor (it ends stuck jobs itself) and from earlier versions (refused off NATS).
    orchestrator: str | None = None
    # The attempt's final usage and the limits it reached (None: nothing was read).
    usage: Usage | None = None
    limits_hit: tuple[str, ...] = ()
    # The container that ran (None if none started, and from earlier versions): with
    # started_at, it lets the exit record the start whose own report never arrived.
    container_id: str | None = None


class ReportUsage(CommandBase, tag="report_usage", frozen=True, kw_only=True):
    """What a running attempt has used so far; the latest one counts."""

    attempt: int
    orchestrator: str
    usage: Usage
    limits_hit: tuple[str, ...] = ()


class RequestCancel(CommandBase, tag="request_cancel", frozen=True, kw_only=True):
    requested_by: str


class MarkOrchestratorLost(
    Struct, frozen=True, kw_only=True, tag_field="command", tag="mark_orchestrator_lost"
):
    attempt: int
    orchestrator: str
    silent_s: float


class FailUndeliverable(
    Struct, frozen=True, kw_only=True, tag_field="command", tag="fail_undeliverable"
):
    """End a job one of whose messages NATS refused for itself: it can never be delivered.

    `error` says why, in words for the job's owner; never retried, since a retry would make
    the same message again."""

    error: str


Command = (
    SubmitJob
    | EnqueueDue
    | ClaimJob
    | RecordResource
    | ReleaseResource
    | ReportStarted
    | ReportExit
    | ReportUsage
    | RequestCancel
    | MarkOrchestratorLost
    | FailUndeliverable
)


class Context(Struct, frozen=True, kw_only=True):
    """What decide needs from the world, passed in so the core stays pure."""

    job_id: str
    now: datetime
    meta: Metadata = Metadata()
