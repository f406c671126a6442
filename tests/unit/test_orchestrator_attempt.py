"""One attempt, end to end, on the in-memory runtime: every way it can end, in the right order."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
from typing import Any

import msgspec
import pytest

from dockyard.bus.protocol import ReportCommand
from dockyard.core.commands import (
    PlannedResource,
    RecordResource,
    ReleaseResource,
    ReportExit,
    ReportStarted,
)
from dockyard.core.log_line import LogLine
from dockyard.core.spec import JobSpec
from dockyard.orchestrator import resources
from dockyard.orchestrator.attempt import Attempt, AttemptContext, Claim
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.images import Images
from dockyard.orchestrator.outcome import StopRequest
from dockyard.runtime import (
    ContainerError,
    ContainerPlan,
    FakeRuntime,
    RuntimeUnavailable,
    Script,
)
from dockyard.runtime.hardening import container_name
from dockyard.sealing import KeyRing, job_scope, seal_spec

IMAGE = "busybox:latest"
JOB = "job-1"


class Timeline:
    """Reports, published lines and acks, in the order they happened."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.entries: list[tuple[str, Any]] = []

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.entries]


class FakeReports:
    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.sent: list[ReportCommand] = []

    async def send(self, job_id: str, command: ReportCommand) -> None:
        assert job_id == JOB
        # What the engine had been asked when the report was stored.
        calls = list(self.timeline.runtime.calls)
        self.timeline.entries.append((type(command).__name__, (command, calls)))
        self.sent.append(command)


class FakeLogs:
    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.lines: list[LogLine] = []
        self.finals: list[tuple[int, int]] = []  # (lines before, last_seq) of final batches

    async def publish(self, lines: list[LogLine], *, last_seq: int | None = None) -> None:
        self.lines.extend(lines)
        if lines:
            self.timeline.entries.append(("lines", len(lines)))
        if last_seq is not None:
            self.finals.append((len(self.lines), last_seq))

    async def flush(self) -> None:
        self.timeline.entries.append(("flush", None))

    def abandon(self) -> None:
        self.timeline.entries.append(("abandon", None))


class FakeTicket:
    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline

    def adopt(self, msg: Any) -> bool:
        raise AssertionError("not redelivered in these tests")

    async def keep_alive(self) -> None:
        await asyncio.Event().wait()

    async def ack(self) -> None:
        self.timeline.entries.append(("ack", None))


class Harness:
    def __init__(self, runtime: FakeRuntime, **config: Any) -> None:
        self.runtime = runtime
        self.timeline = Timeline(runtime)
        self.reports = FakeReports(self.timeline)
        self.logs = FakeLogs(self.timeline)
        fields = {"orchestrator_id": "o-1", "stop_grace_s": 0.05, **config}
        self.context = AttemptContext(
            config=OrchestratorConfig(**fields),
            runtime=runtime,
            reports=self.reports,
            images=Images(runtime),
            log_sink=lambda job_id, attempt: self.logs,
        )

    def attempt(
        self,
        spec: JobSpec,
        attempt: int = 1,
        log_seq: int = 0,
        recorded: list[PlannedResource] | None = None,
        log_bytes: int = 0,
    ) -> Attempt:
        claim = Claim(
            job_id=JOB,
            attempt=attempt,
            spec=spec,
            log_seq=log_seq,
            log_bytes=log_bytes,
            recorded=recorded or [],
        )

        def engine_clean() -> None:
            self.timeline.entries.append(("engine_clean", list(self.runtime.calls)))

        return Attempt(self.context, claim, FakeTicket(self.timeline), on_engine_clean=engine_clean)

    def exit(self) -> ReportExit:
        exits = [c for c in self.reports.sent if isinstance(c, ReportExit)]
        assert len(exits) == 1
        return exits[0]

    def texts(self) -> list[tuple[str, str]]:
        return [(line.stream, line.text) for line in self.logs.lines]


def job_spec(*command: str, **fields: Any) -> JobSpec:
    return msgspec.convert({"image": IMAGE, "command": list(command), **fields}, JobSpec)


def scripted(script: Script, images: tuple[str, ...] = (IMAGE,)) -> FakeRuntime:
    return FakeRuntime(images=images, script=lambda plan: script)


async def until_waiting(runtime: FakeRuntime) -> None:
    """Until the attempt waits for its running container."""
    for _ in range(1000):
        if any(op == "wait" for op, _ in runtime.calls):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the container never ran")


