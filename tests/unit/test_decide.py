"""Given a history, when a command, then these events (or this refusal)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from dockyard.core import (
    AlreadyFinished,
    ClaimJob,
    EnqueueDue,
    FailUndeliverable,
    ForeignResource,
    IllegalTransition,
    MarkOrchestratorLost,
    PlannedResource,
    RecordResource,
    Rejected,
    ReleaseResource,
    ReportExit,
    ReportStarted,
    RequestCancel,
    StaleAttempt,
    SubmitJob,
    UnknownJob,
)
from dockyard.core.events import ResourceKind
from dockyard.core.resource_names import container_name, network_name
from dockyard.core.spec import RetryPolicy, Sidecar
from dockyard.core.state import resource_key
from tests.unit.builders import JOB, T0, Scenario, spec, types

SUBMIT = SubmitJob(tenant="acme", spec=spec(command=["true"]))
CLAIM = ClaimJob(attempt=1, orchestrator="o1")
STARTED = ReportStarted(attempt=1, container_id="c1", orchestrator="o1")


def running(retry: RetryPolicy | None = None) -> Scenario:
    submit = SubmitJob(tenant="acme", spec=spec(retry=retry) if retry else spec())
    return Scenario().given(submit, CLAIM, STARTED)


def test_submit_queues_at_once() -> None:
    s = Scenario()
    assert types(s.when(SUBMIT)) == ["job_submitted", "job_queued"]
    job = s.job
    assert job is not None
    assert (job.status, job.attempt, job.version, job.queued_at) == ("queued", 1, 2, T0)


def test_submit_with_run_at_waits_until_due() -> None:
    s = Scenario()
    later = T0 + timedelta(minutes=5)
    s.when(SubmitJob(tenant="acme", spec=spec(run_at=later)))
    assert s.job is not None and s.job.status == "scheduled" and s.job.due_at == later
    assert s.at(60).when(EnqueueDue()) == []
    assert types(s.at(300).when(EnqueueDue())) == ["job_queued"]
    assert s.job.status == "queued"


def test_submit_twice_is_a_no_op() -> None:
    s = Scenario().given(SUBMIT)
    assert s.when(SUBMIT) == []


def test_submit_from_a_schedule_records_the_fire() -> None:
    s = Scenario()
    fired = s.when(SubmitJob(tenant="a", spec=spec(), schedule="nightly", fire_time=T0))
    assert types(fired) == ["job_submitted", "schedule_fired", "job_queued"]
    assert s.job is not None and s.job.schedule == "nightly"


def test_claim_then_start_then_succeed() -> None:
    s = Scenario().given(SUBMIT)
    assert types(s.when(CLAIM)) == ["job_claimed"]
    assert s.job is not None and s.job.status == "starting" and s.job.orchestrator == "o1"
    assert types(s.when(STARTED)) == ["container_started"]
    assert s.job.status == "running"
    assert types(s.when(ReportExit(attempt=1, exit_code=0))) == ["job_succeeded"]
    assert (s.job.status, s.job.exit_code, s.job.reason) == ("succeeded", 0, None)


def test_a_second_orchestrator_cannot_claim() -> None:
    s = Scenario().given(SUBMIT, CLAIM)
    with pytest.raises(IllegalTransition, match="not queued"):
        s.when(ClaimJob(attempt=1, orchestrator="o2"))


def test_the_same_orchestrator_claiming_again_changes_nothing() -> None:
    s = Scenario().given(SUBMIT, CLAIM)
    assert s.when(CLAIM) == []


def test_a_claim_records_the_resources_it_will_create_first() -> None:
    name = container_name(JOB, 1)
    planned = [PlannedResource(kind="container", name=name, engine="E")]
    claim = ClaimJob(attempt=1, orchestrator="o1", resources=planned)
    s = Scenario().given(SUBMIT)
    assert types(s.when(claim)) == ["job_claimed", "resource_intended"]
    assert s.job is not None and resource_key("container", name, 1) in s.job.resources
    assert s.when(claim) == []  # asked again: the claim and its ledger entry stand
    with pytest.raises(IllegalTransition):  # another's claim records nothing
        s.when(ClaimJob(attempt=1, orchestrator="o2", resources=planned))


def test_a_stale_attempt_is_refused() -> None:
    s = running(RetryPolicy(max_attempts=2)).given(ReportExit(attempt=1, exit_code=1))
    with pytest.raises(StaleAttempt):
        s.when(ReportExit(attempt=1, exit_code=0))
    with pytest.raises(StaleAttempt):
        s.when(ClaimJob(attempt=1, orchestrator="o1"))


def test_failure_without_retry_is_final_with_a_readable_error() -> None:
    s = running()
    assert types(s.when(ReportExit(attempt=1, exit_code=3))) == ["job_failed"]
    job = s.job
    assert job is not None
    assert (job.status, job.reason, job.exit_code) == ("failed", "exit_code", 3)
    assert job.error == "the command exited with code 3"


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("timed_out", "timed_out"),
        ("oom_killed", "failed"),
        ("container_error", "failed"),
        ("image_pull_failed", "failed"),
        ("log_limit", "failed"),
    ],
)
def test_each_reason_ends_in_its_status(reason: str, status: str) -> None:
    s = running()
    s.when(ReportExit(attempt=1, exit_code=137, reason=reason, error="why"))  # type: ignore[arg-type]
    assert s.job is not None and (s.job.status, s.job.reason) == (status, reason)


def test_retry_waits_with_backoff_then_requeues_with_the_next_attempt() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_s=2, backoff_factor=3, max_backoff_s=5)
    s = running(policy)
    (retry,) = s.at(10).when(ReportExit(attempt=1, exit_code=1))
    assert types([retry]) == ["retry_scheduled"]
    job = s.job
    assert job is not None and (job.status, job.attempt) == ("scheduled", 2)
    assert job.due_at == T0 + timedelta(seconds=12)
    assert s.at(11).when(EnqueueDue()) == []
    assert types(s.at(12).when(EnqueueDue())) == ["job_queued"]
    s.given(
        ClaimJob(attempt=2, orchestrator="o2"),
        ReportStarted(attempt=2, container_id="c2", orchestrator="o2"),
    )
    s.at(20).when(ReportExit(attempt=2, exit_code=1))
    assert s.job.due_at == T0 + timedelta(seconds=25)  # 2*3 = 6, capped at 5
    s.at(25).given(
        EnqueueDue(),
        ClaimJob(attempt=3, orchestrator="o1"),
        ReportStarted(attempt=3, container_id="c3", orchestrator="o1"),
    )
    assert types(s.when(ReportExit(attempt=3, exit_code=1))) == ["job_failed"]
    assert s.job.attempt == 3


def test_retry_only_for_listed_exit_codes() -> None:
    s = running(RetryPolicy(max_attempts=3, exit_codes=(75,)))
    assert types(s.when(ReportExit(attempt=1, exit_code=1))) == ["job_failed"]
    s = running(RetryPolicy(max_attempts=3, exit_codes=(75,)))
    assert types(s.when(ReportExit(attempt=1, exit_code=75))) == ["retry_scheduled"]


def test_retry_only_for_listed_reasons() -> None:
    s = running(RetryPolicy(max_attempts=3, on=("oom_killed",)))
    assert types(s.when(ReportExit(attempt=1, exit_code=1))) == ["job_failed"]


@pytest.mark.parametrize("reason", ["image_pull_failed", "cancelled"])
def test_never_retried_reasons(reason: str) -> None:
    policy = RetryPolicy(max_attempts=5, on=("image_pull_failed", "cancelled", "exit_code"))  # type: ignore[arg-type]
    s = running(policy)
    s.when(ReportExit(attempt=1, exit_code=None, reason=reason, error="x"))  # type: ignore[arg-type]
    assert s.job is not None and s.job.finished


def test_cancel_of_a_queued_job_ends_it_before_it_starts() -> None:
    s = Scenario().given(SUBMIT)
    assert types(s.when(RequestCancel(requested_by="acme"))) == [
        "cancel_requested",
        "job_cancelled",
    ]
    assert s.job is not None and (s.job.status, s.job.reason) == ("cancelled", "cancelled")
    with pytest.raises(IllegalTransition):
        s.when(CLAIM)


def test_cancel_of_a_running_job_waits_for_the_orchestrator() -> None:
    s = running(RetryPolicy(max_attempts=3))
    assert types(s.when(RequestCancel(requested_by="acme"))) == ["cancel_requested"]
    assert s.when(RequestCancel(requested_by="acme")) == []
    s.when(ReportExit(attempt=1, exit_code=143, reason="cancelled", error="stopped"))
    assert s.job is not None and s.job.status == "cancelled"


def test_exit_after_a_cancel_request_counts_as_cancelled_and_is_not_retried() -> None:
    s = running(RetryPolicy(max_attempts=3)).given(RequestCancel(requested_by="acme"))
    assert types(s.when(ReportExit(attempt=1, exit_code=137))) == ["job_cancelled"]


def test_cancel_of_a_finished_job_is_a_conflict() -> None:
    s = running().given(ReportExit(attempt=1, exit_code=0))
    with pytest.raises(AlreadyFinished):
        s.when(RequestCancel(requested_by="acme"))


def test_a_lost_orchestrator_retries_the_job() -> None:
    s = running(RetryPolicy(max_attempts=2))
    lost = MarkOrchestratorLost(attempt=1, orchestrator="o1", silent_s=16)
    assert types(s.when(lost)) == ["orchestrator_lost", "retry_scheduled"]
    assert s.job is not None and (s.job.status, s.job.attempt) == ("scheduled", 2)
    assert s.job.reason == "orchestrator_lost" and "o1" in (s.job.error or "")
    assert s.when(lost) == []  # a second janitor's verdict doubles nothing


def test_a_lost_orchestrator_without_retries_fails_the_job() -> None:
    s = running()
    s.when(MarkOrchestratorLost(attempt=1, orchestrator="o1", silent_s=16))
    assert s.job is not None and (s.job.status, s.job.reason) == ("failed", "orchestrator_lost")


def test_a_late_report_from_the_lost_attempt_is_stale() -> None:
    s = running(RetryPolicy(max_attempts=2))
    s.when(MarkOrchestratorLost(attempt=1, orchestrator="o1", silent_s=16))
    with pytest.raises(StaleAttempt):
        s.when(ReportExit(attempt=1, exit_code=0))


def test_the_ledger_records_intent_and_release() -> None:
    s = running()
    name = container_name(JOB, 1)
    record = RecordResource(attempt=1, kind="container", name=name, orchestrator="o1")
    assert types(s.when(record)) == ["resource_intended"]
    assert s.when(record) == []
    s.when(ReportExit(attempt=1, exit_code=0))
    release = ReleaseResource(attempt=1, kind="container", name=name)
    assert types(s.when(release)) == ["resource_released"]
    assert s.when(release) == []
    assert s.job is not None and s.job.resources == frozenset()


# The ledger holds only names the attempt can have: the janitor removes what it holds, and
# claims and reports arrive over NATS with any name (security review F3).
OTHER_JOB = "0190f0c2-0000-7000-8000-000000000002"
WITH_SIDECAR = SubmitJob(tenant="acme", spec=spec(sidecars=(Sidecar(name="db", image="pg"),)))
FOREIGN: list[tuple[ResourceKind, str]] = [
    ("container", "dockyard-postgres-1"),  # anyone's container
    ("container", container_name(OTHER_JOB, 1)),  # another job's
    ("container", container_name(JOB, 2)),  # another attempt's
    ("container", f"/{container_name(JOB, 1)}"),  # as the engine lists it, not as it names it
    ("container", container_name(JOB.upper(), 1)),
    ("container", container_name(JOB, 1, "db")),  # a sidecar's name, as the job container
    ("sidecar", container_name(JOB, 1, "cache")),  # a sidecar the spec does not have
    ("sidecar", container_name(JOB, 1)),
    ("network", "bridge"),
    ("network", network_name(OTHER_JOB, 1)),
    ("container", network_name(JOB, 1)),
]


@pytest.mark.parametrize(("kind", "name"), FOREIGN)
def test_a_claim_planning_a_foreign_resource_name_is_refused_whole(
    kind: ResourceKind, name: str
) -> None:
    s = Scenario().given(WITH_SIDECAR)
    own = PlannedResource(kind="container", name=container_name(JOB, 1), engine="E")
    foreign = PlannedResource(kind=kind, name=name, engine="E")

    with pytest.raises(ForeignResource, match="is not a name Dockyard gives attempt 1") as refused:
        s.when(ClaimJob(attempt=1, orchestrator="o1", resources=[own, foreign]))

    assert isinstance(refused.value, Rejected) and refused.value.code == "foreign_resource"
    assert s.job is not None and (s.job.status, s.job.resources) == ("queued", frozenset())
    assert types(s.events) == ["job_submitted", "job_queued"]  # nothing stored


@pytest.mark.parametrize(("kind", "name"), FOREIGN)
def test_a_record_resource_with_a_foreign_name_is_refused(kind: ResourceKind, name: str) -> None:
    s = Scenario().given(WITH_SIDECAR, CLAIM)

    with pytest.raises(ForeignResource, match=f"{kind} '{re.escape(name)}' is not a name"):
        s.when(RecordResource(attempt=1, kind=kind, name=name, orchestrator="o1"))

    assert s.job is not None and s.job.resources == frozenset()


def test_a_foreign_name_is_refused_even_from_the_orchestrator_holding_the_claim() -> None:
    """Asked again by the claim's holder (which changes nothing) or already in the ledger
    from before the names were checked: never accepted."""
    s = Scenario().given(WITH_SIDECAR, CLAIM)
    planted = [PlannedResource(kind="container", name="dockyard-postgres-1")]
    with pytest.raises(ForeignResource):
        s.when(ClaimJob(attempt=1, orchestrator="o1", resources=planted))
    assert s.job is not None and s.job.resources == frozenset()


def test_every_name_the_attempt_can_have_is_recorded() -> None:
    s = Scenario().given(WITH_SIDECAR)
    planned = [
        PlannedResource(kind="network", name=network_name(JOB, 1)),
        PlannedResource(kind="sidecar", name=container_name(JOB, 1, "db")),
        PlannedResource(kind="container", name=container_name(JOB, 1)),
    ]

    assert types(s.when(ClaimJob(attempt=1, orchestrator="o1", resources=planned))) == [
        "job_claimed",
        *["resource_intended"] * 3,
    ]
    assert s.job is not None and len(s.job.resources) == 3


def test_a_long_foreign_name_is_cut_short_in_the_refusal() -> None:
    s = Scenario().given(SUBMIT, CLAIM)
    name = "x" * 100_000
    with pytest.raises(ForeignResource) as refused:
        s.when(RecordResource(attempt=1, kind="container", name=name, orchestrator="o1"))
    assert len(refused.value.message) < 400 and refused.value.name == name


def test_a_resource_cannot_be_recorded_for_a_stale_attempt() -> None:
    s = running(RetryPolicy(max_attempts=2)).given(ReportExit(attempt=1, exit_code=1))
    with pytest.raises(StaleAttempt):
        s.when(RecordResource(attempt=1, kind="container", name="c", orchestrator="o1"))


def test_started_after_the_exit_report_is_ignored() -> None:
    s = Scenario().given(SUBMIT, CLAIM, ReportExit(attempt=1, exit_code=0))
    assert s.job is not None and s.job.status == "succeeded"
    assert s.when(STARTED) == []


def test_commands_on_an_unknown_job_are_refused() -> None:
    with pytest.raises(UnknownJob):
        Scenario().when(CLAIM)


@pytest.mark.parametrize("status", ["scheduled", "queued", "running"])
def test_an_undeliverable_job_fails_once_and_is_never_retried(status: str) -> None:
    later = T0 + timedelta(hours=1) if status == "scheduled" else None
    s = Scenario()
    s.given(SubmitJob(tenant="acme", spec=spec(retry=RetryPolicy(max_attempts=3), run_at=later)))
    if status == "running":
        s.given(ClaimJob(attempt=1, orchestrator="o1"))
        s.given(ReportStarted(attempt=1, container_id="c", orchestrator="o1"))
    why = "NATS refused its job_queued message"
    assert types(s.when(FailUndeliverable(error=why))) == ["job_failed"]
    job = s.job
    assert job is not None and (job.status, job.reason, job.error) == (
        "failed",
        "container_error",
        why,
    )
    assert s.when(FailUndeliverable(error=why)) == []


def test_an_exit_that_overtook_its_start_records_the_start_it_vouches_for() -> None:
    s = Scenario().given(SUBMIT, CLAIM)
    began = T0 + timedelta(seconds=3)
    exit_ = ReportExit(
        attempt=1, exit_code=0, orchestrator="o1", started_at=began, container_id="c1"
    )
    events = s.at(9).when(exit_)
    assert types(events) == ["container_started", "job_succeeded"]
    assert events[0].at == began
    assert s.job is not None and s.job.started_at == began and s.job.container_id == "c1"
    assert s.when(STARTED) == []  # the late start report: already recorded


def test_an_exit_of_a_container_that_never_started_implies_no_start() -> None:
    s = Scenario().given(SUBMIT, CLAIM)
    not_started = ReportExit(attempt=1, exit_code=None, reason="container_error", error="x")
    assert types(s.when(not_started)) == ["job_failed"]
    janitor = Scenario().given(SUBMIT, CLAIM)
    verdict = ReportExit(attempt=1, exit_code=None, reason="orchestrator_lost", error="gone")
    assert "container_started" not in types(janitor.when(verdict))


def test_an_exit_after_its_recorded_start_adds_no_second_start() -> None:
    exit_ = ReportExit(attempt=1, exit_code=0, orchestrator="o1", started_at=T0, container_id="c1")
    assert types(running().when(exit_)) == ["job_succeeded"]
