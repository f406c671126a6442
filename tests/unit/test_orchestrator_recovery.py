"""After a restart, what the previous process left is ended, reported and removed."""

from __future__ import annotations

import asyncio
import math

import msgspec

from dockyard.bus.names import LABEL_JOB
from dockyard.bus.protocol import ReportCommand
from dockyard.core.commands import ReleaseResource, ReportExit
from dockyard.core.log_line import LogLine
from dockyard.core.spec import JobSpec
from dockyard.orchestrator.recovery import Recovery
from dockyard.orchestrator.registry import Registry
from dockyard.runtime import FakeRuntime, Script, plan_job

IMAGE = "busybox:latest"


class Reports:
    def __init__(self) -> None:
        self.sent: list[tuple[str, ReportCommand]] = []

    async def send(self, job_id: str, command: ReportCommand) -> None:
        self.sent.append((job_id, command))


class Logs:
    def __init__(self) -> None:
        self.lines: list[LogLine] = []

    async def publish(self, lines: list[LogLine]) -> None:
        self.lines.extend(lines)

    async def flush(self) -> None:
        return

    def abandon(self) -> None:
        return


async def leave_behind(
    runtime: FakeRuntime,
    job_id: str,
    *,
    start: bool,
    sidecar: bool,
    timeout_s: float = 3600,
    deployment: str | None = None,
) -> None:
    """What a dead orchestrator `o-1` left: created (and maybe started) containers."""
    body: dict[str, object] = {"image": IMAGE, "command": [job_id], "timeout_s": timeout_s}
    if sidecar:
        body["sidecars"] = [{"name": "db", "image": IMAGE}]
    spec = msgspec.convert(body, JobSpec)
    plan = plan_job(spec, job_id=job_id, attempt=1, orchestrator="o-1", deployment=deployment)
    if plan.network is not None:
        await runtime.create_network(plan.network)
    for sidecar_plan in plan.sidecars:
        await runtime.start(await runtime.create_container(sidecar_plan))
    container = await runtime.create_container(plan.job)
    if start:
        await runtime.start(container)


async def test_recovery_stops_reports_and_removes_what_was_left() -> None:
    runtime = FakeRuntime(images=[IMAGE])
    runtime.program(["running"], Script(runs_for_s=math.inf))
    runtime.program(["finished"], Script(exit_code=0))
    await leave_behind(runtime, "running", start=True, sidecar=True)
    await leave_behind(runtime, "finished", start=True, sidecar=False)
    await leave_behind(runtime, "created", start=False, sidecar=False)
    await asyncio.sleep(0.01)  # "finished" exits
    other = FakeRuntime(images=[IMAGE])  # another orchestrator's are not ours to touch
    reports, logs, registry = Reports(), Logs(), Registry()

    async def last_seq(job_id: str) -> int:
        return 7

    recovery = Recovery(
        runtime=runtime,
        reports=reports,
        registry=registry,
        orchestrator="o-1",
        stop_grace_s=0.01,
        log_sink=lambda job_id, attempt: logs,
        last_log_seq=last_seq,
    )
    found = await recovery.run()
    assert sorted(found) == [("created", 1), ("finished", 1), ("running", 1)]
    assert all(registry.is_done(job, 1) for job, _ in found)  # fenced before any claim
    assert await runtime.list_labelled({}) == []
    assert await other.list_labelled({}) == []
    exits = {job: c for job, c in reports.sent if isinstance(c, ReportExit)}
    assert (exits["running"].reason, exits["running"].exit_code) == ("orchestrator_lost", 143)
    assert (exits["finished"].reason, exits["finished"].exit_code) == (None, 0)
    assert (exits["created"].reason, exits["created"].exit_code) == ("orchestrator_lost", None)
    # Those that started vouch for their start (its report may never have been stored).
    assert exits["finished"].container_id is not None and exits["finished"].started_at
    assert exits["running"].container_id is not None and exits["running"].started_at
    assert (exits["created"].container_id, exits["created"].started_at) == (None, None)
    released = sorted(
        (job, c.kind, c.how) for job, c in reports.sent if isinstance(c, ReleaseResource)
    )
    assert released == [
        ("created", "container", "removed"),
        ("finished", "container", "removed"),
        ("running", "container", "removed"),
        ("running", "network", "removed"),
        ("running", "sidecar", "removed"),
    ]
    # Only the one stopped mid-run says why in its log, after the last stored line.
    assert [(line.seq, line.stream) for line in logs.lines] == [(8, "system")]
    assert logs.lines[0].text.startswith("orchestrator o-1 restarted while running attempt 1")


async def test_a_container_that_ran_to_its_timeout_is_reported_timed_out() -> None:
    """Stopped for its timeout just before the crash (it exited at the deadline), or found
    still running past it: either way the job timed out, whatever its exit code says."""
    runtime = FakeRuntime(images=[IMAGE])
    runtime.program(["stopped"], Script(runs_for_s=0.05, exit_code=143))
    runtime.program(["overdue"], Script(runs_for_s=math.inf))
    runtime.program(["quick"], Script(runs_for_s=0.0, exit_code=3))
    await leave_behind(runtime, "stopped", start=True, sidecar=False, timeout_s=0.05)
    await leave_behind(runtime, "overdue", start=True, sidecar=False, timeout_s=0.05)
    await leave_behind(runtime, "quick", start=True, sidecar=False, timeout_s=60)
    await asyncio.sleep(0.1)
    reports = Reports()

    async def last_seq(job_id: str) -> int:
        return 0

    await Recovery(
        runtime=runtime,
        reports=reports,
        registry=Registry(),
        orchestrator="o-1",
        stop_grace_s=0.01,
        log_sink=lambda job_id, attempt: Logs(),
        last_log_seq=last_seq,
    ).run()
    exits = {job: c for job, c in reports.sent if isinstance(c, ReportExit)}
    assert (exits["stopped"].reason, exits["stopped"].exit_code) == ("timed_out", 143)
    assert exits["stopped"].error is not None
    assert exits["stopped"].error.startswith("timed out after 0.05 s (found after orchestrator")
    assert exits["overdue"].reason == "timed_out"
    assert (exits["quick"].reason, exits["quick"].exit_code) == ("exit_code", 3)


async def test_recovery_never_removes_another_installations_containers_under_its_id() -> None:
    """Two installations on one engine whose orchestrators share an id: the one restarting
    recovers only what carries its own installation's id, by the engine's labels."""
    runtime = FakeRuntime(images=[IMAGE])
    runtime.program(["ours"], Script(runs_for_s=math.inf))
    runtime.program(["theirs"], Script(runs_for_s=math.inf))
    await leave_behind(runtime, "ours", start=True, sidecar=True, deployment="ours")
    await leave_behind(runtime, "theirs", start=True, sidecar=True, deployment="theirs")
    reports = Reports()

    async def last_seq(job_id: str) -> int:
        return 0

    found = await Recovery(
        runtime=runtime,
        reports=reports,
        registry=Registry(),
        orchestrator="o-1",
        stop_grace_s=0.01,
        log_sink=lambda job_id, attempt: Logs(),
        last_log_seq=last_seq,
        deployment="ours",
    ).run()

    assert found == [("ours", 1)]
    assert {job for job, _ in reports.sent} == {"ours"}
    left = await runtime.list_labelled({})
    assert {r.labels[LABEL_JOB] for r in left} == {"theirs"} and len(left) == 3
    assert [r.name for r in left if r.running] == ["dockyard-theirs-1"]  # never stopped