async def test_success_reports_in_the_order_that_makes_it_safe() -> None:
    runtime = scripted(Script(output=(("stdout", b"hello\n"), ("stderr", b"oops\n"))))
    harness = Harness(runtime)
    report = await harness.attempt(job_spec("run")).run()
    assert (report.exit_code, report.reason) == (0, None)
    # The exit vouches for the start: the scheduler records it if the start report is late.
    started = dict(harness.timeline.entries)["ReportStarted"][0]
    assert isinstance(started, ReportStarted)
    assert report.container_id == started.container_id and report.started_at is not None
    kinds = harness.timeline.kinds()
    # The intent is stored before the create; every line before the exit report; the offer
    # is acked once the exit is stored (alongside the cleanup); the container is removed,
    # the slot freed, then the removal recorded.
    assert kinds.index("RecordResource") < kinds.index("ReportStarted")
    last_flush = max(i for i, kind in enumerate(kinds) if kind == "flush")
    assert kinds.index("lines") < last_flush < kinds.index("ReportExit")
    assert kinds.index("ReportExit") < kinds.index("ack")
    assert kinds.index("ReportExit") < kinds.index("engine_clean") < kinds.index("ReleaseResource")
    intent, calls_at_intent = dict(harness.timeline.entries)["RecordResource"]
    assert isinstance(intent, RecordResource) and intent.kind == "container"
    assert not any(op == "create_container" for op, _ in calls_at_intent)
    release, calls_at_release = dict(harness.timeline.entries)["ReleaseResource"]
    assert isinstance(release, ReleaseResource) and release.how == "removed"
    assert ("remove", runtime.calls[-1][1]) in calls_at_release
    assert harness.texts() == [("stdout", "hello"), ("stderr", "oops")]
    assert [line.seq for line in harness.logs.lines] == [1, 2]
    # The last batch says it is the last, after every line: a restart can tell the log whole.
    assert harness.logs.finals == [(2, 2)]
    assert await runtime.list_labelled({}) == []


async def test_an_attempt_without_output_still_ends_its_log_and_notes_come_before() -> None:
    harness = Harness(scripted(Script()))
    await harness.attempt(job_spec("run"), log_seq=5).run()
    assert harness.logs.lines == [] and harness.logs.finals == [(0, 5)]
    harness = Harness(scripted(Script(exit_code=137, oom_killed=True)))
    await harness.attempt(job_spec("run"), attempt=2, log_seq=5).run()
    seqs = [line.seq for line in harness.logs.lines]
    assert harness.logs.finals == [(len(seqs), seqs[-1])]


async def test_lines_continue_after_the_given_seq_and_secrets_are_masked() -> None:
    runtime = scripted(Script(output=(("stdout", b"token is s3cret!\n"),)))
    harness = Harness(runtime)
    spec = job_spec("run", env={"TOKEN": "s3cret"}, secrets=["TOKEN"])
    await harness.attempt(spec, attempt=2, log_seq=41).run()
    assert [(line.seq, line.text) for line in harness.logs.lines] == [
        (42, "attempt 2 of 1"),
        (43, "token is ***!"),
    ]


async def test_a_sidecar_gets_its_real_secret_and_the_jobs_log_masks_it() -> None:
    envs: dict[str, list[str]] = {}

    def script(plan: ContainerPlan) -> Script:
        envs[plan.role] = list(plan.config["Env"])
        return Script(output=(("stdout", b"db password pg-s3cret\n"),))

    harness = Harness(FakeRuntime(images=(IMAGE,), script=script))
    sidecar = {"name": "db", "image": IMAGE, "env": {"PW": "pg-s3cret"}, "secrets": ["PW"]}
    await harness.attempt(job_spec("run", sidecars=[sidecar])).run()
    assert "PW=pg-s3cret" in envs["sidecar"]
    assert ("stdout", "db password ***") in harness.texts()


async def test_the_log_cap_counts_what_earlier_attempts_wrote() -> None:
    runtime = scripted(Script(output=(("stdout", b"one more line\n"),)))
    harness = Harness(runtime, log_cap_bytes=100)
    report = await harness.attempt(job_spec("run"), attempt=2, log_seq=9, log_bytes=95).run()
    assert report.exit_code == 0  # the job is not stopped for it
    texts = harness.texts()
    assert texts[1][0] == "system" and texts[1][1].startswith("log limit of 100 bytes reached")
    assert ("stdout", "one more line") not in texts[:2]


async def test_non_zero_exit_and_oom() -> None:
    harness = Harness(scripted(Script(exit_code=3)))
    report = await harness.attempt(job_spec("run")).run()
    assert (report.exit_code, report.reason) == (3, "exit_code")
    harness = Harness(scripted(Script(exit_code=137, oom_killed=True)))
    report = await harness.attempt(job_spec("run", resources={"memory_mb": 64})).run()
    assert (report.exit_code, report.reason) == (137, "oom_killed")
    assert report.error == "out of memory: killed at the 64 MiB limit (exit code 137)"


