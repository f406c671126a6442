"""The runtime adapter against raw aiodocker on the same engine, in the same run.

Run on demand: `pytest -m benchmark tests/benchmarks/bench_runtime.py -s`. Figures are printed.
- control plane: trivial containers (create, start, wait, delete) 8 at a time, raw with a
  bare config, raw with our hardened config, and through `DockerRuntime` (which also attaches
  and inspects for OOM), in jobs/s;
- output: lines/s from a container printing `seq 1 2000000` as fast as it can, raw attach
  (counting newlines) against `stream_output` + `LogPump` (split, number, batch).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
import pytest

from dockyard.bus.names import LABEL_ORCHESTRATOR
from dockyard.core.spec import JobSpec
from dockyard.runtime import DockerRuntime, LogLine, LogPipeline, LogPump, plan_job

pytestmark = pytest.mark.benchmark

JOBS = 48
CONCURRENCY = 8
LINES = 2_000_000
ORCHESTRATOR = f"bench-{uuid.uuid4().hex[:8]}"


def _config(image: str, command: list[str]) -> dict[str, Any]:
    spec = JobSpec(image=image, command=command)
    return plan_job(spec, job_id=uuid.uuid4().hex, attempt=1, orchestrator=ORCHESTRATOR).job.config


async def _rate(count: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def bounded() -> None:
        async with gate:
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(bounded() for _ in range(count)))
    return count / (time.perf_counter() - started)


async def _raw_job(docker: aiodocker.Docker, config: dict[str, Any]) -> None:
    container = await docker.containers.create(config)
    try:
        await container.start()
        await container.wait()
    finally:
        await container.delete(force=True)


async def _adapter_job(runtime: DockerRuntime, image: str) -> None:
    spec = JobSpec(image=image, command=["true"])
    plan = plan_job(spec, job_id=uuid.uuid4().hex, attempt=1, orchestrator=ORCHESTRATOR)
    container = await runtime.create_container(plan.job)
    try:
        async with runtime.stream_output(container) as output:
            await runtime.start(container)
            async for _ in output:
                pass
        await runtime.wait(container)
    finally:
        await runtime.remove(container)


async def test_control_plane_jobs_per_second(
    docker: aiodocker.Docker, busybox_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = DockerRuntime(docker)
    bare: dict[str, Any] = {
        "Image": busybox_image,
        "Cmd": ["true"],
        "HostConfig": {"NetworkMode": "none"},
    }
    hardened = _config(busybox_image, ["true"])
    rates: dict[str, list[float]] = {"raw bare": [], "raw hardened": [], "adapter": []}
    for _ in range(2):  # alternate, so that drift in the engine hits every path alike
        rates["raw bare"].append(await _rate(JOBS, CONCURRENCY, lambda: _raw_job(docker, bare)))
        rates["raw hardened"].append(
            await _rate(JOBS, CONCURRENCY, lambda: _raw_job(docker, hardened))
        )
        rates["adapter"].append(
            await _rate(JOBS, CONCURRENCY, lambda: _adapter_job(runtime, busybox_image))
        )
    best = {name: max(values) for name, values in rates.items()}
    with capsys.disabled():
        print(f"\ncontrol plane, {JOBS} trivial jobs, {CONCURRENCY} at a time (best of 2):")
        for name, rate in best.items():
            print(f"  {name:13s} {rate:6.1f} jobs/s  ({rate / best['raw bare']:.2f}x raw bare)")
        print(f"  adapter / raw hardened: {best['adapter'] / best['raw hardened']:.2f}")
    assert await runtime.list_labelled({LABEL_ORCHESTRATOR: ORCHESTRATOR}) == []


async def _raw_read(docker: aiodocker.Docker, config: dict[str, Any]) -> tuple[int, float]:
    container = await docker.containers.create(config)
    lines = 0
    try:
        started = time.perf_counter()
        async with container.attach(stdout=True, stderr=True) as stream:
            await container.start()
            while (message := await stream.read_out()) is not None:
                lines += message.data.count(b"\n")
        return lines, time.perf_counter() - started
    finally:
        await container.delete(force=True)


async def _adapter_read(runtime: DockerRuntime, config: dict[str, Any]) -> tuple[int, float]:
    spec = JobSpec(image=str(config["Image"]), command=["seq", "1", str(LINES)])
    plan = plan_job(spec, job_id=uuid.uuid4().hex, attempt=1, orchestrator=ORCHESTRATOR)
    container = await runtime.create_container(plan.job)
    pump = LogPump(LogPipeline(attempt=1))
    lines = 0

    async def publish(batch: list[LogLine]) -> None:
        nonlocal lines
        lines += len(batch)

    try:
        started = time.perf_counter()
        async with runtime.stream_output(container) as output:
            await runtime.start(container)
            await pump.run(output, publish)
        return lines, time.perf_counter() - started
    finally:
        await runtime.remove(container)


async def test_output_lines_per_second(
    docker: aiodocker.Docker, busybox_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = DockerRuntime(docker)
    config = _config(busybox_image, ["seq", "1", str(LINES)])
    results: dict[str, list[tuple[int, float]]] = {"raw attach": [], "adapter + pump": []}
    for _ in range(3):
        results["raw attach"].append(await _raw_read(docker, config))
        results["adapter + pump"].append(await _adapter_read(runtime, config))
    with capsys.disabled():
        print(f"\noutput, `seq 1 {LINES}` (best of 3):")
        best = {}
        for name, runs in results.items():
            assert all(lines == LINES for lines, _ in runs), runs
            best[name] = max(lines / seconds for lines, seconds in runs)
            print(f"  {name:15s} {best[name]:12,.0f} lines/s")
        print(f"  adapter / raw: {best['adapter + pump'] / best['raw attach']:.2f}")
