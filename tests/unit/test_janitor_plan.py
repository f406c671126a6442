"""The janitor's planner, pure: given a World, these actions (and never those)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from dockyard.bus.names import LABEL_ATTEMPT, LABEL_DEPLOYMENT, LABEL_JOB, LABEL_ORCHESTRATOR
from dockyard.core import (
    ClaimJob,
    EnqueueDue,
    MarkOrchestratorLost,
    RecordResource,
    ReleaseResource,
    ReportExit,
    ReportStarted,
    SubmitJob,
)
from dockyard.core.events import ResourceIntended
from dockyard.core.resource_names import container_name, network_name
from dockyard.core.spec import RetryPolicy, Sidecar
from dockyard.core.state import ACTIVE
from dockyard.janitor.facts import JobFacts, Orchestrator, World, job_facts
from dockyard.janitor.plan import (
    EndStuck,
    MarkLost,
    Policy,
    Release,
    RemoveResource,
    Reoffer,
    SettleEntry,
    plan,
    plan_docker,
    plan_ledger,
    plan_lost,
    plan_reoffers,
    plan_stuck,
    proves_ours,
    verdict_candidates,
)
from dockyard.runtime.ports import Resource
from tests.unit.builders import JOB, T0, Scenario, spec

ENGINE = "ENGINE:A"
OTHER_ENGINE = "ENGINE:B"
POLICY = Policy(grace_s=60, stuck_margin_s=120, starting_timeout_s=900, reoffer_after_s=900)
RETRY = RetryPolicy(max_attempts=3, backoff_s=0)
UNKNOWN = "0190f0c2-0000-7000-8000-0000000000ff"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def submit(**kw: object) -> SubmitJob:
    return SubmitJob(tenant="acme", spec=spec(retry=RETRY, **kw))


def claim(attempt: int = 1, orchestrator: str = "o1") -> ClaimJob:
    return ClaimJob(attempt=attempt, orchestrator=orchestrator)


def started(attempt: int = 1, orchestrator: str = "o1") -> ReportStarted:
    return ReportStarted(attempt=attempt, container_id=f"c{attempt}", orchestrator=orchestrator)


def intend(
    attempt: int = 1, kind: str = "container", engine: str | None = ENGINE, name: str | None = None
) -> RecordResource:
    if name is None:
        name = network_name(JOB, attempt) if kind == "network" else container_name(JOB, attempt)
    return RecordResource(
        attempt=attempt,
        kind=kind,  # type: ignore[arg-type]
        name=name,
        orchestrator="o1",
        engine=engine,
    )


def history(*steps: tuple[float, object]) -> JobFacts:
    """Commands at times (seconds after T0) through decide, as the services would."""
    s = Scenario()
    for seconds, command in steps:
        s.at(seconds).when(command)  # type: ignore[arg-type]
    facts = job_facts(s.events)
    assert facts is not None
    return facts


def running_job(engine: str | None = ENGINE) -> JobFacts:
    return history((0, submit()), (1, claim()), (2, intend(engine=engine)), (3, started()))


def succeeded_job(engine: str | None = ENGINE) -> JobFacts:
    return history(
        (0, submit()),
        (1, claim()),
        (2, intend(engine=engine)),
        (3, started()),
        (10, ReportExit(attempt=1, exit_code=0)),
    )


def second_attempt_running() -> JobFacts:
    """Attempt 1 lost its orchestrator at 10 s; attempt 2 runs since 13 s."""
    return history(
        (0, submit()),
        (1, claim()),
        (2, intend(1)),
        (3, started()),
        (10, MarkOrchestratorLost(attempt=1, orchestrator="o1", silent_s=15)),
        (11, EnqueueDue()),
        (12, claim(2, "o2")),
        (12.5, intend(2)),
        (13, started(2, "o2")),
    )


def container(
    job_id: str = JOB,
    attempt: int | str | None = 1,
    *,
    created: float = 0,
    name: str | None = None,
    running: bool = True,
    labels: dict[str, str] | None = None,
) -> Resource:
    if labels is None:
        labels = {LABEL_JOB: job_id, LABEL_ORCHESTRATOR: "o1"}
        if attempt is not None:
            labels[LABEL_ATTEMPT] = str(attempt)
    if name is None:
        name = container_name(job_id, int(attempt) if isinstance(attempt, int) else 1)
    return Resource(
        kind="container", id=f"id-{name}", name=name, labels=labels, created_at=at(created),
        running=running,
    )  # fmt: skip


def network(job_id: str = JOB, attempt: int = 1, *, created: float = 0) -> Resource:
    name = network_name(job_id, attempt)
    labels = {LABEL_JOB: job_id, LABEL_ATTEMPT: str(attempt), LABEL_ORCHESTRATOR: "o1"}
    return Resource(
        kind="network", id=f"id-{name}", name=name, labels=labels, created_at=at(created),
        running=False,
    )  # fmt: skip


def world(now: float, **kw: object) -> World:
    kw.setdefault("engine", ENGINE)
    kw.setdefault("pending_reports", {})
    return World(now=at(now), **kw)  # type: ignore[arg-type]


# -- lost orchestrators -----------------------------------------------------------------


def test_an_active_attempt_of_a_silent_orchestrator_is_marked_lost() -> None:
    w = world(
        100, jobs={JOB: running_job()}, orchestrators={"o1": Orchestrator(alive=False, silent_s=20)}
    )
    assert plan_lost(w, POLICY) == [MarkLost(job_id=JOB, attempt=1, orchestrator="o1", silent_s=20)]


@pytest.mark.parametrize(
    ("orchestrators", "pending"),
    [
        ({"o1": Orchestrator(alive=True)}, {}),  # alive
        ({}, {}),  # not asked, or NATS did not answer: never guess
        ({"o1": Orchestrator(alive=False, silent_s=20)}, {JOB: 5.0}),  # a report is on its way
        ({"o1": Orchestrator(alive=False, silent_s=20)}, None),  # reports unknown
    ],
)
def test_no_lost_verdict_without_certainty(
    orchestrators: dict[str, Orchestrator], pending: dict[str, float] | None
) -> None:
    w = world(100, jobs={JOB: running_job()}, orchestrators=orchestrators, pending_reports=pending)
    assert plan_lost(w, POLICY) == []


def test_a_report_waiting_past_patience_no_longer_holds_the_verdict() -> None:
    silent = {"o1": Orchestrator(alive=False, silent_s=20)}
    w = world(100, jobs={JOB: running_job()}, orchestrators=silent, pending_reports={JOB: 4000.0})
    assert [a.job_id for a in plan_lost(w, POLICY)] == [JOB]


def test_finished_or_queued_jobs_are_never_marked_lost() -> None:
    silent = {"o1": Orchestrator(alive=False, silent_s=20)}
    queued = history((0, submit()))
    for facts in (succeeded_job(), queued):
        assert plan_lost(world(100, jobs={JOB: facts}, orchestrators=silent), POLICY) == []


# -- stuck jobs ---------------------------------------------------------------------------


def test_running_past_timeout_plus_margin_ends_as_timed_out() -> None:
    facts = history((0, submit(timeout_s=60)), (1, claim()), (3, started()))
    assert plan_stuck(world(3 + 60 + 120, jobs={JOB: facts}), POLICY) == []
    [action] = plan_stuck(world(3 + 60 + 121, jobs={JOB: facts}), POLICY)
    assert isinstance(action, EndStuck)
    assert (action.attempt, action.reason) == (1, "timed_out")
    assert "past its 60 s timeout" in action.error


def test_starting_too_long_ends_as_container_error() -> None:
    facts = history((0, submit()), (5, claim()))
    assert plan_stuck(world(5 + 900, jobs={JOB: facts}), POLICY) == []
    [action] = plan_stuck(world(5 + 901, jobs={JOB: facts}), POLICY)
    assert (action.reason, action.attempt) == ("container_error", 1)
    assert "never started" in action.error


def test_a_job_being_marked_lost_is_not_also_ended_as_stuck() -> None:
    facts = history((0, submit(timeout_s=1)), (1, claim()), (2, started()))
    silent = {"o1": Orchestrator(alive=False, silent_s=20)}
    actions = plan(world(10_000, jobs={JOB: facts}, orchestrators=silent), POLICY)
    assert [type(a) for a in actions] == [MarkLost]


def test_verdict_candidates_are_the_jobs_to_ask_reports_about() -> None:
    stuck = history((0, submit(timeout_s=1)), (1, claim()), (2, started()))
    w = world(10_000, jobs={JOB: stuck}, pending_reports=None)
    assert plan(w, POLICY) == []  # reports unknown: no verdict
    assert verdict_candidates(w, POLICY) == {JOB}


# -- Docker against the ledger ------------------------------------------------------------


def test_a_resource_of_an_unknown_job_goes_after_the_grace() -> None:
    orphan = container(UNKNOWN, created=0)
    assert plan_docker(world(59, docker=(orphan,), unknown_jobs=frozenset({UNKNOWN})), POLICY) == []
    [action] = plan_docker(world(61, docker=(orphan,), unknown_jobs=frozenset({UNKNOWN})), POLICY)
    assert (action.id, action.why, action.release) == (orphan.id, "its job is unknown", None)


def test_a_finished_jobs_container_goes_a_grace_after_the_job_ended() -> None:
    # Created long before, but the job ended at 10 s: its orchestrator gets the grace to clean.
    c = container(created=-1000, running=False)
    facts = succeeded_job()
    assert plan_docker(world(69, docker=(c,), jobs={JOB: facts}), POLICY) == []
    [action] = plan_docker(world(71, docker=(c,), jobs={JOB: facts}), POLICY)
    assert action.why == "its job is succeeded"
    assert action.release == Release(kind="container", name=c.name, attempt=1)


def test_the_stale_attempts_container_goes_and_the_new_attempts_stays() -> None:
    old, new = container(attempt=1, created=2), container(attempt=2, created=12.5)
    w = world(100, docker=(old, new), jobs={JOB: second_attempt_running()})
    [action] = plan_docker(w, POLICY)
    assert action.id == old.id
    assert action.why == "attempt 1 is stale, the job is at attempt 2"
    assert action.release == Release(kind="container", name=old.name, attempt=1)


def test_a_live_attempts_resources_stay_whatever_their_age() -> None:
    w = world(1_000_000, docker=(container(), network()), jobs={JOB: running_job()})
    assert plan_docker(w, POLICY) == []


def test_a_container_for_an_attempt_never_claimed_goes() -> None:
    queued = history((0, submit()))
    [action] = plan_docker(world(100, docker=(container(),), jobs={JOB: queued}), POLICY)
    assert action.why == "attempt 1 was never claimed (the job is queued)"


def test_containers_go_before_networks_and_sidecars_release_as_sidecars() -> None:
    sidecar_name = container_name(JOB, 1, "db")
    facts = history(
        (0, submit(sidecars=(Sidecar(name="db", image="busybox"),))),
        (1, claim()),
        (2, intend(kind="network")),
        (2, intend(kind="sidecar", name=sidecar_name)),
        (3, started()),
        (10, ReportExit(attempt=1, exit_code=0)),
    )
    resources = (network(), container(name=sidecar_name))
    actions = plan_docker(world(100, docker=resources, jobs={JOB: facts}), POLICY)
    assert [(a.kind, a.release) for a in actions] == [
        ("container", Release(kind="sidecar", name=sidecar_name, attempt=1)),
        ("network", Release(kind="network", name=network_name(JOB, 1), attempt=1)),
    ]


@pytest.mark.parametrize(
    ("facts", "removed"),
    [(succeeded_job(), True), (running_job(), False)],
    ids=["finished", "active"],
)
def test_an_unreadable_attempt_label_is_judged_by_the_job_alone(
    facts: JobFacts, removed: bool
) -> None:
    c = container(attempt="x")
    assert bool(plan_docker(world(1000, docker=(c,), jobs={JOB: facts}), POLICY)) is removed


def test_what_was_not_looked_up_or_not_seen_is_left_alone() -> None:
    assert plan_docker(world(1000, docker=(container(),)), POLICY) == []  # job not looked up
    assert plan_docker(world(1000, docker=None, jobs={JOB: succeeded_job()}), POLICY) == []


# -- the ledger against Docker ------------------------------------------------------------


def test_an_entry_the_engine_does_not_list_is_settled_after_the_grace() -> None:
    facts = succeeded_job()
    assert plan_ledger(world(69, docker=(), jobs={JOB: facts}), POLICY) == []
    [action] = plan_ledger(world(71, docker=(), jobs={JOB: facts}), POLICY)
    assert action == SettleEntry(
        job_id=JOB,
        entry=Release(kind="container", name=container_name(JOB, 1), attempt=1),
        why="the job is succeeded and the engine does not list it",
    )


@pytest.mark.parametrize(
    ("facts", "w"),
    [
        (succeeded_job(engine=OTHER_ENGINE), {"docker": ()}),  # another engine's janitor
        (succeeded_job(engine=None), {"docker": ()}),  # unknown engine: never marked gone
        (succeeded_job(), {"docker": (container(running=False),)}),  # listed: docker rule's
        (running_job(), {"docker": ()}),  # the live attempt may be creating it right now
        (succeeded_job(), {"docker": None}),  # the engine did not answer
        (succeeded_job(), {"docker": (), "engine": None}),
    ],
    ids=["other-engine", "no-engine", "listed", "live", "docker-down", "engine-unknown"],
)
def test_entries_not_to_settle(facts: JobFacts, w: dict[str, object]) -> None:
    assert plan_ledger(world(1000, jobs={JOB: facts}, **w), POLICY) == []


def test_a_stale_attempts_entry_is_settled_while_the_live_ones_is_not() -> None:
    facts = second_attempt_running()
    [action] = plan_ledger(world(1000, docker=(), jobs={JOB: facts}), POLICY)
    assert action.entry.attempt == 1


def planted(name: str, kind: str = "container") -> JobFacts:
    """A finished job whose ledger names `name`: written past decide (which refuses it now),
    as a forged claim did before names were checked."""
    s = Scenario()
    for seconds, command in [(0, submit()), (1, claim()), (3, started())]:
        s.at(seconds).when(command)  # type: ignore[arg-type]
    s.events.append(
        ResourceIntended(
            event_id="planted", job_id=JOB, at=at(2), attempt=1, kind=kind,  # type: ignore[arg-type]
            name=name, orchestrator="o1", engine=ENGINE,
        )
    )  # fmt: skip
    s.at(10).when(ReportExit(attempt=1, exit_code=0))
    facts = job_facts(s.events)
    assert facts is not None
    return facts


def test_a_listed_container_of_another_job_does_not_hide_a_planted_ledger_entry() -> None:
    """The entry is settled (the executor then finds it is not the attempt's, and leaves it
    alone) instead of staying open for ever behind another job's container."""
    theirs = container(UNKNOWN, 1)
    facts = planted(theirs.name)
    [action] = plan_ledger(world(1000, docker=(theirs,), jobs={JOB: facts}), POLICY)
    assert action.entry == Release(kind="container", name=theirs.name, attempt=1)