async def test_timeout_stops_with_the_grace_and_reports_the_duration() -> None:
    harness = Harness(scripted(Script(runs_for_s=math.inf, ignores_term=True)))
    report = await harness.attempt(job_spec("run", timeout_s=0.1)).run()
    assert (report.reason, report.exit_code) == ("timed_out", 137)
    # The timeout and the grace, to the microsecond the duration is given in (in floats,
    # 0.1 + 0.05 is 0.15000000000000002).
    assert round(0.1 + 0.05, 6) <= report.duration_s < 1.0
    assert report.error == "timed out after 0.1 s; it exited with code 137"
    assert harness.texts()[-1] == (
        "system",
        "timed out after 0.1 s: stopping the container (SIGTERM, SIGKILL after 0.05 s)",
    )


async def test_cancel_while_running() -> None:
    harness = Harness(scripted(Script(runs_for_s=math.inf)))
    attempt = harness.attempt(job_spec("run"))
    task = asyncio.create_task(attempt.run())
    await until_waiting(harness.runtime)
    attempt.request_stop(StopRequest("cancel", "cancelled by ann"))
    attempt.request_stop(StopRequest("shutdown", "ignored: the first request wins"))
    report = await task
    assert (report.reason, report.exit_code, report.error) == ("cancelled", 143, "cancelled by ann")
    assert await harness.runtime.list_labelled({}) == []


def claimed_container(attempt: int = 1) -> list[PlannedResource]:
    return [PlannedResource(kind="container", name=container_name(JOB, attempt))]


async def test_a_container_the_claim_recorded_is_not_intended_again() -> None:
    harness = Harness(scripted(Script()))
    report = await harness.attempt(job_spec("run"), recorded=claimed_container()).run()
    assert report.exit_code == 0
    assert "RecordResource" not in harness.timeline.kinds()
    [release] = [c for c in harness.reports.sent if isinstance(c, ReleaseResource)]
    assert (release.name, release.how) == (container_name(JOB, 1), "removed")


async def test_a_recorded_container_never_created_is_released_as_gone() -> None:
    harness = Harness(scripted(Script()))
    attempt = harness.attempt(job_spec("run"), recorded=claimed_container())
    attempt.request_stop(StopRequest("cancel", "cancelled by ann"))
    await attempt.run()
    [release] = [c for c in harness.reports.sent if isinstance(c, ReleaseResource)]
    assert (release.kind, release.name, release.how) == (
        "container",
        container_name(JOB, 1),
        "gone",
    )


async def test_stop_before_the_container_exists_creates_nothing() -> None:
    harness = Harness(scripted(Script()))
    attempt = harness.attempt(job_spec("run"))
    attempt.request_stop(StopRequest("cancel", "cancelled by ann"))
    report = await attempt.run()
    assert (report.reason, report.exit_code) == ("cancelled", None)
    assert report.error == "cancelled by ann (before the container started)"
    assert not any(op == "create_container" for op, _ in harness.runtime.calls)
    assert [type(c) for c in harness.reports.sent] == [ReportExit]


async def test_image_pull_failure_is_reported_in_words_not_the_engines() -> None:
    harness = Harness(FakeRuntime())
    report = await harness.attempt(job_spec("run")).run()
    assert report.reason == "image_pull_failed"
    assert report.error == "image could not be pulled from docker.io: not found"
    assert report.container_id is None and report.started_at is None
    assert harness.texts() == [("system", f"image pull failed: {report.error}")]
    assert [type(c) for c in harness.reports.sent] == [ReportExit]


async def test_an_image_removed_since_it_was_seen_is_pulled_again() -> None:
    runtime = FakeRuntime(images=[IMAGE], pullable=[IMAGE])
    harness = Harness(runtime)
    await harness.attempt(job_spec("run")).run()
    runtime.images.clear()  # someone ran `docker image prune`
    harness.reports.sent.clear()
    report = await Attempt(
        harness.context,
        Claim(job_id=JOB, attempt=2, spec=job_spec("run")),
        FakeTicket(harness.timeline),
    ).run()
    assert (report.exit_code, report.reason) == (0, None)
    intents = [c for c in harness.reports.sent if isinstance(c, RecordResource)]
    assert len(intents) == 1  # one ledger entry for the one container


