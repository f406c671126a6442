"""Usage in the core: judging limits, words, decide for ReportUsage, and the fold keeping
the latest figures (hypothesis properties)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.core import codec
from dockyard.core.commands import Context, ReportExit, ReportUsage
from dockyard.core.decide import decide
from dockyard.core.errors import NotTheHolder
from dockyard.core.events import (
    ContainerStarted,
    Event,
    JobClaimed,
    JobQueued,
    JobSubmitted,
    JobSucceeded,
    UsageRecorded,
)
from dockyard.core.spec import JobSpec
from dockyard.core.state import Job, fold
from dockyard.core.usage import (
    Counters,
    Limits,
    Usage,
    disk_hit,
    limit_words,
    limits_hit,
    merged,
    usage_of,
)
from dockyard.core.view import job_view

JOB = "01a25061-ad21-78cb-9002-b5fd3a26eacc"
T0 = datetime(2026, 12, 7, tzinfo=UTC)
LIMITS = Limits(memory_mb=512, pids=32, cpus=0.5)
_ids = iter(range(10**9))


def new_id() -> str:
    return f"e{next(_ids)}"


def running_job() -> Job:
    spec = msgspec.convert({"image": "busybox"}, JobSpec)
    events: list[Event] = [
        JobSubmitted(event_id=new_id(), job_id=JOB, at=T0, tenant="t", spec=spec),
        JobQueued(event_id=new_id(), job_id=JOB, at=T0, attempt=1, queue="default"),
        JobClaimed(event_id=new_id(), job_id=JOB, at=T0, attempt=1, orchestrator="o1"),
        ContainerStarted(
            event_id=new_id(), job_id=JOB, at=T0, attempt=1, container_id="c", orchestrator="o1"
        ),
    ]
    job = fold(events)
    assert job is not None
    return job


def ctx() -> Context:
    return Context(job_id=JOB, now=T0 + timedelta(seconds=5))


def test_limits_judged_from_a_reading() -> None:
    calm = Counters(memory_bytes=10 << 20, pids_current=3, cpu_periods=10, cpu_throttled_periods=2)
    assert limits_hit(calm, usage_of(calm), LIMITS) == ()
    bomb = Counters(pids_current=32, pids_max_events=100)
    assert limits_hit(bomb, usage_of(bomb), LIMITS) == ("pids",)
    oom = Counters(memory_bytes=100 << 20, oom_kills=1)
    assert limits_hit(oom, usage_of(oom), LIMITS) == ("memory",)
    at_limit = Counters(memory_peak=512 << 20)
    assert limits_hit(at_limit, usage_of(at_limit), LIMITS) == ("memory",)
    held = Counters(cpu_periods=100, cpu_throttled_periods=51)
    assert limits_hit(held, usage_of(held), LIMITS) == ("cpu",)


def test_limits_in_words() -> None:
    hits = ("memory", "pids", "cpu", disk_hit("/tmp"))
    assert limit_words(hits, LIMITS, {"/tmp": 64}) == (
        "the job reached its memory limit of 512 MiB; "
        "the job reached its limit of 32 processes (fork failed); "
        "the job was held to its 0.5 CPUs for most of its run; "
        "/tmp is full (its size is 64 MiB)"
    )
    assert limit_words((disk_hit("/work"),), LIMITS) == "/work is full"
    assert limit_words((), LIMITS) == ""


def test_report_usage_records_new_figures_once() -> None:
    job = running_job()
    command = ReportUsage(attempt=1, orchestrator="o1", usage=Usage(cpu_s=1.5), limits_hit=())
    [event] = decide(job, command, ctx(), new_id)
    assert isinstance(event, UsageRecorded)
    after = fold([event], job)
    assert after is not None and after.usage == Usage(cpu_s=1.5)
    assert decide(after, command, ctx(), new_id) == []  # the same figures again: nothing


def test_report_usage_of_another_attempt_or_a_finished_job_is_dropped() -> None:
    job = running_job()
    stale = ReportUsage(attempt=2, orchestrator="o1", usage=Usage(cpu_s=1))
    assert decide(job, stale, ctx(), new_id) == []
    [done] = decide(job, ReportExit(attempt=1, exit_code=0, orchestrator="o1"), ctx(), new_id)
    finished = fold([done], job)
    late = ReportUsage(attempt=1, orchestrator="o1", usage=Usage(cpu_s=9))
    assert decide(finished, late, ctx(), new_id) == []


def test_report_usage_from_another_orchestrator_is_refused() -> None:
    forged = ReportUsage(attempt=1, orchestrator="o2", usage=Usage(cpu_s=1))
    with pytest.raises(NotTheHolder):
        decide(running_job(), forged, ctx(), new_id)


def test_the_exit_carries_the_final_usage_into_the_view() -> None:
    job = running_job()
    final = Usage(cpu_s=2.0, memory_peak_mb=48.5, pids_peak=13)
    report = ReportExit(
        attempt=1,
        exit_code=2,
        orchestrator="o1",
        error="the command exited with code 2; the job reached its limit of 32 processes",
        usage=final,
        limits_hit=("pids",),
    )
    events = decide(job, report, ctx(), new_id)
    after = fold(events, job)
    assert after is not None and after.status == "failed"
    view = job_view(after)
    assert view.usage == final and view.limits_hit == ["pids"]
    assert view.error is not None and "32 processes" in view.error


def test_an_earlier_versions_terminal_event_decodes_without_usage() -> None:
    old = (
        b'{"type":"job_succeeded","event_id":"e","job_id":"' + JOB.encode() + b'",'
        b'"at":"2026-12-07T00:00:00Z","v":1,"attempt":1,"exit_code":0}'
    )
    event = codec.decode(old)
    assert isinstance(event, JobSucceeded)
    assert (event.usage, event.limits_hit) == (None, ())
    after = fold([event], running_job())
    assert after is not None and after.usage == Usage()  # what it had: no figures lost


usages = st.builds(
    Usage,
    cpu_s=st.floats(0, 1e6, allow_nan=False),
    memory_peak_mb=st.floats(0, 1e6, allow_nan=False),
    pids_peak=st.integers(0, 10**6),
)
hit_sets = st.lists(
    st.sampled_from(["memory", "pids", "cpu", "disk:/tmp", "disk:/work"]), max_size=3
).map(tuple)


@given(st.lists(st.tuples(usages, hit_sets), min_size=1, max_size=20), st.booleans())
def test_the_fold_keeps_the_latest_usage_and_every_limit_hit(
    samples: list[tuple[Usage, tuple[str, ...]]], redeliver: bool
) -> None:
    job = running_job()
    events: list[Event] = [
        UsageRecorded(event_id=new_id(), job_id=JOB, at=T0, attempt=1, usage=usage, limits_hit=hits)
        for usage, hits in samples
    ]
    if redeliver:  # a redelivered earlier event changes nothing
        events.append(events[0])
    after = fold(events, job)
    assert after is not None
    assert after.usage == samples[-1][0]
    assert set(after.limits_hit) == {hit for _, hits in samples for hit in hits}
    assert after.limits_hit == merged(after.limits_hit)  # in the stable order


@given(usages, usages)
def test_higher_never_lowers_a_figure(a: Usage, b: Usage) -> None:
    from dockyard.core.usage import higher

    both = higher(a, b)
    assert both.cpu_s >= max(a.cpu_s, b.cpu_s) and both.pids_peak >= max(a.pids_peak, b.pids_peak)
    assert higher(both, a) == both


def test_the_job_containers_limits_are_its_share_with_sidecars() -> None:
    body = {
        "image": "busybox",
        "resources": {"cpus": 2.0, "memory_mb": 512, "pids": 64},
        "sidecars": [{"name": "db", "image": "busybox"}],
    }
    spec = msgspec.convert(body, JobSpec)
    assert Limits.of_job(spec) == Limits(memory_mb=256, pids=32, cpus=1.0)
    alone = msgspec.convert({"image": "busybox", "resources": {"pids": 64}}, JobSpec)
    assert Limits.of_job(alone).pids == 64
