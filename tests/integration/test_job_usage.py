"""What a job used and which limit it hit, read from its cgroup on the real engine.

Each test runs a workload whose figures are known (a CPU loop, 48 MiB held in a tmpfs file,
12 processes; a fork bomb; /tmp filled; memory exhausted) under an orchestrator that samples
every 0.3 s and reports every 1 s, and checks the job's `usage` and `limits_hit` while it
runs and after, and the failed job's `error` in words.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiodocker
import pytest_asyncio

from dockyard.core import Job
from dockyard.core.events import UsageRecorded
from dockyard.core.view import job_view
from tests.support.orchestration import (
    ControlPlane,
    assert_nothing_left,
    assert_one_start_per_attempt,
    new_orchestrator_id,
    running_orchestrator,
    spec,
)

SAMPLING = {"usage_sample_s": 0.3, "usage_report_s": 1.0}
# About 1 s of CPU in busybox sh on the benchmark machine (0.33 s per 200,000).
CPU_LOOP = "i=0; while [ $i -lt 600000 ]; do i=$((i+1)); done"


@pytest_asyncio.fixture(loop_scope="session")
async def control(nats_url: str, database_url: str) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(nats_url, database_url) as plane:
        yield plane


def settled(job: Job) -> bool:
    return job.finished and not job.resources


async def run_sampled(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, job_spec: object
) -> tuple[str, Job]:
    """Run one job; its limits hit are counted once each in the orchestrator's metrics."""
    orchestrator_id = new_orchestrator_id()
    async with running_orchestrator(nats_url, orchestrator_id, **SAMPLING) as orchestrator:
        job_id = await control.submit(job_spec)  # type: ignore[arg-type]
        job = await control.wait_for(job_id, settled, 60, "settled")
        metrics = orchestrator.metrics.render().decode()
    await assert_nothing_left(docker, orchestrator_id)
    assert_one_start_per_attempt(await control.events(job_id))
    for hit in job.limits_hit:
        kind = hit.split(":")[0]
        assert f'dockyard_orchestrator_limits_hit_total{{kind="{kind}"}} 1.0' in metrics
    assert 'dockyard_orchestrator_job_cpu_seconds_count{queue="default"} 1.0' in metrics
    assert 'dockyard_orchestrator_job_memory_peak_bytes_count{queue="default"} 1.0' in metrics
    return job_id, job


async def test_a_known_workload_reports_its_usage_while_running_and_final_after(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    script = (
        f"{CPU_LOOP}; head -c 48m /dev/zero > /tmp/held; "
        "for n in 1 2 3 4 5 6 7 8 9 10; do sleep 4 & done; sleep 3; wait"
    )
    job_spec = spec(busybox_image, "sh", "-c", script, resources={"memory_mb": 256})
    orchestrator_id = new_orchestrator_id()
    async with running_orchestrator(nats_url, orchestrator_id, **SAMPLING):
        job_id = await control.submit(job_spec)
        running = await control.wait_running(job_id)
        assert running.usage is not None  # zeros from the start, until a report comes
        during = await control.wait_for(
            job_id,
            lambda j: j.usage is not None and j.usage.memory_peak_mb >= 48,
            30,
            "reported 48 MiB",
        )
        assert during.status == "running"
        job = await control.wait_for(job_id, settled, 60, "settled")
    await assert_nothing_left(docker, orchestrator_id)
    usage = job.usage
    assert job.status == "succeeded"
    assert usage is not None
    assert 0.5 <= usage.cpu_s <= 10
    assert 48 <= usage.memory_peak_mb <= 48 + 32  # the file, the shell, the page tables
    # sh, docker-init and 10 sleeps (and the loop's subshell at times)
    assert 12 <= usage.pids_peak <= 16
    assert usage.cpu_throttled_s >= 0
    assert job.limits_hit == ()
    events = await control.events(job_id)
    samples = [e for e in events if isinstance(e, UsageRecorded)]
    assert 1 <= len(samples) <= 12  # coalesced: at most one a report period (1 s here)
    view = job_view(job)
    assert view.usage == usage and view.limits_hit == []


async def test_a_fork_bomb_reports_pids_whatever_its_status(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 30"
    job_spec = spec(busybox_image, "sh", "-c", bomb, resources={"pids": 32}, timeout_s=4)
    _, job = await run_sampled(control, docker, nats_url, job_spec)
    assert job.status == "timed_out"
    assert "pids" in job.limits_hit
    assert job.usage is not None and job.usage.pids_peak <= 32
    assert job.error is not None
    assert "the job reached its limit of 32 processes (fork failed)" in job.error


async def test_dd_into_tmp_reports_disk_tmp_and_says_it_is_full(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    # The sleep lets a sample see it full: the mount goes with the container (docs/failures.md).
    script = "dd if=/dev/zero of=/tmp/fill bs=1M count=200 || { sleep 2; exit 2; }"
    job_spec = spec(busybox_image, "sh", "-c", script, resources={"memory_mb": 256})
    _, job = await run_sampled(control, docker, nats_url, job_spec)
    assert (job.status, job.exit_code) == ("failed", 2)
    assert "disk:/tmp" in job.limits_hit
    assert job.error == "the command exited with code 2; /tmp is full (its size is 64 MiB)"


async def test_out_of_memory_reports_memory(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    script = "sleep 1; x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"
    job_spec = spec(busybox_image, "sh", "-c", script, resources={"memory_mb": 16})
    _, job = await run_sampled(control, docker, nats_url, job_spec)
    assert (job.status, job.reason) == ("failed", "oom_killed")
    assert "memory" in job.limits_hit
    assert job.usage is not None and job.usage.memory_peak_mb >= 15
    # said once, by the OOM kill's own words
    assert job.error == "out of memory: killed at the 16 MiB limit (exit code 137)"


async def test_a_cpu_loop_held_to_a_fifth_of_a_cpu_reports_cpu(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    script = f"{CPU_LOOP}; sleep 1"  # throttled in most of the periods it ran
    job_spec = spec(busybox_image, "sh", "-c", script, resources={"cpus": 0.2})
    _, job = await run_sampled(control, docker, nats_url, job_spec)
    assert job.status == "succeeded" and job.error is None  # a success names nothing
    assert "cpu" in job.limits_hit
    assert job.usage is not None and job.usage.cpu_throttled_s > 1.0
