"""The orchestrator's metrics port, scraped while a job runs (on the in-memory runtime) and after.

Real NATS and PostgreSQL behind the control plane; the container is the FakeRuntime's, so the
test controls how long it runs and what it writes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from dockyard.config import load
from dockyard.orchestrator import Orchestrator, OrchestratorConfig, bootstrap
from dockyard.runtime import FakeRuntime, Script
from tests.support.orchestration import (
    ControlPlane,
    new_orchestrator_id,
    orchestrator_config,
    spec,
)

IMAGE = "busybox:latest"
PREFIX = "dockyard_orchestrator_"
Key = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[Key, float]


def key(name: str, **labels: str) -> Key:
    return PREFIX + name, tuple(sorted(labels.items()))


RUNNING = key("jobs_running")


def samples(text: str) -> Samples:
    """Every sample of a scrape, by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Scraper:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.url + path) as response:
            return response.status, await response.text()

    async def until(self, check: Callable[[Samples], bool], timeout_s: float = 20.0) -> Samples:
        async with asyncio.timeout(timeout_s):
            while True:
                status, text = await self.get("/metrics")
                assert status == 200
                found = samples(text)
                if check(found):
                    return found
                await asyncio.sleep(0.05)


@asynccontextmanager
async def orchestrator_with_metrics(
    nats_url: str, runtime: FakeRuntime, config: OrchestratorConfig
) -> AsyncIterator[tuple[Orchestrator, str]]:
    """An orchestrator on `runtime`, serving its metrics on a free port; its base URL."""
    settings = load({"DOCKYARD_NATS_URL": nats_url})
    stop = asyncio.Event()
    async with bootstrap(settings, config=config, runtime=runtime) as orchestrator:
        runner = await orchestrator.serve_metrics()
        assert runner is not None
        task = asyncio.create_task(orchestrator.run(stop))
        try:
            host, port = runner.addresses[0][:2]
            yield orchestrator, f"http://{host}:{port}"
        finally:
            stop.set()
            await task
            await runner.cleanup()


async def test_metrics_port_counts_a_running_job_then_its_outcome(
    nats_url: str, database_url: str
) -> None:
    def script(_: object) -> Script:
        # Runs until the test, having scraped it running, stops it.
        return Script(output=(("stdout", b"one\ntwo\nthree\n"),), runs_for_s=math.inf)

    runtime = FakeRuntime(images=[IMAGE], script=script)
    config = orchestrator_config(new_orchestrator_id(), metrics_listen=("127.0.0.1", 0))
    async with (
        ControlPlane(nats_url, database_url) as control,
        orchestrator_with_metrics(nats_url, runtime, config) as (orchestrator, url),
        aiohttp.ClientSession() as session,
    ):
        scrape = Scraper(session, url)
        assert await scrape.get("/healthz") == (200, '{"status": "ok"}')
        await orchestrator.ready.wait()  # recovered, claiming: ready (503 before)
        status, ready = await scrape.get("/readyz")
        assert status == 200, ready
        job_id = await control.submit(spec(IMAGE, "run"))

        running = await scrape.until(
            lambda s: s.get(RUNNING) == 1 and s.get(key("log_lines_published_total")) == 3
        )
        assert running[key("jobs_started_total")] == 1
        assert running[key("nats_connected")] == 1
        assert running[key("log_dropped_bytes_total")] == 0
        assert running[key("claim_seconds_count", answer="granted")] == 1
        assert not any(name.startswith(PREFIX + "jobs_finished") for name, _ in running)

        job = await control.wait_running(job_id)
        assert job.container_id is not None
        await runtime.stop(job.container_id, 0.0)  # SIGTERM: exit 143, not asked for: failed
        failed = key("jobs_finished_total", outcome="exit_code")
        done = await scrape.until(lambda s: s.get(RUNNING) == 0 and failed in s)
        assert done[failed] == 1
        assert (await control.wait_finished(job_id)).exit_code == 143
        assert orchestrator.finished == 1
