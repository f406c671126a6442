"""What a sweep should do, decided from one `World` without I/O: a list of typed actions.

The rules, each its own function:

- **lost**: an active attempt whose orchestrator's heartbeat key has expired (silent for a
  lease) gets `orchestrator_lost`; the retry policy makes that a new attempt or `failed`.
- **stuck**: `running` past its timeout plus a margin ends as `timed_out`; `starting` for too
  long ends as `container_error` (its orchestrator is alive but never got it going).
- **docker**: a container or network carrying `dockyard.job`, whose job is unknown, finished,
  or at another attempt, is removed once the grace period has passed since its attempt ended
  (or, for an unknown job, since it was created). A live attempt's resources are never touched.
- **ledger**: an open ledger entry of an attempt that is over, on this janitor's engine, that
  the engine did not list as that attempt's, is settled: the engine is asked what carries its
  name, and that is removed, by its id, only if its labels prove it the attempt's (job,
  attempt, and this janitor's installation and `select`): a straggler the listing missed.
  Not there, or not ours, the entry is released as gone, and a foreign one is left alone:
  the ledger's names come over NATS, so a name alone never makes the janitor remove anything.
- **reoffer**: a job `queued` for long, on a queue whose consumer holds no undelivered offer,
  is offered again (its offer was dropped after its consumer's max deliveries, or aged out).

No verdict (lost, stuck) is passed on a job with a report still waiting in the REPORTS stream:
an orchestrator that reported its exit and then vanished, or shut down cleanly while the
scheduler was away, is not lost; the report says what happened once it is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import ClassVar, Literal

from msgspec import Struct
from msgspec.structs import replace

from dockyard.bus.names import LABEL_ATTEMPT, LABEL_JOB
from dockyard.core.events import ResourceKind
from dockyard.core.reasons import Reason
from dockyard.core.resource_names import container_name
from dockyard.core.state import ACTIVE, resource_key
from dockyard.janitor.facts import JobFacts, LedgerEntry, World
from dockyard.runtime.ports import Resource
from dockyard.runtime.ports import ResourceKind as EngineKind

Step = Literal["lost", "stuck", "docker", "ledger", "reoffer"]


class Policy(Struct, frozen=True, kw_only=True):
    grace_s: float = 60.0
    stuck_margin_s: float = 120.0
    starting_timeout_s: float = 900.0
    reoffer_after_s: float = 900.0
    # A report older than this, still not recorded, no longer holds a verdict back.
    report_patience_s: float = 3600.0


class MarkLost(Struct, frozen=True, kw_only=True, tag="mark_lost"):
    job_id: str
    attempt: int
    orchestrator: str
    silent_s: float

    step: ClassVar[Step] = "lost"

    def describe(self) -> str:
        return (
            f"mark orchestrator {self.orchestrator} lost for job {self.job_id} attempt "
            f"{self.attempt} (silent {self.silent_s:.0f} s)"
        )


class EndStuck(Struct, frozen=True, kw_only=True, tag="end_stuck"):
    job_id: str
    attempt: int
    reason: Reason
    error: str

    step: ClassVar[Step] = "stuck"

    def describe(self) -> str:
        return f"end job {self.job_id} attempt {self.attempt} as {self.reason}: {self.error}"


class Release(Struct, frozen=True, kw_only=True):
    """The ledger entry a removal settles."""

    kind: ResourceKind
    name: str
    attempt: int


class RemoveResource(Struct, frozen=True, kw_only=True, tag="remove_resource"):
    kind: Literal["container", "network"]
    id: str
    name: str
    job_id: str
    running: bool
    why: str
    release: Release | None = None

    step: ClassVar[Step] = "docker"

    def describe(self) -> str:
        return f"remove {self.kind} {self.name} ({self.why})"


class SettleEntry(Struct, frozen=True, kw_only=True, tag="settle_entry"):
    job_id: str
    entry: Release
    why: str

    step: ClassVar[Step] = "ledger"

    def describe(self) -> str:
        e = self.entry
        return f"settle ledger entry {e.kind} {e.name} of job {self.job_id} ({self.why})"


class Reoffer(Struct, frozen=True, kw_only=True, tag="reoffer"):
    job_id: str
    attempt: int
    queue: str
    event_id: str
    queued_s: float
    egress: bool = False

    step: ClassVar[Step] = "reoffer"

    def describe(self) -> str:
        return (
            f"offer job {self.job_id} attempt {self.attempt} again on queue {self.queue} "
            f"(queued {self.queued_s:.0f} s)"
        )


Action = MarkLost | EndStuck | RemoveResource | SettleEntry | Reoffer

STEPS: tuple[Step, ...] = ("lost", "stuck", "docker", "ledger", "reoffer")


def plan(world: World, policy: Policy) -> list[Action]:
    """Every action of one sweep, in the order of STEPS."""
    lost = plan_lost(world, policy)
    losing = {action.job_id for action in lost}
    return [
        *lost,
        *plan_stuck(world, policy, skip=losing),
        *plan_docker(world, policy),
        *plan_ledger(world, policy),
        *plan_reoffers(world, policy),
    ]


def verdict_candidates(world: World, policy: Policy) -> set[str]:
    """Jobs the lost and stuck rules would end if no report of theirs were waiting: the ones
    whose waiting reports must be looked up before planning."""
    assumed = replace(world, pending_reports={})
    lost = plan_lost(assumed, policy)
    stuck = plan_stuck(assumed, policy, skip={a.job_id for a in lost})
    return {a.job_id for a in lost} | {a.job_id for a in stuck}


def _report_waiting(world: World, policy: Policy, job_id: str) -> bool:
    if world.pending_reports is None:
        return True  # not known: assume one is, and judge next time
    age = world.pending_reports.get(job_id)
    return age is not None and age < policy.report_patience_s


def plan_lost(world: World, policy: Policy) -> list[MarkLost]:
    actions: list[MarkLost] = []
    for job_id, facts in sorted(world.jobs.items()):
        job = facts.job
        if job.status not in ACTIVE or job.orchestrator is None:
            continue
        if _report_waiting(world, policy, job_id):
            continue
        seen = world.orchestrators.get(job.orchestrator)
        if seen is None or seen.alive:
            continue  # alive, or not known to be silent: never guess
        actions.append(
            MarkLost(
                job_id=job_id,
                attempt=job.attempt,
                orchestrator=job.orchestrator,
                silent_s=seen.silent_s,
            )
        )
    return actions


def plan_stuck(world: World, policy: Policy, *, skip: set[str] | None = None) -> list[EndStuck]:
    actions: list[EndStuck] = []
    for job_id, facts in sorted(world.jobs.items()):
        job = facts.job
        if job_id in (skip or ()) or job.status not in ACTIVE:
            continue
        if _report_waiting(world, policy, job_id):
            continue
        if job.status == "running" and job.started_at is not None:
            limit = job.spec.timeout_s + policy.stuck_margin_s
            ran = _seconds(world.now - job.started_at)
            if ran > limit:
                error = (
                    f"still running {ran:.0f} s after it started, past its "
                    f"{job.spec.timeout_s:g} s timeout: its orchestrator did not stop it "
                    "(ended by the janitor)"
                )
                actions.append(
                    EndStuck(job_id=job_id, attempt=job.attempt, reason="timed_out", error=error)
                )
        elif job.status == "starting" and facts.claimed_at is not None:
            waited = _seconds(world.now - facts.claimed_at)
            if waited > policy.starting_timeout_s:
                error = (
                    f"claimed by {job.orchestrator} {waited:.0f} s ago and never started "
                    "(ended by the janitor)"
                )
                actions.append(
                    EndStuck(
                        job_id=job_id, attempt=job.attempt, reason="container_error", error=error
                    )
                )
    return actions


def plan_docker(world: World, policy: Policy) -> list[RemoveResource]:
    if world.docker is None:
        return []
    # Containers before networks: a network with containers attached cannot be removed.
    ordered = sorted(world.docker, key=lambda r: (r.kind == "network", r.name))
    actions: list[RemoveResource] = []
    for resource in ordered:
        action = _judge_resource(world, policy, resource)
        if action is not None:
            actions.append(action)
    return actions


def _judge_resource(world: World, policy: Policy, r: Resource) -> RemoveResource | None:
    job_id = r.labels.get(LABEL_JOB)
    if not job_id:
        return None  # not Dockyard's: never touched
    attempt = _attempt_label(r)
    if job_id in world.unknown_jobs:
        why, since = "its job is unknown", r.created_at
        facts = None
    else:
        facts = world.jobs.get(job_id)
        if facts is None:
            return None  # not looked up (the database did not answer): judge it next time
        verdict = _leftover(facts, attempt)
        if verdict is None:
            return None
        why, ended = verdict
        since = max(ended, r.created_at)
    if _seconds(world.now - since) < policy.grace_s:
        return None
    return RemoveResource(
        kind=r.kind,
        id=r.id,
        name=r.name,
        job_id=job_id,
        running=r.running,
        why=why,
        release=_held(facts, r, job_id, attempt),
    )


def _leftover(facts: JobFacts, attempt: int | None) -> tuple[str, datetime] | None:
    """Why a resource of this job and attempt should not exist, and since when; None if it may."""
    job = facts.job
    if attempt is None:
        # Labelled with the job but not with a readable attempt: only a finished job rules it out.
        if job.finished and job.finished_at is not None:
            return f"its job is {job.status}", job.finished_at
        return None
    if attempt < job.attempt:
        ended = facts.attempt_ended_at(attempt) or job.created_at
        return f"attempt {attempt} is stale, the job is at attempt {job.attempt}", ended
    if job.finished:
        return f"its job is {job.status}", job.finished_at or job.created_at
    if attempt == job.attempt and job.status in ACTIVE:
        return None  # the live attempt's: its orchestrator owns it
    # An attempt not claimed (yet): no orchestrator was allowed to make it.
    return f"attempt {attempt} was never claimed (the job is {job.status})", job.created_at


def _held(facts: JobFacts | None, r: Resource, job_id: str, attempt: int | None) -> Release | None:
    """The ledger entry this resource is, if the ledger holds it."""
    if facts is None or attempt is None:
        return None
    kind: ResourceKind = "network"
    if r.kind == "container":
        kind = "container" if r.name == container_name(job_id, attempt) else "sidecar"
    if resource_key(kind, r.name, attempt) not in facts.job.resources:
        return None
    return Release(kind=kind, name=r.name, attempt=attempt)


def plan_ledger(world: World, policy: Policy) -> list[SettleEntry]:
    if world.docker is None or world.engine is None:
        return []  # without the engine's own listing, "not there" cannot be told
    listed = {(r.kind, r.name): r for r in world.docker}
    actions: list[SettleEntry] = []
    for job_id, facts in sorted(world.jobs.items()):
        for entry in facts.ledger:
            if entry.engine != world.engine:
                continue  # another engine's (or unknown): its own janitor judges it
            engine_kind: EngineKind = "network" if entry.kind == "network" else "container"
            shown = listed.get((engine_kind, entry.name))
            if shown is not None and proves_ours(shown.labels, job_id, entry.attempt):
                continue  # the docker rule judges what the engine shows as this attempt's
            why = _entry_over(facts, entry)
            if why is None:
                continue
            ended = facts.attempt_ended_at(entry.attempt) or facts.job.finished_at
            since = max(entry.intended_at, ended or entry.intended_at)
            if _seconds(world.now - since) < policy.grace_s:
                continue
            release = Release(kind=entry.kind, name=entry.name, attempt=entry.attempt)
            actions.append(SettleEntry(job_id=job_id, entry=release, why=why))
    return actions


def proves_ours(
    labels: Mapping[str, str],
    job_id: str,
    attempt: int,
    scope: Mapping[str, str | None] | None = None,
) -> bool:
    """Whether an engine object's labels say it is this job attempt's and in this janitor's
    scope (each of `scope`'s labels, with its value unless None): only then is it removed
    for a ledger entry. The name it was found by proves nothing."""
    wanted = {**(scope or {}), LABEL_JOB: job_id, LABEL_ATTEMPT: str(attempt)}
    return all(k in labels and (v is None or labels[k] == v) for k, v in wanted.items())


def _entry_over(facts: JobFacts, entry: LedgerEntry) -> str | None:
    job = facts.job
    if entry.attempt < job.attempt:
        return f"attempt {entry.attempt} is over and the engine does not list it"
    if job.finished:
        return f"the job is {job.status} and the engine does not list it"
    return None  # the live attempt's: its orchestrator may be creating it right now


def plan_reoffers(world: World, policy: Policy) -> list[Reoffer]:
    actions: list[Reoffer] = []
    for job_id, facts in sorted(world.jobs.items()):
        job = facts.job
        if job.status != "queued" or job.queued_at is None or facts.queued_event_id is None:
            continue
        if job.spec.queue not in world.idle_queues:
            continue
        queued_s = _seconds(world.now - job.queued_at)
        if queued_s < policy.reoffer_after_s:
            continue
        actions.append(
            Reoffer(
                job_id=job_id,
                attempt=job.attempt,
                queue=job.spec.queue,
                event_id=facts.queued_event_id,
                queued_s=queued_s,
                egress=job.spec.effective_network == "egress",
            )
        )
    return actions


def _attempt_label(r: Resource) -> int | None:
    try:
        attempt = int(r.labels.get(LABEL_ATTEMPT, ""))
    except ValueError:
        return None
    return attempt if attempt >= 1 else None


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()