OURS = {LABEL_JOB: JOB, LABEL_ATTEMPT: "1", LABEL_DEPLOYMENT: "D", LABEL_ORCHESTRATOR: "o1"}
SCOPE: dict[str, str | None] = {LABEL_DEPLOYMENT: "D", LABEL_ORCHESTRATOR: None}


@pytest.mark.parametrize(
    ("labels", "ours"),
    [
        (OURS, True),
        ({}, False),  # anyone's container (no Dockyard labels)
        ({**OURS, LABEL_JOB: UNKNOWN}, False),  # another job's
        ({**OURS, LABEL_ATTEMPT: "2"}, False),  # another attempt's
        ({**OURS, LABEL_DEPLOYMENT: "E"}, False),  # another installation's
        ({k: v for k, v in OURS.items() if k != LABEL_DEPLOYMENT}, False),
        ({k: v for k, v in OURS.items() if k != LABEL_ORCHESTRATOR}, False),  # out of `select`
        ({**OURS, LABEL_JOB: JOB.upper()}, False),
    ],
    ids=["ours", "unlabelled", "job", "attempt", "deployment", "no-deployment", "select", "case"],
)
def test_only_labels_prove_a_named_object_the_attempts(labels: dict[str, str], ours: bool) -> None:
    assert proves_ours(labels, JOB, 1, SCOPE) is ours


