"""The Docker engine stopped under a running orchestrator with jobs queued, then started
again: nothing is claimed while it is away, nothing is lost, nothing is left behind.

The engine is one the test starts itself (tests/support/second_engine.py: its own data root,
socket, exec root and pid file, no bridge and no iptables), never the suite's.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
import pytest_asyncio

from dockyard.bus import names
from dockyard.bus.protocol import decode_heartbeat
from dockyard.config import load
from dockyard.core import Job
from dockyard.core.events import JobClaimed
from dockyard.orchestrator.service import Orchestrator, bootstrap
from dockyard.runtime.docker import DockerRuntime
from tests.support.orchestration import (
    ControlPlane,
    assert_one_start_per_attempt,
    new_orchestrator_id,
    orchestrator_config,
    spec,
)
from tests.support.second_engine import SecondEngine


@pytest_asyncio.fixture(loop_scope="session")
async def engine(busybox_image: str) -> AsyncIterator[SecondEngine]:
    host_links = _links()
    second = SecondEngine()
    try:
        await second.start()
        await second.load(busybox_image)
        yield second
    finally:
        await second.close()
    # Nothing of it outlives the test: its process, its mounts, its directory, its bridge;
    # and it took nothing of the host's (a dockerd on --bridge=none deletes docker0).
    assert not second.running and not second.root.exists()
    assert _links() == host_links


def _links() -> set[str]:
    listed = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    return {line.split(":")[1].strip().split("@")[0] for line in listed.stdout.splitlines()}


@asynccontextmanager
async def orchestrator_on(
    nats_url: str, engine: SecondEngine, orchestrator_id: str
) -> AsyncIterator[tuple[Orchestrator, str]]:
    """An orchestrator whose engine is `engine`, serving /readyz; its base URL."""
    settings = load({"DOCKYARD_NATS_URL": nats_url, "DOCKYARD_ORCHESTRATOR_ID": orchestrator_id})
    config = orchestrator_config(orchestrator_id, max_jobs=2, metrics_listen=("127.0.0.1", 0))
    stop = asyncio.Event()
    async with engine.client() as docker:
        runtime = DockerRuntime(docker)
        async with bootstrap(settings, config=config, runtime=runtime) as orchestrator:
            runner = await orchestrator.serve_metrics()
            assert runner is not None
            task = asyncio.create_task(orchestrator.run(stop))
            try:
                await asyncio.wait_for(orchestrator.ready.wait(), 30)
                host, port = runner.addresses[0][:2]
                yield orchestrator, f"http://{host}:{port}"
            finally:
                stop.set()
                await task
                await runner.cleanup()


async def until(check: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}")
        await asyncio.sleep(0.05)


async def heartbeat_engine_error(
    control: ControlPlane, orchestrator_id: str, timeout_s: float = 15.0
) -> str:
    """The engine error the orchestrator's stored heartbeat carries, once it carries one."""
    kv = await control.js.key_value(names.HEARTBEATS_BUCKET)
    deadline = time.monotonic() + timeout_s
    while True:
        entry = await kv.get(names.heartbeat_key(orchestrator_id))
        error = decode_heartbeat(entry.value or b"").engine_error
        if error is not None:
            return error
        if time.monotonic() > deadline:
            raise AssertionError("the heartbeat never said the engine was away")
        await asyncio.sleep(0.1)


async def statuses(control: ControlPlane, jobs: list[str]) -> list[str]:
    return [(await control.job(job_id)).status for job_id in jobs]


async def claims(control: ControlPlane, job_id: str) -> int:
    return sum(isinstance(e, JobClaimed) for e in await control.events(job_id))


async def test_engine_stopped_under_a_running_orchestrator_claims_nothing_loses_nothing(
    nats_url: str, database_url: str, engine: SecondEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "dockyard.orchestrator.engine")
    orchestrator_id = new_orchestrator_id()
    image = "dockyard/busybox:latest"
    async with (
        ControlPlane(nats_url, database_url) as control,
        orchestrator_on(nats_url, engine, orchestrator_id) as (orchestrator, url),
        aiohttp.ClientSession() as http,
    ):
        first = await control.submit(spec(image, "echo", "before"))
        assert (await control.wait_finished(first)).status == "succeeded"
        # Running when the engine goes (the engine stops it): its retry, due 5 s later, waits
        # for the engine too; whatever it comes to, it is cancelled at the end.
        running = await control.submit(
            spec(image, "sleep", "600", retry={"max_attempts": 2, "backoff_s": 5})
        )
        await control.wait_running(running)

        await engine.stop()
        await until(lambda: not orchestrator.engine.up, 10, "saw the engine gone")
        async with http.get(f"{url}/readyz") as answer:
            body = await answer.json()
            assert answer.status == 503
            assert body["error"]["message"].startswith("not answering: docker (")
        error = await heartbeat_engine_error(control, orchestrator_id)
        assert error == orchestrator.engine.error and "ping the engine" in error

        queued = [await control.submit(spec(image, "echo", f"q{n}")) for n in range(3)]
        await asyncio.sleep(4)  # more than an engine check period and many claim rounds
        assert await statuses(control, queued) == ["queued"] * 3
        assert [await claims(control, job_id) for job_id in queued] == [0, 0, 0]

        await engine.start()
        for job_id in queued:
            job = await control.wait_finished(job_id, timeout_s=60)
            assert (job.status, job.attempt) == ("succeeded", 1)
        async with http.get(f"{url}/readyz") as answer:
            assert answer.status == 200, await answer.text()
        if not (await control.job(running)).finished:
            await control.cancel(running)
        ended: Job = await control.wait_for(
            running, lambda j: j.finished and not j.resources, 60, "ended and cleaned up"
        )
        assert ended.status in ("cancelled", "failed")
        for job_id in (first, running, *queued):
            assert_one_start_per_attempt(await control.events(job_id))

    messages = [r.getMessage() for r in caplog.records]
    assert sum("engine_down" in m for m in messages) == 1, messages  # once per outage
    assert sum("engine_back" in m for m in messages) == 1, messages
    async with engine.client() as docker:
        left = await docker.containers.list(all=True)
        assert [c["Names"] for c in left] == []
