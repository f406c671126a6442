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
import os
import statistics
import sys
import time

import asyncpg
import pytest

from dockyard.bus import outbox
from dockyard.core import SubmitJob, uuid7
from dockyard.core.events import JobClaimed, JobSubmitted
from dockyard.core.spec import JobSpec
from dockyard.scheduler import due
from tests.benchmarks.cpu import cpu_by_command, cpu_seconds, spent
from tests.support.orchestration import REPO, ControlPlane, new_orchestrator_id

JOBS = int(os.environ.get("BENCH_JOBS", "1000"))
SERVERS = ("nats-server", "postgres")
WARM_UP = 50


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
    spec = JobSpec(image="busybox", command=["true"])
    # The scheduler's own due-job tick, not the short one tests use to wait less on retries.
    async with ControlPlane(
        nats_url, database_url, due_tick_s=due.TICK_S, relay_poll_s=outbox.POLL_INTERVAL_S
    ) as plane:
        orchestrator = await _fake_orchestrator(nats_url)
        try:
            await _run_jobs(plane, spec, WARM_UP)  # connections, consumers, caches
            cpu_before = cpu_seconds(), cpu_seconds(orchestrator.pid), cpu_by_command()
            ids, submitted, elapsed = await _run_jobs(plane, spec, JOBS)
            cpu_here, cpu_orchestrator = (
                cpu_seconds() - cpu_before[0],
                cpu_seconds(orchestrator.pid) - cpu_before[1],
            )
            servers = spent(cpu_before[2], cpu_by_command(), SERVERS)
        finally:
            orchestrator.terminate()
            await orchestrator.wait()
        latencies = await _submit_to_claimed(plane, ids)
    rate = JOBS / elapsed
    print(
        f"\ncontrol plane: {JOBS} jobs submit->succeeded in {elapsed:.2f} s = {rate:.0f} jobs/s"
        f" (submits alone {JOBS / submitted:.0f}/s); target 1000 jobs/s"
        f"\nsubmit->claimed: p50 {_pct(latencies, 50):.1f} ms, p99 {_pct(latencies, 99):.1f} ms"
        f"\nCPU per job: scheduler side {1000 * cpu_here / JOBS:.2f} ms,"
        f" orchestrator {1000 * cpu_orchestrator / JOBS:.2f} ms,"
        f" NATS {1000 * servers['nats-server'] / JOBS:.2f} ms,"
        f" PostgreSQL {1000 * servers['postgres'] / JOBS:.2f} ms (2 cores: 2 ms per job is"
        " 1,000 jobs/s)"
        f"\nbaseline: raw single-row INSERT+commit {raw:.0f}/s"
    )


async def _run_jobs(plane: ControlPlane, spec: JobSpec, n: int) -> tuple[list[str], float, float]:
    """Submit n jobs at once (through the batcher, as the API does); wait for all to succeed.

    The end is the commit of the last success, read from the events table afterwards: a
    count polled often enough to time the run would itself take CPU from a saturated machine.
    """
    ids = [uuid7() for _ in range(n)]
    started = time.time()
    await asyncio.gather(
        *(plane.batcher.execute(j, SubmitJob(tenant="acme", spec=spec)) for j in ids)
    )
    submitted = time.time() - started
    done = "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status = 'succeeded'"
    while await plane.pool.fetchval(done, ids) < n:
        if time.time() - started > 500:
            raise TimeoutError(f"not all of {n} jobs succeeded")
        await asyncio.sleep(0.25)
    last = await plane.pool.fetchval(
        "SELECT extract(epoch FROM max(recorded_at)) FROM events"
        " WHERE job_id = ANY($1::uuid[]) AND type = 'job_succeeded'",
        ids,
    )
    return ids, submitted, float(last) - started


async def _fake_orchestrator(nats_url: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DOCKYARD_NATS_URL": nats_url,
        "DOCKYARD_ORCHESTRATOR_ID": new_orchestrator_id(),
        "DOCKYARD_MAX_JOBS": "64",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.fake_orchestrator", env=env, cwd=REPO
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