def test_released_entries_are_not_in_the_ledger_any_more() -> None:
    facts = history(
        (0, submit()),
        (1, claim()),
        (2, intend()),
        (3, started()),
        (10, ReportExit(attempt=1, exit_code=0)),
        (11, ReleaseResource(attempt=1, kind="container", name=container_name(JOB, 1))),
    )
    assert facts.ledger == ()
    assert plan_ledger(world(1000, docker=(), jobs={JOB: facts}), POLICY) == []


# -- re-offers ------------------------------------------------------------------------------


def test_a_job_queued_long_on_an_idle_queue_is_offered_again() -> None:
    facts = history((0, submit()))
    idle = frozenset({"default"})
    assert plan_reoffers(world(899, jobs={JOB: facts}, idle_queues=idle), POLICY) == []
    assert plan_reoffers(world(1000, jobs={JOB: facts}), POLICY) == []  # offers still waiting
    [action] = plan_reoffers(world(1000, jobs={JOB: facts}, idle_queues=idle), POLICY)
    assert isinstance(action, Reoffer)
    assert (action.attempt, action.queue, action.event_id) == (1, "default", facts.queued_event_id)


# -- facts ----------------------------------------------------------------------------------


def test_job_facts_know_when_attempts_ended_and_where_entries_live() -> None:
    facts = second_attempt_running()
    assert facts.ended_at == {1: at(10)}
    assert facts.claimed_at == at(12)
    assert [(e.attempt, e.engine) for e in facts.ledger] == [(1, ENGINE), (2, ENGINE)]


