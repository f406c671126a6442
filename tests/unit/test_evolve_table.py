"""Every event type against every status: the table of the status graph, both ways."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from dockyard.core import (
    ClaimJob,
    IllegalTransition,
    Job,
    RecordResource,
    Rejected,
    ReportExit,
    ReportStarted,
    RequestCancel,
    StaleAttempt,
    SubmitJob,
    evolve,
)
from dockyard.core import events as ev
from dockyard.core.resource_names import container_name
from dockyard.core.usage import Usage
from tests.unit.builders import JOB, T0, Scenario, spec

SUBMIT = SubmitJob(tenant="acme", spec=spec())
DELAYED = SubmitJob(tenant="acme", spec=spec(run_at=T0 + timedelta(hours=1)))
CLAIM = ClaimJob(attempt=1, orchestrator="o1")
STARTED = ReportStarted(attempt=1, container_id="c", orchestrator="o1")
RECORD = RecordResource(attempt=1, kind="container", name=container_name(JOB, 1), orchestrator="o1")

STATES: dict[str, list[Any]] = {
    "scheduled": [DELAYED],
    "queued": [SUBMIT],
    "starting": [SUBMIT, CLAIM, RECORD],
    "running": [SUBMIT, CLAIM, RECORD, STARTED],
    "succeeded": [SUBMIT, CLAIM, RECORD, STARTED, ReportExit(attempt=1, exit_code=0)],
    "failed": [SUBMIT, CLAIM, RECORD, STARTED, ReportExit(attempt=1, exit_code=2)],
    "timed_out": [
        SUBMIT,
        CLAIM,
        RECORD,
        STARTED,
        ReportExit(attempt=1, exit_code=137, reason="timed_out", error="t"),
    ],
    "cancelled": [SUBMIT, RequestCancel(requested_by="x")],
}

B = {"event_id": "new", "job_id": JOB, "at": T0}
EVENTS: dict[str, Any] = {
    "job_submitted": ev.JobSubmitted(**B, tenant="acme", spec=spec()),
    "job_scheduled": ev.JobScheduled(**B, due_at=T0),
    "schedule_fired": ev.ScheduleFired(**B, schedule="s", fire_time=T0),
    "job_queued": ev.JobQueued(**B, attempt=1, queue="default"),
    "job_claimed": ev.JobClaimed(**B, attempt=1, orchestrator="o1"),
    "resource_intended": ev.ResourceIntended(
        **B, attempt=1, kind="network", name="n", orchestrator="o1"
    ),
    "resource_released": ev.ResourceReleased(
        **B, attempt=1, kind="container", name=container_name(JOB, 1)
    ),
    "container_started": ev.ContainerStarted(**B, attempt=1, container_id="c", orchestrator="o1"),
    "usage_recorded": ev.UsageRecorded(
        **B, attempt=1, usage=Usage(cpu_s=1.0), limits_hit=("pids",)
    ),
    "job_succeeded": ev.JobSucceeded(**B, attempt=1),
    "job_failed": ev.JobFailed(**B, attempt=1, reason="exit_code", error="e", exit_code=1),
    "job_timed_out": ev.JobTimedOut(**B, attempt=1, error="t", duration_s=1.0),
    "cancel_requested": ev.CancelRequested(**B, requested_by="x"),
    "job_cancelled": ev.JobCancelled(**B, attempt=1, error="c"),
    "orchestrator_lost": ev.OrchestratorLost(**B, attempt=1, orchestrator="o1", silent_s=20),
    "retry_scheduled": ev.RetryScheduled(
        **B, attempt=1, next_attempt=2, reason="exit_code", error="e", due_at=T0, backoff_s=1
    ),
}

ACTIVE = {"starting", "running"}
LIVE = {"scheduled", "queued", *ACTIVE}
TERMINAL_EVENT = {
    "job_succeeded",
    "job_failed",
    "job_timed_out",
    "retry_scheduled",
    "orchestrator_lost",
    "resource_intended",
}
# status -> event types that apply from it; everything else must be refused.
ALLOWED: dict[str, set[str]] = {
    status: (
        ({"job_scheduled", "schedule_fired", "job_queued"} if status == "scheduled" else set())
        | ({"job_claimed"} if status == "queued" else set())
        | ({"container_started"} if status == "starting" else set())
        | ({"usage_recorded"} if status == "running" else set())
        | (TERMINAL_EVENT if status in ACTIVE else set())
        | ({"cancel_requested", "job_cancelled"} if status in LIVE else set())
        # A job that cannot be delivered fails before it starts (FailUndeliverable).
        | ({"job_failed"} if status in LIVE else set())
        | ({"resource_released"} if status not in {"scheduled", "queued", "cancelled"} else set())
    )
    for status in STATES
}
RESULT = {
    "job_queued": "queued",
    "job_claimed": "starting",
    "container_started": "running",
    "job_succeeded": "succeeded",
    "job_failed": "failed",
    "job_timed_out": "timed_out",
    "job_cancelled": "cancelled",
    "retry_scheduled": "scheduled",
}


def job_in(status: str) -> Job:
    s = Scenario()
    s.given(*STATES[status])
    job = s.job
    assert job is not None and job.status == status
    return job


@pytest.mark.parametrize("status", list(STATES))
@pytest.mark.parametrize("event_type", list(EVENTS))
def test_transition(status: str, event_type: str) -> None:
    job = job_in(status)
    event = EVENTS[event_type]
    if event_type in ALLOWED[status]:
        after = evolve(job, event)
        assert after.status == RESULT.get(event_type, status)
        assert after.version == job.version + 1
    else:
        with pytest.raises(Rejected) as refused:
            evolve(job, event)
        assert event_type in str(refused.value) or isinstance(refused.value, StaleAttempt)


def test_the_first_event_must_be_a_submission() -> None:
    with pytest.raises(IllegalTransition, match="no such job yet"):
        evolve(None, EVENTS["job_queued"])


def test_the_refusal_names_the_transition_and_why() -> None:
    with pytest.raises(IllegalTransition) as refused:
        evolve(job_in("succeeded"), EVENTS["job_claimed"])
    assert refused.value.status == "succeeded"
    assert refused.value.event_type == "job_claimed"
    assert "only a queued job can be claimed" in str(refused.value)


def test_an_event_applied_twice_changes_nothing() -> None:
    job = job_in("queued")
    once = evolve(job, EVENTS["job_claimed"])
    assert evolve(once, EVENTS["job_claimed"]) is once
