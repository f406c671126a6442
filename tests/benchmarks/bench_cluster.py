"""The control plane on a three-node NATS cluster (R3 streams and buckets, each node on a host
of its own: tests/support/hosts.py) against the single node, in the same run: throughput
submit -> succeeded with the in-memory FakeRuntime (bench_control_plane.py's measure), and
dispatch latency, submit -> claimed, of jobs submitted one at a time.

Run on demand, as root: `scripts/test -m benchmark tests/benchmarks/bench_cluster.py -s`.
Targets (issue 21): at least 500 jobs/s on R3 on this 2-core machine, where the three servers
and every service share the two cores; dispatch p50 at most 10 ms.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from dataclasses import dataclass

import pytest

from dockyard.bus import outbox
from dockyard.core.spec import JobSpec
from dockyard.scheduler import due
from tests.benchmarks.bench_control_plane import _pct, _run_jobs, _submit_to_claimed
from tests.benchmarks.cpu import cpu_by_command, spent
from tests.support.cluster import nats_cluster_on_hosts
from tests.support.orchestration import REPO, ControlPlane, new_orchestrator_id

JOBS = int(os.environ.get("BENCH_JOBS", "1000"))
ONE_BY_ONE = 200  # jobs for the dispatch latency
ONE_EVERY_S = 0.02
WARM_UP = 50
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


@dataclass(frozen=True)
class Figures:
    rate: float  # jobs/s, submit -> succeeded
    dispatch_p50_ms: float
    dispatch_p99_ms: float
    nats_cpu_ms: float  # every nats-server's CPU per job in the throughput run

    def line(self, what: str) -> str:
        return (
            f"{what}: {JOBS} jobs in {JOBS / self.rate:.2f} s = {self.rate:.0f} jobs/s;"
            f" dispatch (one at a time) p50 {self.dispatch_p50_ms:.1f} ms,"
            f" p99 {self.dispatch_p99_ms:.1f} ms; nats-server CPU {self.nats_cpu_ms:.2f} ms a job"
        )


@pytest.mark.benchmark
@pytest.mark.timeout(900)
async def test_control_plane_on_an_r3_cluster_against_one_node(
    nats_url: str, database_url: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the cluster's hosts are network namespaces, which takes root")
    singles: list[Figures] = []
    r3s: list[Figures] = []
    async with nats_cluster_on_hosts() as cluster_url:
        for round_ in range(ROUNDS):  # interleaved, in turn first: the machine's speed drifts
            pair = [(singles, nats_url, 1), (r3s, cluster_url, 3)]
            for into, url, replicas in pair if round_ % 2 == 0 else pair[::-1]:
                into.append(await _measure(url, database_url, replicas=replicas))
    single, r3 = _median(singles), _median(r3s)
    rounds = "\n".join(
        f"round {i + 1}: {a.line('single node, R1')}\n         {b.line('three nodes, R3')}"
        for i, (a, b) in enumerate(zip(singles, r3s, strict=True))
    )
    print(
        f"\n{rounds}\nmedian of {ROUNDS}: {single.line('single node, R1')}"
        f"\n             {r3.line('three nodes, R3')}"
        f"\nR3 / single: throughput {r3.rate / single.rate:.2f}x,"
        f" dispatch p50 {r3.dispatch_p50_ms / single.dispatch_p50_ms:.2f}x"
        "\ntargets: >= 500 jobs/s on R3, dispatch p50 <= 10 ms"
    )


def _median(runs: list[Figures]) -> Figures:
    return Figures(
        statistics.median(f.rate for f in runs),
        statistics.median(f.dispatch_p50_ms for f in runs),
        statistics.median(f.dispatch_p99_ms for f in runs),
        statistics.median(f.nats_cpu_ms for f in runs),
    )


async def _measure(url: str, database_url: str, *, replicas: int) -> Figures:
    spec = JobSpec(image="busybox", command=["true"])
    async with ControlPlane(
        url,
        database_url,
        due_tick_s=due.TICK_S,
        relay_poll_s=outbox.POLL_INTERVAL_S,
        replicas=replicas,
    ) as plane:
        orchestrator = await _fake_orchestrator(url, replicas)
        try:
            await _run_jobs(plane, spec, WARM_UP)  # connections, consumers, caches
            before = cpu_by_command()
            _, _, elapsed = await _run_jobs(plane, spec, JOBS)
            nats_cpu = spent(before, cpu_by_command(), ("nats-server",))["nats-server"]
            one_by_one = await _one_at_a_time(plane, spec)
        finally:
            orchestrator.terminate()
            await orchestrator.wait()
        latencies = await _submit_to_claimed(plane, one_by_one)
    return Figures(JOBS / elapsed, _pct(latencies, 50), _pct(latencies, 99), 1000 * nats_cpu / JOBS)


async def _one_at_a_time(plane: ControlPlane, spec: JobSpec) -> list[str]:
    """Jobs submitted one by one, each after the last is done: the dispatch path unloaded."""
    ids = []
    for _ in range(ONE_BY_ONE):
        job_id = await plane.submit(spec)
        ids.append(job_id)
        await plane.wait_finished(job_id)
        await asyncio.sleep(ONE_EVERY_S)
    return ids


async def _fake_orchestrator(url: str, replicas: int) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DOCKYARD_NATS_URL": url,
        "DOCKYARD_NATS_REPLICAS": str(replicas),
        "DOCKYARD_ORCHESTRATOR_ID": new_orchestrator_id(),
        "DOCKYARD_MAX_JOBS": "64",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.fake_orchestrator", env=env, cwd=REPO
    )
