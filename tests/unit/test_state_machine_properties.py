"""Property tests of the fold: whatever commands, duplicates and reorderings arrive,
replaying the history equals the state built step by step, and only legal edges are taken."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from msgspec.structs import replace

from dockyard.core import (
    ClaimJob,
    Command,
    Context,
    EnqueueDue,
    Event,
    FailUndeliverable,
    Job,
    MarkOrchestratorLost,
    RecordResource,
    Rejected,
    ReleaseResource,
    ReportExit,
    ReportStarted,
    ReportUsage,
    RequestCancel,
    SubmitJob,
    decide,
    evolve,
    fold,
)
from dockyard.core.events import ContainerStarted, ResourceKind
from dockyard.core.reasons import ALL_REASONS
from dockyard.core.resource_names import container_name, network_name
from dockyard.core.spec import RetryPolicy
from dockyard.core.usage import Usage
from tests.unit.builders import JOB, T0, Ids, spec

# The contract's status graph; "x -> x" (an annotation event) is always allowed.
LEGAL = {
    (None, "scheduled"),
    ("scheduled", "queued"),
    ("scheduled", "cancelled"),
    ("queued", "starting"),
    ("queued", "cancelled"),
    # Undeliverable (FailUndeliverable): ended before it ever started.
    ("scheduled", "failed"),
    ("queued", "failed"),
    ("starting", "running"),
    *{
        (a, b)
        for a in ("starting", "running")
        for b in ("succeeded", "failed", "timed_out", "cancelled", "scheduled")
    },
}

attempts = st.integers(1, 4)
orchestrators = st.sampled_from(["o1", "o2"])
exit_codes = st.one_of(st.none(), st.integers(0, 3), st.just(137))
reasons = st.one_of(st.none(), st.sampled_from(ALL_REASONS))
usages = st.builds(Usage, cpu_s=st.floats(0, 100), pids_peak=st.integers(0, 300))
hits = st.lists(st.sampled_from(["memory", "pids", "cpu", "disk:/tmp"]), max_size=2).map(tuple)


def _resource(attempt: int, kind: ResourceKind, foreign: bool) -> tuple[int, ResourceKind, str]:
    """(attempt, kind, name): the attempt's own name for the kind, or one decide refuses."""
    if foreign:
        return attempt, kind, "dockyard-postgres-1"
    name = network_name(JOB, attempt) if kind == "network" else container_name(JOB, attempt)
    return attempt, kind, name


resources = st.builds(_resource, attempts, st.sampled_from(["container", "network"]), st.booleans())
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(EnqueueDue),
    st.builds(ClaimJob, attempt=attempts, orchestrator=orchestrators),
    st.builds(
        ReportStarted, attempt=attempts, container_id=st.just("c"), orchestrator=orchestrators
    ),
    st.builds(
        ReportExit,
        attempt=attempts,
        exit_code=exit_codes,
        reason=reasons,
        error=st.just("boom"),
        usage=st.one_of(st.none(), usages),
        limits_hit=hits,
    ),
    st.builds(
        ReportUsage, attempt=attempts, orchestrator=orchestrators, usage=usages, limits_hit=hits
    ),
    st.builds(RequestCancel, requested_by=st.just("acme")),
    st.builds(FailUndeliverable, error=st.just("NATS refused its job_queued message")),
    st.builds(
        MarkOrchestratorLost, attempt=attempts, orchestrator=orchestrators, silent_s=st.just(20.0)
    ),
    st.builds(
        lambda r, orchestrator: RecordResource(
            attempt=r[0], kind=r[1], name=r[2], orchestrator=orchestrator
        ),
        resources,
        orchestrators,
    ),
    st.builds(lambda r: ReleaseResource(attempt=r[0], kind=r[1], name=r[2]), resources),
)


def _edge(before: Job | None, after: Job) -> tuple[str | None, str]:
    return (before.status if before else None, after.status)


class JobLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ids = Ids()
        self.now = T0
        self.history: list[Event] = []
        self.job: Job | None = None

    def _apply(self, event: Event) -> None:
        before = self.job
        after = evolve(before, event)
        edge = _edge(before, after)
        assert edge in LEGAL or edge[0] == edge[1], f"illegal edge {edge}"
        self.job = after
        self.history.append(event)

    @rule(max_attempts=st.integers(1, 3), delayed=st.booleans())
    def submit(self, max_attempts: int, delayed: bool) -> None:
        run_at = self.now + timedelta(seconds=30) if delayed else None
        job_spec = replace(spec(run_at=run_at), retry=RetryPolicy(max_attempts=max_attempts))
        self._run(SubmitJob(tenant="acme", spec=job_spec))

    @rule(command=commands, advance=st.floats(0, 100))
    def command(self, command: Command, advance: float) -> None:
        self.now += timedelta(seconds=advance)
        self._run(command)

    def _run(self, command: Command) -> None:
        try:
            events = decide(self.job, command, Context(job_id=JOB, now=self.now), self.ids)
        except Rejected:
            return
        for event in events:
            self._apply(event)

    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def redeliver_a_recorded_event(self, data: st.DataObject) -> None:
        event = data.draw(st.sampled_from(self.history))
        assert evolve(self.job, event) == self.job

    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def deliver_an_old_event_again_under_a_new_id(self, data: st.DataObject) -> None:
        """A reordered or late message: it must be refused or take a legal edge."""
        event = replace(data.draw(st.sampled_from(self.history)), event_id=self.ids())
        before = self.job
        try:
            after = evolve(before, event)
        except Rejected:
            return
        edge = _edge(before, after)
        assert edge in LEGAL or edge[0] == edge[1], f"illegal edge {edge} from a late event"

    @invariant()
    def replay_equals_incremental_state(self) -> None:
        assert fold(self.history) == self.job

    @invariant()
    def version_counts_the_history(self) -> None:
        if self.job is not None:
            assert self.job.version == len(self.history)

    @invariant()
    def limits_hit_are_those_reported_since_the_last_start(self) -> None:
        if self.job is None:
            return
        since: set[str] = set()
        for event in self.history:
            if isinstance(event, ContainerStarted):
                since = set()
            since |= set(getattr(event, "limits_hit", ()))
        assert set(self.job.limits_hit) == since

    @invariant()
    def attempts_never_exceed_the_policy(self) -> None:
        if self.job is not None:
            assert 1 <= self.job.attempt <= self.job.max_attempts


TestJobLifecycle = JobLifecycle.TestCase
TestJobLifecycle.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
