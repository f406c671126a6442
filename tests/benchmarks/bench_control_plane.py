"""Control-plane throughput: submit -> succeeded with every event recorded, Docker replaced by
the in-memory FakeRuntime, so what is measured is Dockyard itself (API, PostgreSQL appends,
the outbox relay, JetStream with fsync on every write, claims, reports).

Run on demand: `scripts/test -m benchmark tests/benchmarks/bench_control_plane.py -s`.
Target (issue 4): at least 1,000 jobs/s on this 2-core machine; p50/p99 submit-to-claimed.
Baseline in the same run: raw asyncpg single-row INSERT+commit rate, which bounds what any
design that writes each state change durably can do here.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import asyncpg
import pytest

from dockyard.config import load
from dockyard.core import SubmitJob, uuid7
from dockyard.core.events import JobClaimed, JobSubmitted
from dockyard.core.spec import JobSpec
from dockyard.handler import execute
from dockyard.orchestrator.service import bootstrap
from dockyard.runtime.fake import FakeRuntime
from tests.support.orchestration import ControlPlane, new_orchestrator_id, orchestrator_config

JOBS = 400


async def _raw_insert_rate(database_url: str, n: int = 2000) -> float:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TEMP TABLE t (id bigint, data jsonb)")
        started = time.perf_counter()
        for i in range(n):
            await conn.execute("INSERT INTO t VALUES ($1, '{}')", i)
        return n / (time.perf_counter() - started)
    finally:
        await conn.close()


@pytest.mark.benchmark
@pytest.mark.timeout(600)
async def test_control_plane_jobs_per_second(nats_url: str, database_url: str) -> None:
    raw = await _raw_insert_rate(database_url)
    orchestrator_id = new_orchestrator_id()
    config = orchestrator_config(orchestrator_id, max_jobs=64)
    settings = load({"DOCKYARD_NATS_URL": nats_url, "DOCKYARD_ORCHESTRATOR_ID": orchestrator_id})
    runtime = FakeRuntime(images=["busybox"])
    spec = JobSpec(image="busybox", command=["true"])
    async with ControlPlane(nats_url, database_url) as plane:
        stop = asyncio.Event()
        async with bootstrap(settings, config=config, runtime=runtime) as orchestrator:
            runner = asyncio.create_task(orchestrator.run(stop))
            await orchestrator.ready.wait()
            ids = [uuid7() for _ in range(JOBS)]
            started = time.perf_counter()
            await asyncio.gather(
                *(execute(plane.store, j, SubmitJob(tenant="acme", spec=spec)) for j in ids)
            )
            submitted = time.perf_counter() - started
            while (await plane.status_counts()).get("succeeded", 0) < JOBS:
                if time.perf_counter() - started > 500:
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            stop.set()
            await runner
        latencies = await _submit_to_claimed(plane, ids)
    rate = JOBS / elapsed
    print(
        f"\ncontrol plane: {JOBS} jobs submit->succeeded in {elapsed:.1f} s = {rate:.0f} jobs/s"
        f" (submits alone {JOBS / submitted:.0f}/s); target 1000 jobs/s"
        f"\nsubmit->claimed: p50 {_pct(latencies, 50):.1f} ms, p99 {_pct(latencies, 99):.1f} ms"
        f"\nbaseline: raw single-row INSERT+commit {raw:.0f}/s; each job here takes"
        f" ~8 appends and ~12 fsynced JetStream messages"
    )


async def _submit_to_claimed(plane: ControlPlane, ids: list[str]) -> list[float]:
    out = []
    for job_id in ids:
        events = await plane.events(job_id)
        submitted = next(e.at for e in events if isinstance(e, JobSubmitted))
        claimed = next((e.at for e in events if isinstance(e, JobClaimed)), None)
        if claimed is not None:
            out.append((claimed - submitted).total_seconds() * 1000)
    return out


def _pct(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else values[0]
