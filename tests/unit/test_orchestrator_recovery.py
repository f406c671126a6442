"""After a restart, what the previous process left is ended, reported and removed."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import msgspec

from dockyard.bus.names import LABEL_JOB
from dockyard.bus.protocol import ReportCommand
from dockyard.core.commands import ReleaseResource, ReportExit
from dockyard.core.log_line import LogLine
from dockyard.core.spec import JobSpec
from dockyard.orchestrator.ports import LastBatch
from dockyard.orchestrator.recovery import Recovery
from dockyard.orchestrator.registry import Registry
from dockyard.runtime import FakeRuntime, Script, plan_job

IMAGE = "busybox:latest"
JOBS = ("running", "finished", "created")


class Reports:
    def __init__(self) -> None:
        self.sent: list[tuple[str, ReportCommand]] = []

    async def send(self, job_id: str, command: ReportCommand) -> None:
        self.sent.append((job_id, command))


class Logs:
    def __init__(self) -> None:
        self.lines: list[LogLine] = []

    async def publish(self, lines: list[LogLine], *, last_seq: int | None = None) -> None:
        self.lines.extend(lines)

    async def flush(self) -> None:
        return

    def abandon(self) -> None:
        return


def recovery(
    runtime: FakeRuntime,
    reports: Reports,
    *,
    logs: Logs | None = None,
    registry: Registry | None = None,
    last: dict[str, LastBatch] | None = None,
    stop_grace_s: float = 0.01,
    **options: Any,
) -> Recovery:
    """Recovery of `o-1`, whose last log batch of each job is `last[job]` (default: attempt
    1's final batch, after seq 0: its log is whole)."""
    sink = logs if logs is not None else Logs()

    async def last_batch(job_id: str) -> LastBatch:
        return (last or {}).get(job_id, LastBatch(seq=0, attempt=1, final=True))

    return Recovery(
        runtime=runtime,
        reports=reports,
        registry=registry if registry is not None else Registry(),
        orchestrator="o-1",
        stop_grace_s=stop_grace_s,
        log_sink=lambda job_id, attempt: sink,
        last_batch=last_batch,
        **options,
    )


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

    last = {job: LastBatch(seq=7, attempt=1, final=job == "finished") for job in JOBS}
    found = await recovery(runtime, reports, logs=logs, registry=registry, last=last).run()
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

    await recovery(runtime, reports).run()
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

    found = await recovery(runtime, reports, deployment="ours").run()

    assert found == [("ours", 1)]
    assert {job for job, _ in reports.sent} == {"ours"}
    left = await runtime.list_labelled({})
    assert {r.labels[LABEL_JOB] for r in left} == {"theirs"} and len(left) == 3
    assert [r.name for r in left if r.running] == ["dockyard-theirs-1"]  # never stopped


async def test_a_finished_container_whose_log_was_cut_by_the_crash_does_not_count() -> None:
    """Killed after the job exited but before its last lines were stored: the last batch
    this orchestrator published is not the attempt's final one (or is another attempt's),
    so a `succeeded` would hide lost lines. The attempt is lost (the retry policy reruns it)
    and its log says why, after the last stored line."""
    runtime = FakeRuntime(images=[IMAGE])
    for job in ("cut", "earlier", "failed"):
        runtime.program([job], Script(exit_code=3 if job == "failed" else 0))
        await leave_behind(runtime, job, start=True, sidecar=False)
    await asyncio.sleep(0.01)
    reports, logs = Reports(), Logs()
    last = {
        "cut": LastBatch(seq=4, attempt=1, final=False),
        "earlier": LastBatch(seq=9, attempt=0, final=True),
        "failed": LastBatch(seq=0),
    }
    await recovery(runtime, reports, logs=logs, last=last).run()
    exits = {job: c for job, c in reports.sent if isinstance(c, ReportExit)}
    assert {job: (c.reason, c.exit_code) for job, c in exits.items()} == {
        "cut": ("orchestrator_lost", 0),
        "earlier": ("orchestrator_lost", 0),
        "failed": ("orchestrator_lost", 3),
    }
    assert exits["cut"].error == (
        "orchestrator o-1 restarted while running attempt 1: the job had exited with code 0,"
        " but its last output lines were lost with the orchestrator, so this attempt does not"
        " count"
    )
    assert exits["cut"].container_id is not None and exits["cut"].started_at  # it did run
    assert sorted((line.seq, line.stream) for line in logs.lines) == [
        (1, "system"),
        (5, "system"),
        (10, "system"),
    ]