async def test_engine_error_on_start_is_a_container_error_and_cleans_up() -> None:
    runtime = scripted(Script())
    runtime.fail("start", ContainerError('start container: exec: "nope": not found'))
    harness = Harness(runtime)
    report = await harness.attempt(job_spec("nope")).run()
    assert (report.reason, report.exit_code) == ("container_error", None)
    assert report.error == 'start container: exec: "nope": not found'
    assert await runtime.list_labelled({}) == []
    released = [c for c in harness.reports.sent if isinstance(c, ReleaseResource)]
    assert [(r.kind, r.how) for r in released] == [("container", "removed")]


async def test_an_engine_that_stops_answering_mid_wait_ends_it_as_a_container_error() -> None:
    runtime = scripted(Script(output=(("stdout", b"hi\n"),)))
    runtime.fail("wait", RuntimeUnavailable("wait: Docker did not answer (connection reset)"))
    harness = Harness(runtime)
    report = await harness.attempt(job_spec("run")).run()
    assert (report.reason, report.exit_code) == ("container_error", None)
    assert report.error == "wait: Docker did not answer (connection reset)"
    assert harness.texts()[-1] == (
        "system",
        "container error: wait: Docker did not answer (connection reset)",
    )
    assert await runtime.list_labelled({}) == []
    released = [c for c in harness.reports.sent if isinstance(c, ReleaseResource)]
    assert [(r.kind, r.how) for r in released] == [("container", "removed")]


async def test_a_removal_the_engine_fails_once_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resources, "REMOVE_RETRY_DELAYS_S", (0.0, 0.0))
    runtime = scripted(Script())
    runtime.fail("remove", RuntimeUnavailable("remove: Docker did not answer (restarting)"))
    harness = Harness(runtime)
    report = await harness.attempt(job_spec("run")).run()
    assert (report.exit_code, report.reason) == (0, None)
    assert await runtime.list_labelled({}) == []
    released = [c for c in harness.reports.sent if isinstance(c, ReleaseResource)]
    assert [(r.kind, r.how) for r in released] == [("container", "removed")]


async def test_a_removal_that_keeps_failing_stays_in_the_ledger_for_the_janitor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resources, "REMOVE_RETRY_DELAYS_S", (0.0, 0.0))
    runtime = scripted(Script())
    runtime.fail("remove", RuntimeUnavailable("remove: Docker did not answer"), times=3)
    harness = Harness(runtime)
    report = await harness.attempt(job_spec("run")).run()
    assert (report.exit_code, report.reason) == (0, None)  # the job's outcome stands
    assert [op for op, _ in runtime.calls].count("remove") == 3
    (left,) = await runtime.list_labelled({})
    assert left.name == container_name(JOB, 1)
    # Intended and never released: the janitor's ledger sweep removes it.
    assert not any(isinstance(c, ReleaseResource) for c in harness.reports.sent)
    assert harness.timeline.kinds().count("engine_clean") == 1  # the slot is not held forever


async def test_a_removal_that_failed_slowly_is_not_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if the engine had timed out: more tries would hold the slot (and a stop) for minutes.
    monkeypatch.setattr(resources, "QUICK_FAILURE_S", -1.0)
    runtime = scripted(Script())
    runtime.fail("remove", RuntimeUnavailable("remove: Docker did not answer in time"), times=3)
    harness = Harness(runtime)
    await harness.attempt(job_spec("run")).run()
    assert [op for op, _ in runtime.calls].count("remove") == 1
    assert len(await runtime.list_labelled({})) == 1  # for the janitor


async def test_cancelling_the_task_still_removes_everything() -> None:
    harness = Harness(scripted(Script(runs_for_s=math.inf)))
    spec = job_spec("run", sidecars=[{"name": "db", "image": IMAGE}])
    task = asyncio.create_task(harness.attempt(spec).run())
    await until_waiting(harness.runtime)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await harness.runtime.list_labelled({}) == []
    released = [c for c in harness.reports.sent if isinstance(c, ReleaseResource)]
    assert [r.kind for r in released] == ["container", "sidecar", "network"]
    assert not any(isinstance(c, ReportExit) for c in harness.reports.sent)


async def test_the_slot_is_free_once_the_engine_holds_nothing_of_the_attempt() -> None:
    harness = Harness(scripted(Script()))
    spec = job_spec("run", sidecars=[{"name": "db", "image": IMAGE}])
    await harness.attempt(spec).run()
    entries = harness.timeline.entries
    kinds = harness.timeline.kinds()
    assert kinds.count("engine_clean") == 1
    _, calls = entries[kinds.index("engine_clean")]
    removed = [target for op, target in calls if op in ("remove", "remove_network")]
    assert len(removed) == 3  # container, sidecar, network: all gone before the slot is free
    assert kinds.index("engine_clean") < kinds.index("ReleaseResource")