# -- properties -----------------------------------------------------------------------------

HISTORIES = {
    "queued": lambda: history((0, submit())),
    "starting": lambda: history((0, submit()), (1, claim()), (2, intend())),
    "running": running_job,
    "succeeded": succeeded_job,
    "attempt-2": second_attempt_running,
}

resources = st.builds(
    lambda known, attempt, created, network_kind, labelled: (
        (network if network_kind else container)(
            JOB if known else UNKNOWN, attempt, created=created
        )
        if labelled
        else Resource(
            kind="container",
            id="plain",
            name="plain",
            labels={},
            created_at=at(created),
            running=True,
        )
    ),
    st.booleans(),
    st.integers(1, 3),
    st.floats(-100, 200),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(sorted(HISTORIES)),
    found=st.lists(resources, max_size=6),
    now=st.floats(0, 2000),
    grace=st.floats(0, 300),
    silent=st.sampled_from([None, True, False]),
)
def test_planner_safety(
    state: str, found: list[Resource], now: float, grace: float, silent: bool | None
) -> None:
    facts = HISTORIES[state]()
    found = [replace(r, id=f"{i}-{r.id}") for i, r in enumerate(found)]  # each its own
    orchestrators = {} if silent is None else {"o1": Orchestrator(alive=not silent, silent_s=30)}
    w = world(
        now,
        jobs={JOB: facts},
        unknown_jobs=frozenset({UNKNOWN}),
        docker=tuple(found),
        orchestrators=orchestrators,
    )
    policy = Policy(grace_s=grace)
    actions = plan(w, policy)
    assert actions == plan(w, policy)  # a function of the world alone
    job = facts.job
    for action in actions:
        if isinstance(action, RemoveResource):
            r = next(r for r in found if r.id == action.id)
            assert r.labels.get(LABEL_JOB), "an unlabelled resource was planned for removal"
            assert (w.now - r.created_at).total_seconds() >= grace
            live = job.status in ACTIVE and r.labels.get(LABEL_ATTEMPT) == str(job.attempt)
            assert not (r.labels[LABEL_JOB] == JOB and live), "a live attempt's resource"
        if isinstance(action, MarkLost):
            assert silent is True and job.status in ACTIVE
        if isinstance(action, SettleEntry):
            assert not (job.status in ACTIVE and action.entry.attempt == job.attempt)
    removed = [a.id for a in actions if isinstance(a, RemoveResource)]
    assert len(removed) == len(set(removed))
