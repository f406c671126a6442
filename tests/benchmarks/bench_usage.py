"""What usage sampling costs: trivial-job throughput and orchestrator CPU per job with sampling
on and off in the same run, and the CPU of one sample of one container at 4 running jobs.

Run on demand: `scripts/test -m benchmark tests/benchmarks/bench_usage.py -s`.
Targets (issue #22): at most 2% fewer jobs/s and 0.5 ms more orchestrator CPU per job with
sampling on; one sample of one container at most 1 ms of orchestrator CPU.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import aiodocker
import pytest
import pytest_asyncio

from dockyard.bus import outbox
from dockyard.orchestrator.usage_sampler import UsageSampler
from dockyard.runtime import DockerRuntime
from dockyard.scheduler import due
from tests.benchmarks.cpu import cpu_seconds
from tests.support.orchestration import (
    ControlPlane,
    OrchestratorProcess,
    assert_nothing_left,
    new_orchestrator_id,
    spec,
    wait_for_heartbeat,
)

pytestmark = pytest.mark.benchmark

JOBS = 96
CONCURRENCY = 8
ROUNDS = 4
QUEUES = {"off": "usage-off", "on": "usage-on"}


@pytest_asyncio.fixture(loop_scope="session")
async def control(nats_url: str, database_url: str) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(
        nats_url,
        database_url,
        queues=tuple(QUEUES.values()),
        due_tick_s=due.TICK_S,
        relay_poll_s=outbox.POLL_INTERVAL_S,
    ) as plane:
        yield plane


async def rate(
    control: ControlPlane, process: OrchestratorProcess, image: str, queue: str
) -> tuple[float, float]:
    """(jobs/s, orchestrator CPU seconds per job) for JOBS trivial jobs submitted at once;
    the end is the commit of the last success, read from the events table."""
    assert process.process is not None
    cpu_before = cpu_seconds(process.process.pid)
    started = time.time()
    ids = [await control.submit(spec(image, "true", queue=queue)) for _ in range(JOBS)]
    done = "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status = 'succeeded'"
    deadline = time.monotonic() + 180
    while await control.pool.fetchval(done, ids) < JOBS:
        assert time.monotonic() < deadline, "not every job succeeded"
        await asyncio.sleep(0.25)
    cpu = cpu_seconds(process.process.pid) - cpu_before
    last = await control.pool.fetchval(
        "SELECT extract(epoch FROM max(recorded_at)) FROM events"
        " WHERE job_id = ANY($1::uuid[]) AND type = 'job_succeeded'",
        ids,
    )
    return JOBS / (float(last) - started), cpu / JOBS


@pytest.mark.timeout(900)
async def test_sampling_on_and_off_in_the_same_run(
    control: ControlPlane,
    docker: aiodocker.Docker,
    nats_url: str,
    busybox_image: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = {mode: new_orchestrator_id() for mode in QUEUES}
    processes = {
        mode: OrchestratorProcess(
            nats_url,
            ids[mode],
            DOCKYARD_MAX_JOBS=str(CONCURRENCY),
            DOCKYARD_QUEUES=QUEUES[mode],
            DOCKYARD_USAGE_SAMPLE_S="0" if mode == "off" else "1",
        )
        for mode in QUEUES
    }
    figures: dict[str, list[tuple[float, float]]] = {mode: [] for mode in QUEUES}
    try:
        for mode, process in processes.items():
            await process.start()
            await wait_for_heartbeat(control.js, ids[mode])
            await rate(control, process, busybox_image, QUEUES[mode])  # warm up
        for round_ in range(ROUNDS):  # alternate, so that drift in the engine hits both alike
            order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
            for mode in order:
                figures[mode].append(
                    await rate(control, processes[mode], busybox_image, QUEUES[mode])
                )
    finally:
        for process in processes.values():
            if process.process is not None and process.process.returncode is None:
                process.signal(__import__("signal").SIGTERM)
                await process.wait(60)
            await process.kill()
    best = {mode: max(rate for rate, _ in figures[mode]) for mode in QUEUES}
    middle = {mode: statistics.median(rate for rate, _ in figures[mode]) for mode in QUEUES}
    cpu = {mode: statistics.median(cpu for _, cpu in figures[mode]) for mode in QUEUES}
    with capsys.disabled():
        print(f"\n{JOBS} trivial jobs, {CONCURRENCY} at a time, {ROUNDS} rounds each, alternated:")
        for mode in QUEUES:
            rounds = ", ".join(f"{r:.1f}" for r, _ in figures[mode])
            cpus = ", ".join(f"{c * 1000:.2f}" for _, c in figures[mode])
            print(
                f"  sampling {mode:3}  best {best[mode]:6.1f} jobs/s (rounds {rounds}),"
                f" orchestrator CPU per job median {cpu[mode] * 1000:.2f} ms (rounds {cpus})"
            )
        print(
            f"  on vs off: {best['on'] / best['off'] - 1:+.1%} jobs/s best,"
            f" {middle['on'] / middle['off'] - 1:+.1%} median (target >= -2%),"
            f" {(cpu['on'] - cpu['off']) * 1000:+.2f} ms CPU per job (target <= +0.5 ms)"
        )
    for orchestrator_id in ids.values():
        await assert_nothing_left(docker, orchestrator_id)


class NoReports:
    async def send(self, job_id: str, command: object) -> None: ...


@pytest.mark.timeout(120)
async def test_one_sample_of_one_container_at_four_running_jobs(
    docker: aiodocker.Docker, busybox_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = DockerRuntime(docker)
    sampler = UsageSampler(
        NoReports(), runtime, orchestrator="bench", sample_s=1.0, report_s=3600.0
    )
    containers = []
    try:
        for n in range(4):
            container = await docker.containers.create(
                {
                    "Image": busybox_image,
                    "Cmd": ["sleep", "60"],
                    "Labels": {"bench": "usage"},
                    "HostConfig": {"NetworkMode": "none"},  # no bridge needed
                }
            )
            containers.append(container)
            await container.start()
            sampler.watch(
                f"job-{n}",
                1,
                container.id,
                spec(busybox_image, "sleep", "60", resources={"memory_mb": 128}),
            )
        rounds = 2000
        before, samples_before = time.process_time(), sampler.samples
        for _ in range(rounds):
            sampler.tick()
        spent = time.process_time() - before
        samples = sampler.samples - samples_before
        assert samples == rounds * 4, "a container's cgroup was not found"
        with capsys.disabled():
            print(
                f"\none sample of one container, 4 running: {spent / samples * 1e6:.0f} µs"
                f" of orchestrator CPU (target <= 1000 µs; {samples} samples,"
                f" cgroup v{sampler_version(sampler)})"
            )
        assert spent / samples < 0.001
    finally:
        for n in range(4):
            sampler.finish(f"job-{n}")
        for container in containers:
            await container.delete(force=True)


def sampler_version(sampler: UsageSampler) -> int:
    watches = sampler._watches.values()  # the benchmark reports the layout it read
    return next((w.cgroup.version for w in watches if w.cgroup is not None), 0)
