"""The usage sampler with its faults injected: cgroup files out of reach (the engine's stats
stand in), a stats call that fails, a report that cannot be sent, a cgroup gone at exit; and
an attempt whose exit report carries the final figures and names the limit in words."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import msgspec
import pytest

from dockyard.bus.protocol import ReportCommand
from dockyard.core.commands import ReportExit, ReportUsage
from dockyard.core.spec import JobSpec
from dockyard.core.usage import Counters, Limits, Usage
from dockyard.orchestrator.attempt import Attempt, AttemptContext, Claim
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.images import Images
from dockyard.orchestrator.outcome import with_usage
from dockyard.orchestrator.usage_sampler import UsageSampler
from dockyard.runtime.fake import FakeRuntime, Script
from dockyard.runtime.hardening import container_name, plan_job
from dockyard.runtime.mount_space import space
from dockyard.runtime.ports import RuntimeUnavailable
from tests.unit.test_cgroups import V2

JOB = "01a25061-ad21-78cb-9002-b5fd3a26eacc"
IMAGE = "busybox:latest"


def job_spec(**fields: object) -> JobSpec:
    return msgspec.convert({"image": IMAGE, "resources": {"pids": 32}, **fields}, JobSpec)


class Reports:
    def __init__(self, fail: int = 0) -> None:
        self.sent: list[ReportCommand] = []
        self.fail = fail

    async def send(self, job_id: str, command: ReportCommand) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("NATS refused it")
        self.sent.append(command)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def started(runtime: FakeRuntime, spec: JobSpec) -> str:
    plan = plan_job(spec, job_id=JOB, attempt=1, orchestrator="o-1").job
    container_id = await runtime.create_container(plan)
    await runtime.start(container_id)
    return container_id


def sampler(
    runtime: FakeRuntime, reports: Reports, root: Path, clock: Clock | None = None
) -> UsageSampler:
    return UsageSampler(
        reports,
        runtime,
        orchestrator="o-1",
        sample_s=0.01,
        report_s=1.0,
        clock=clock or Clock(),
        cgroup_root=root,
    )


def fake_runtime(script: Script | None = None) -> FakeRuntime:
    return FakeRuntime(images=[IMAGE], script=lambda plan: script or Script(runs_for_s=math.inf))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_without_cgroup_files_the_engines_stats_stand_in(tmp_path: Path) -> None:
    runtime, reports, clock = fake_runtime(), Reports(), Clock()
    spec = job_spec()
    container_id = await started(runtime, spec)
    runtime.usage[container_name(JOB, 1)] = Counters(cpu_usec=1_500_000, pids_current=3)
    usage = sampler(runtime, reports, tmp_path, clock)
    usage.watch(JOB, 1, container_id, spec)
    usage.tick()  # read at the next tick (here: asked of the engine)
    await settle()
    clock.now = 1.0
    usage.tick()
    await settle()
    assert reports.sent == [
        ReportUsage(attempt=1, orchestrator="o-1", usage=Usage(cpu_s=1.5, pids_peak=3))
    ]
    clock.now = 2.0
    usage.tick()  # nothing changed: nothing sent
    await settle()
    assert len(reports.sent) == 1
    final = usage.finish(JOB)
    assert final is not None and final.usage == Usage(cpu_s=1.5, pids_peak=3)
    await runtime.stop(container_id, 0)


async def test_a_failing_stats_call_or_report_loses_only_that_sample(tmp_path: Path) -> None:
    runtime, reports, clock = fake_runtime(), Reports(fail=1), Clock()
    spec = job_spec()
    container_id = await started(runtime, spec)
    runtime.fail("usage_stats", RuntimeUnavailable("engine busy"))
    usage = sampler(runtime, reports, tmp_path, clock)
    usage.watch(JOB, 1, container_id, spec)
    usage.tick()  # the first stats call fails
    await settle()
    runtime.usage[container_name(JOB, 1)] = Counters(cpu_usec=2_000_000)
    usage.tick()
    await settle()
    clock.now = 1.0
    usage.tick()  # its report is refused (logged); the next changed reading goes
    await settle()
    assert reports.sent == []
    runtime.usage[container_name(JOB, 1)] = Counters(cpu_usec=3_000_000)
    usage.tick()
    await settle()
    clock.now = 2.0
    usage.tick()
    await settle()
    assert [c.usage.cpu_s for c in reports.sent if isinstance(c, ReportUsage)] == [3.0]
    usage.finish(JOB)
    await runtime.stop(container_id, 0)


def write_cgroup(root: Path, container_id: str, **changes: str) -> Path:
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    directory = root / "system.slice" / f"docker-{container_id}.scope"
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in {**V2, **changes}.items():
        (directory / name).write_text(text)
    return directory


async def test_the_final_figures_are_the_last_reading_while_it_ran(tmp_path: Path) -> None:
    runtime, reports = fake_runtime(), Reports()
    spec = job_spec()
    container_id = await started(runtime, spec)
    directory = write_cgroup(tmp_path, container_id, **{"pids.events": "max 9\n"})
    usage = sampler(runtime, reports, tmp_path)
    usage.watch(JOB, 1, container_id, spec)
    usage.tick()
    for path in directory.iterdir():  # the engine removes the cgroup as the container stops
        path.unlink()
    final = usage.finish(JOB)
    assert final is not None
    assert final.usage == Usage(
        cpu_s=2.5, memory_peak_mb=20.0, pids_peak=5, io_read_mb=0.0, cpu_throttled_s=0.04
    )
    assert final.limits_hit == ("memory", "pids")  # memory.events max 4 in the fixture
    assert usage.finish(JOB) is None  # not followed any more
    await runtime.stop(container_id, 0)


async def test_an_oom_kill_puts_the_peak_at_the_limit(tmp_path: Path) -> None:
    runtime, reports = fake_runtime(), Reports()
    spec = job_spec(resources={"memory_mb": 64})
    container_id = await started(runtime, spec)
    write_cgroup(tmp_path, container_id, **{"memory.events": "max 0\n", "memory.peak": "0\n"})
    usage = sampler(runtime, reports, tmp_path)
    usage.watch(JOB, 1, container_id, spec)
    final = usage.finish(JOB, oom_killed=True)
    assert final is not None
    assert (final.usage.memory_peak_mb, final.limits_hit) == (64.0, ("memory",))
    await runtime.stop(container_id, 0)


async def test_sampling_off_follows_nothing(tmp_path: Path) -> None:
    usage = UsageSampler(Reports(), fake_runtime(), orchestrator="o", sample_s=0, report_s=5)
    assert not usage.enabled
    usage.watch(JOB, 1, "x", job_spec())
    assert usage.finish(JOB) is None
    await usage.run()  # returns at once


def test_the_space_of_a_process_that_is_gone_is_unknown() -> None:
    assert space(2**22 + 7, "/tmp") is None


@pytest.mark.parametrize(
    ("report", "hits", "error"),
    [
        (
            ReportExit(attempt=1, exit_code=2, reason="exit_code", error="exit code 2"),
            ("pids",),
            "exit code 2; the job reached its limit of 32 processes (fork failed)",
        ),
        (
            ReportExit(attempt=1, exit_code=137, reason="oom_killed", error="out of memory"),
            ("memory", "disk:/tmp"),
            "out of memory; /tmp is full (its size is 64 MiB)",
        ),
        (ReportExit(attempt=1, exit_code=0), ("cpu",), None),  # a success says no error
    ],
)
def test_a_failed_report_names_its_limits(
    report: ReportExit, hits: tuple[str, ...], error: str | None
) -> None:
    limits = Limits(memory_mb=128, pids=32, cpus=1.0)
    named = with_usage(report, limits, usage=Usage(), hits=hits, disk_mb={"/tmp": 64})
    assert (named.error, named.limits_hit, named.usage) == (error, hits, Usage())


async def test_an_attempt_reports_its_usage_and_names_the_limit(tmp_path: Path) -> None:
    runtime = FakeRuntime(images=[IMAGE], script=lambda plan: Script(exit_code=2, runs_for_s=0.05))
    reports = Reports()
    config = OrchestratorConfig(orchestrator_id="o-1", stop_grace_s=0.05)
    usage = sampler(runtime, reports, tmp_path)
    real_start = runtime.start

    async def start_with_cgroup(container_id: str) -> None:
        write_cgroup(tmp_path, container_id, **{"pids.events": "max 3\n"})
        await real_start(container_id)

    runtime.start = start_with_cgroup  # type: ignore[method-assign]

    class Logs:
        async def publish(self, lines: object, *, last_seq: int | None = None) -> None: ...
        async def flush(self) -> None: ...
        def abandon(self) -> None: ...

    class Ticket:
        async def keep_alive(self) -> None:
            await asyncio.Event().wait()

        async def ack(self) -> None: ...

    context = AttemptContext(
        config=config,
        runtime=runtime,
        reports=reports,
        images=Images(runtime),
        log_sink=lambda job_id, attempt: Logs(),
        usage=usage,
    )
    claim = Claim(job_id=JOB, attempt=1, spec=job_spec())
    report = await Attempt(context, claim, Ticket()).run()  # type: ignore[arg-type]
    assert report.usage is not None and report.usage.cpu_s == 2.5
    assert "pids" in report.limits_hit
    assert report.error is not None
    assert report.error.endswith("; the job reached its limit of 32 processes (fork failed)")


async def test_where_cgroups_show_a_container_without_one_has_stopped(tmp_path: Path) -> None:
    runtime, reports = fake_runtime(), Reports()
    spec = job_spec()
    container_id = await started(runtime, spec)
    write_cgroup(tmp_path, "another-container")  # the files show here, not this one's
    runtime.usage[container_name(JOB, 1)] = Counters(cpu_usec=1)
    usage = sampler(runtime, reports, tmp_path)
    usage.watch(JOB, 1, container_id, spec)
    await settle()
    assert ("usage_stats", container_id) not in runtime.calls  # the engine is not asked
    final = usage.finish(JOB)
    assert final is not None and final.usage == Usage()
    await runtime.stop(container_id, 0)


async def test_a_failing_tick_does_not_end_sampling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = sampler(fake_runtime(), Reports(), tmp_path)
    ticks = 0

    def broken() -> None:
        nonlocal ticks
        ticks += 1
        raise RuntimeError("a bug")

    monkeypatch.setattr(usage, "tick", broken)
    task = asyncio.create_task(usage.run())
    await asyncio.sleep(0.1)  # sample_s is 0.01: several ticks, each failing
    assert not task.done() and ticks >= 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