async def test_network_and_sidecars_come_first_and_go_last() -> None:
    harness = Harness(scripted(Script()))
    spec = job_spec("run", sidecars=[{"name": "db", "image": IMAGE}])
    await harness.attempt(spec).run()
    kinds = [
        (type(c).__name__, c.kind)
        for c in harness.reports.sent
        if isinstance(c, RecordResource | ReleaseResource)
    ]
    assert kinds == [
        ("RecordResource", "network"),
        ("RecordResource", "sidecar"),
        ("RecordResource", "container"),
        ("ReleaseResource", "container"),
        ("ReleaseResource", "sidecar"),
        ("ReleaseResource", "network"),
    ]
    started = [c for c in harness.reports.sent if isinstance(c, ReportStarted)]
    assert len(started) == 1 and started[0].orchestrator == "o-1"


async def test_sealed_secrets_are_opened_for_the_container_and_masked_in_its_log() -> None:
    envs: dict[str, list[str]] = {}

    def script(plan: ContainerPlan) -> Script:
        envs[plan.role] = list(plan.config["Env"])
        return Script(output=(("stdout", b"token s3cret-1, pw pg-s3cret\n"),))

    ring = KeyRing.of(os.urandom(32))
    harness = Harness(FakeRuntime(images=(IMAGE,), script=script), secrets=ring)
    sidecar = {"name": "db", "image": IMAGE, "env": {"PW": "pg-s3cret"}, "secrets": ["PW"]}
    spec = job_spec("run", env={"TOKEN": "s3cret-1"}, secrets=["TOKEN"], sidecars=[sidecar])
    report = await harness.attempt(seal_spec(spec, ring, job_scope(JOB))).run()
    assert report.exit_code == 0
    assert "TOKEN=s3cret-1" in envs["job"] and "PW=pg-s3cret" in envs["sidecar"]
    assert ("stdout", "token ***, pw ***") in harness.texts()


@pytest.mark.parametrize("holder_has", ["another key", "no key"])
async def test_secrets_sealed_with_a_key_it_lacks_fail_the_attempt_in_words(
    holder_has: str,
) -> None:
    runtime = scripted(Script())
    mine = (
        KeyRing.of(os.urandom(32), holder="orchestrator") if holder_has == "another key" else None
    )
    harness = Harness(runtime, secrets=mine)
    sealed = seal_spec(
        job_spec("run", env={"TOKEN": "s3cret-1"}, secrets=["TOKEN"]),
        KeyRing.of(os.urandom(32)),
        job_scope(JOB),
    )
    report = await harness.attempt(sealed).run()
    assert report.reason == "container_error"
    assert report.error is not None and "sealed" in report.error
    if holder_has == "another key":
        assert report.error == (
            "its secrets were sealed with a key this orchestrator does not have"
        )
    assert not any(op == "create_container" for op, _ in runtime.calls)
    assert ("system", f"container error: {report.error}") in harness.texts()


async def test_a_sealed_value_copied_from_another_job_does_not_open() -> None:
    runtime = scripted(Script())
    ring = KeyRing.of(os.urandom(32))
    harness = Harness(runtime, secrets=ring)
    spec = job_spec("run", env={"TOKEN": "s3cret-1"}, secrets=["TOKEN"])
    report = await harness.attempt(seal_spec(spec, ring, job_scope("someone-elses"))).run()
    assert report.reason == "container_error"
    assert report.error is not None and "another job" in report.error
    assert not any(op == "create_container" for op, _ in runtime.calls)


@pytest.mark.parametrize("enforced", [False, True])
async def test_an_egress_job_claimed_where_the_deny_list_is_not_enforced_never_runs(
    enforced: bool,
) -> None:
    runtime = scripted(Script(output=(("stdout", b"out\n"),)))
    harness = Harness(runtime)
    # As from an offer of an earlier version, which did not say egress: claimed anyway.
    harness.context = dataclasses.replace(harness.context, egress_ok=lambda: enforced)
    report = await harness.attempt(job_spec("run", network="egress")).run()

    if enforced:
        assert (report.reason, report.exit_code) == (None, 0)
        return
    assert report.reason == "container_error"
    assert report.error == (
        "this orchestrator cannot enforce the egress deny list, so it did not run the job"
    )
    assert not any(op in ("create_network", "create_container") for op, _ in runtime.calls)
    assert harness.texts()[-1][0] == "system"
