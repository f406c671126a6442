"""What the janitor knows when it plans, as plain values: pure, so the planner is a function.

`job_facts` reads one job's history once for everything the rules need beyond the folded
`Job`: when the current attempt was claimed, which JobQueued made its offer, when each attempt
ended, and which engine each open ledger entry lives on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from msgspec import Struct, field

from dockyard.core.events import (
    Event,
    JobCancelled,
    JobClaimed,
    JobFailed,
    JobQueued,
    JobSucceeded,
    JobTimedOut,
    ResourceIntended,
    ResourceKind,
    RetryScheduled,
)
from dockyard.core.state import Job, fold, resource_key
from dockyard.runtime.ports import Resource

_ENDINGS = (RetryScheduled, JobSucceeded, JobFailed, JobTimedOut, JobCancelled)


class LedgerEntry(Struct, frozen=True, kw_only=True):
    """A resource the ledger says exists (intended, never released)."""

    kind: ResourceKind
    name: str
    attempt: int
    orchestrator: str
    engine: str | None
    intended_at: datetime


class JobFacts(Struct, frozen=True, kw_only=True):
    job: Job
    claimed_at: datetime | None = None  # of the current attempt
    queued_event_id: str | None = None  # the JobQueued of the current attempt
    ended_at: dict[int, datetime] = field(default_factory=dict)  # attempt -> when it ended
    ledger: tuple[LedgerEntry, ...] = ()

    def attempt_ended_at(self, attempt: int) -> datetime | None:
        return self.ended_at.get(attempt)


def job_facts(events: Sequence[Event]) -> JobFacts | None:
    """The facts of one job's history (None for an empty one); raises what `fold` raises."""
    job = fold(events)
    if job is None:
        return None
    claimed_at: datetime | None = None
    queued_event_id: str | None = None
    ended_at: dict[int, datetime] = {}
    intents: dict[str, ResourceIntended] = {}
    for event in events:
        if isinstance(event, JobClaimed) and event.attempt == job.attempt:
            claimed_at = event.at
        elif isinstance(event, JobQueued) and event.attempt == job.attempt:
            queued_event_id = event.event_id
        elif isinstance(event, _ENDINGS):
            ended_at.setdefault(event.attempt, event.at)
        elif isinstance(event, ResourceIntended):
            intents[resource_key(event.kind, event.name, event.attempt)] = event
    ledger = tuple(
        LedgerEntry(
            kind=intent.kind,
            name=intent.name,
            attempt=intent.attempt,
            orchestrator=intent.orchestrator,
            engine=intent.engine,
            intended_at=intent.at,
        )
        for key, intent in sorted(intents.items())
        if key in job.resources
    )
    return JobFacts(
        job=job,
        claimed_at=claimed_at,
        queued_event_id=queued_event_id,
        ended_at=ended_at,
        ledger=ledger,
    )


class Orchestrator(Struct, frozen=True, kw_only=True):
    """What the heartbeat bucket said about one orchestrator (asked, and answered)."""

    alive: bool
    silent_s: float = 0.0


class World(Struct, frozen=True, kw_only=True):
    """One sweep's observations. None (or absent from a mapping) means "could not find out":
    every rule that needs it then does nothing, so an unreachable source never looks empty."""

    now: datetime
    jobs: Mapping[str, JobFacts] = field(default_factory=dict)
    # Job ids looked up that have no history (or are not job ids at all).
    unknown_jobs: frozenset[str] = frozenset()
    # The Docker engine this janitor judges, and what it shows carrying Dockyard's job label.
    engine: str | None = None
    docker: tuple[Resource, ...] | None = None
    orchestrators: Mapping[str, Orchestrator] = field(default_factory=dict)
    # Queues whose offers consumer holds no undelivered offer.
    idle_queues: frozenset[str] = frozenset()
    # Jobs with a report still waiting in the REPORTS stream, by the age of the oldest (s):
    # what it says has happened is about to be recorded, so no verdict is passed over it.
    # None: not known, so no job is judged lost or stuck this time.
    pending_reports: Mapping[str, float] | None = None
