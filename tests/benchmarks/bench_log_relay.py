"""The log relay's figures, each against a baseline measured in the same run.

Run on demand: `scripts/test -m benchmark tests/benchmarks/bench_log_relay.py -s`.

The pipeline is the production one in three processes: this one plays the orchestrator (a
container's attach stream through LogPump into the orchestrator's own LogSink, to JetStream),
the log relay runs as `python -m dockyard.log_relay`, and the WebSocket client is a process
of its own (log_relay_client.py), which checks every seq follows the previous one.

- throughput: lines/s from `seq 1 N` in a container to one WebSocket client, from the
  container's start to the client's last line; baseline: raw `docker attach` of the same
  container, counting newlines (the fastest anything can read it);
- persistence: lines/s written to PostgreSQL from a backlog in JetStream (the relay started
  after the lines were published);
- latency: a container printing about 10 000 lines/s; receipt by the client minus the time
  the pump read the line from the engine, p50/p99/max;
- memory: the relay's RSS idle, with 100 idle clients (on 100 jobs), and while one client
  stops reading during a fast job (compared with the same job and no stalled client).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiodocker
import aiohttp
import msgspec
import pytest
import pytest_asyncio
from nats.js.api import StoreCompression

from dockyard.bus import connect, ensure_topology, jetstream
from dockyard.core.spec import JobSpec
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.logsink import LogSink
from dockyard.runtime import DockerRuntime, LogLine, LogPipeline, LogPump, plan_job
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore
from tests.benchmarks.cpu import busiest, cpu_by_command, cpu_seconds
from tests.support.log_relay import REPO, Jobs, RelayProcess, eventually, relay_process

pytestmark = pytest.mark.benchmark

LINES = 3_000_000
ROUNDS = 2
ORCHESTRATOR = "bench-log-relay"
# The orchestrator's own batching and pipelining (4096-line batches, 16 in flight).
ORCHESTRATOR_CONFIG = OrchestratorConfig(orchestrator_id=ORCHESTRATOR)
PUMP = {
    "max_lines": ORCHESTRATOR_CONFIG.log_batch_lines,
    "max_bytes": ORCHESTRATOR_CONFIG.log_batch_bytes,
}


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def bus(nats_url: str) -> AsyncIterator[tuple[Any, Any]]:
    nc = await connect(nats_url, "bench orchestrator")
    js = jetstream(nc)
    await ensure_topology(js)
    yield nc, js
    await nc.close()


@pytest_asyncio.fixture(loop_scope="session")
async def jobs(pool: Pool, bus: tuple[Any, Any]) -> AsyncIterator[Jobs]:
    store = PgEventStore(pool)
    yield Jobs(store, bus[1])
    await store.close()


def _config(image: str, command: list[str], job_id: str) -> dict[str, Any]:
    spec = JobSpec(image=image, command=command)
    return plan_job(spec, job_id=job_id, attempt=1, orchestrator=ORCHESTRATOR).job.config


async def stored(pool: Pool, job_id: str, lines: int) -> None:
    async def done() -> bool:
        value = await pool.fetchval("SELECT lines FROM log_jobs WHERE job_id = $1", job_id)
        return bool(value == lines)

    await eventually(done, timeout_s=300, poll_s=0.05)


async def raw_attach_rate(docker: aiodocker.Docker, image: str, n: int) -> float:
    """Lines/s reading the container's attach stream and counting newlines, nothing else."""
    container = await docker.containers.create(_config(image, ["seq", "1", str(n)], "raw"))
    lines = 0
    try:
        async with container.attach(stdout=True, stderr=True) as stream:
            started = time.perf_counter()
            await container.start()
            while (message := await stream.read_out()) is not None:
                lines += message.data.count(b"\n")
        elapsed = time.perf_counter() - started
    finally:
        await container.delete(force=True)
    assert lines == n
    return n / elapsed


SKELETON_STREAM = "BENCH_SKELETON"
# About the text of the orchestrator's 4096-line batches: as many messages, so as many fsyncs.
SKELETON_BATCH_BYTES = 32 * 1024


class _Lines:
    """The contract's lines from raw output, made as cheaply as Python allows (no masking, no
    cap, no 64 KiB split): the least that produces what the WebSocket must carry."""

    def __init__(self) -> None:
        self.seq = 1
        self.partial = b""

    def encode(self, data: bytes) -> bytes:
        data = self.partial + data
        cut = data.rfind(b"\n")
        self.partial = data[cut + 1 :]
        texts = data[:cut].decode("utf-8", "replace").split("\n")
        count = len(texts)
        at = datetime.now(UTC)
        lines = list(
            map(
                LogLine,
                range(self.seq, self.seq + count),
                itertools.repeat("stdout", count),
                texts,
                itertools.repeat(at, count),
                itertools.repeat(1, count),
            )
        )
        self.seq += count
        return msgspec.json.encode(lines)


async def skeleton_rate(
    docker: aiodocker.Docker, js: Any, nats_url: str, image: str, n: int, contract_json: bool
) -> float:
    """Lines/s from the container to a WebSocket client through JetStream with nothing else:
    attach chunks published as they come (raw nats-py, 16 in flight) - as they are, or as the
    contract's JSON lines - a relay process forwarding each message as a frame (raw aiohttp),
    and a client process counting lines. No checks, no storage, no rooms."""
    subject = f"bench.skeleton.{uuid.uuid4().hex}"
    # Stored as the LOGS stream is (file, uncompressed), under the same server-wide fsync policy.
    await js.add_stream(
        name=SKELETON_STREAM, subjects=["bench.skeleton.>"], compression=StoreCompression.NONE
    )
    relay = await _spawn("relay", nats_url, subject)
    port = int((await relay.stdout.readline()).split()[1])
    viewer = await _spawn("client", f"ws://127.0.0.1:{port}/", "json" if contract_json else "raw")
    assert (await viewer.stdout.readline()).strip() == b"ready"
    container = await docker.containers.create(_config(image, ["seq", "1", str(n)], "skeleton"))
    acks: collections.deque[asyncio.Future[Any]] = collections.deque()
    lines = _Lines()

    async def send(data: bytes) -> None:
        acks.append(await js.publish_async(subject, lines.encode(data) if contract_json else data))
        while len(acks) > 16:
            await acks.popleft()

    buffered: list[bytes] = []
    size = 0
    try:
        async with container.attach(stdout=True, stderr=True) as stream:
            started = time.time()
            await container.start()
            while (message := await stream.read_out()) is not None:
                buffered.append(message.data)
                size += len(message.data)
                if size >= SKELETON_BATCH_BYTES:
                    await send(b"".join(buffered))
                    buffered, size = [], 0
        if buffered:
            await send(b"".join(buffered))
        await asyncio.gather(*acks)
        await js.publish(subject, b"")  # the end
        result = msgspec.json.decode(await asyncio.wait_for(viewer.stdout.readline(), 300))
        assert await viewer.wait() == 0 and await relay.wait() == 0
    finally:
        await container.delete(force=True)
        for process in (relay, viewer):
            if process.returncode is None:
                process.kill()
                await process.wait()
        await js.delete_stream(SKELETON_STREAM)
    assert result["lines"] == n, result
    return n / (result["last_at"] - started)


async def _spawn(*args: str) -> Any:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.benchmarks.skeleton_relay",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )


async def run_job(
    docker: aiodocker.Docker,
    nc: Any,
    js: Any,
    image: str,
    command: list[str],
    job_id: str,
) -> tuple[float, int]:
    """Run the container as the orchestrator does (pump + LogSink); its start time, lines."""
    runtime = DockerRuntime(docker)
    spec = JobSpec(image=image, command=command)
    plan = plan_job(spec, job_id=job_id, attempt=1, orchestrator=ORCHESTRATOR)
    container = await runtime.create_container(plan.job)
    sink = LogSink(nc, js, job_id, 1, window=ORCHESTRATOR_CONFIG.log_window)
    # The container is never slowed down: what the bus cannot take yet waits in the pipeline,
    # here allowed to hold every line (the orchestrator's cap would drop some past 100 000
    # waiting lines, which would make the count meaningless).
    pipeline = LogPipeline(attempt=1, cap_bytes=1 << 30, max_pending_lines=10 * LINES)
    try:
        async with runtime.stream_output(container) as output:
            started = time.time()
            await runtime.start(container)
            await LogPump(pipeline, **PUMP).run(output, sink.publish)
        await sink.flush()
        await runtime.wait(container)
    finally:
        await runtime.remove(container)
    return started, pipeline.next_seq - 1


async def client(
    relay: RelayProcess, job_id: str, *flags: str
) -> tuple[asyncio.subprocess.Process, Any]:
    """The WebSocket client process, connected (it said `ready`)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.benchmarks.log_relay_client",
        relay.ws_url,
        job_id,
        "acme-token",
        *flags,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert (await asyncio.wait_for(process.stdout.readline(), 30)).strip() == b"ready"
    return process, process.stdout


async def result_of(process: asyncio.subprocess.Process, stdout: Any) -> dict[str, Any]:
    line = await asyncio.wait_for(stdout.readline(), 300)
    assert await process.wait() == 0, line
    return dict(msgspec.json.decode(line))


async def test_lines_per_second_to_one_websocket_client(
    nats_url: str,
    database_url: str,
    jobs: Jobs,
    bus: tuple[Any, Any],
    pool: Pool,
    docker: aiodocker.Docker,
    busybox_image: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nc, js = bus
    raw: list[float] = []
    skeleton: list[float] = []
    skeleton_json: list[float] = []
    runs: list[tuple[float, float, float, int]] = []
    async with relay_process(nats_url, database_url) as relay:
        for _ in range(ROUNDS):  # alternate, so that drift in the engine hits both alike
            raw.append(await raw_attach_rate(docker, busybox_image, LINES))
            skeleton.append(await skeleton_rate(docker, js, nats_url, busybox_image, LINES, False))
            skeleton_json.append(
                await skeleton_rate(docker, js, nats_url, busybox_image, LINES, True)
            )
            job_id = await jobs.running()
            process, stdout = await client(relay, job_id)
            cpu, by_command = cpu_seconds(relay.pid), cpu_by_command()
            command = ["seq", "1", str(LINES)]
            started, published = await run_job(docker, nc, js, busybox_image, command, job_id)
            acked = time.time()
            await jobs.finish(job_id)
            result = await result_of(process, stdout)
            assert published == LINES and result["lines"] == LINES
            cpu = cpu_seconds(relay.pid) - cpu
            print(f"\n  CPU by command, this run: {busiest(by_command, cpu_by_command())}")
            rate = LINES / (result["last_at"] - started)
            bus_rate = LINES / (acked - started)
            runs.append((rate, bus_rate, cpu / LINES * 1e6, result["resumed"]))
            await stored(pool, job_id, LINES)  # the next run starts with the relay idle
    best_raw = max(raw)
    rate, bus_rate, cpu, resumed = max(runs)
    with capsys.disabled():
        print(
            f"\nlog relay throughput, `seq 1 {LINES:,}` to one WebSocket client (best of {ROUNDS}):"
        )
        print(f"  raw docker attach        {best_raw:12,.0f} lines/s")
        best_skeleton = max(skeleton)
        print(
            f"  bare JetStream + WS hop  {best_skeleton:12,.0f} lines/s  "
            f"({best_skeleton / best_raw:.2f}x raw: raw nats-py and aiohttp, no JSON or storage)"
        )
        best_json = max(skeleton_json)
        print(
            f"  ... as contract JSON     {best_json:12,.0f} lines/s  "
            f"({best_json / best_raw:.2f}x raw: the same, carrying the lines the WebSocket must)"
        )
        print(f"  container -> WebSocket   {rate:12,.0f} lines/s  ({rate / best_raw:.2f}x raw)")
        print(f"  (every line acked by JetStream at {bus_rate:,.0f} lines/s; relay CPU")
        print(f"   {cpu:.2f} s per million lines; the client resumed {resumed}x after a 1013)")


async def test_lines_persisted_per_second_from_a_backlog(
    nats_url: str,
    database_url: str,
    jobs: Jobs,
    bus: tuple[Any, Any],
    pool: Pool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nc, js = bus
    job_ids = [await jobs.running() for _ in range(4)]
    per_job = 500_000
    at = datetime.now(UTC)
    size = PUMP["max_lines"]
    for job_id in job_ids:  # the backlog, batched as the orchestrator batches it
        sink = LogSink(nc, js, job_id, 1, window=ORCHESTRATOR_CONFIG.log_window)
        for first in range(1, per_job + 1, size):
            seqs = range(first, min(per_job, first + size - 1) + 1)
            await sink.publish(
                [LogLine(s, "stdout", f"{s} some text of a line", at, 1) for s in seqs]
            )
        await sink.flush()
    total = per_job * len(job_ids)
    started = time.perf_counter()
    async with relay_process(nats_url, database_url):

        async def all_stored() -> bool:
            return bool(await pool.fetchval("SELECT sum(lines) FROM log_jobs") == total)

        await eventually(all_stored, timeout_s=300, poll_s=0.05)
        elapsed = time.perf_counter() - started
    size = await pool.fetchval("SELECT pg_total_relation_size('log_chunks')")
    sample = [LogLine(s, "stdout", f"{s} some text of a line", at, 1) for s in (1, per_job)]
    json_size = sum(len(msgspec.json.encode(line)) for line in sample) / len(sample)
    with capsys.disabled():
        print(f"\nlog persistence, a backlog of {total:,} lines in {len(job_ids)} jobs:")
        print(f"  persisted  {total / elapsed:12,.0f} lines/s (relay start to last commit)")
        print(
            f"  stored     {size / total:12.1f} bytes/line on disk (table, TOAST, index), "
            f"for {json_size:.0f} bytes of JSON"
        )


async def test_latency_at_ten_thousand_lines_per_second(
    nats_url: str,
    database_url: str,
    jobs: Jobs,
    bus: tuple[Any, Any],
    docker: aiodocker.Docker,
    busybox_image: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nc, js = bus
    # About 100 lines every 10 ms for 10 s.
    script = "i=0; while [ $i -lt 1000 ]; do seq 1 100; usleep 10000; i=$((i+1)); done"
    async with relay_process(nats_url, database_url) as relay:
        job_id = await jobs.running()
        process, stdout = await client(relay, job_id, "--latency")
        started, published = await run_job(
            docker, nc, js, busybox_image, ["sh", "-c", script], job_id
        )
        duration = time.time() - started
        await jobs.finish(job_id)
        result = await result_of(process, stdout)
    assert result["lines"] == published
    with capsys.disabled():
        print(f"\nlog latency, {published / duration:,.0f} lines/s for {duration:.0f} s:")
        print(
            f"  pump read -> WebSocket client: p50 {result['p50_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms"
        )


async def _sample_rss(relay: RelayProcess, until: asyncio.Future[Any]) -> int:
    peak = 0

    def sample() -> bool:
        nonlocal peak
        peak = max(peak, relay.rss_bytes())
        return until.done()

    await eventually(sample, timeout_s=300, poll_s=0.05)
    return peak


async def test_relay_memory_with_idle_and_stalled_clients(
    nats_url: str,
    database_url: str,
    jobs: Jobs,
    bus: tuple[Any, Any],
    docker: aiodocker.Docker,
    busybox_image: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each case in a fresh relay process: RSS rarely goes down once up (malloc keeps it)."""
    nc, js = bus
    mib = 1024 * 1024
    n = 2_000_000
    headers = {"Authorization": "Bearer acme-token"}
    async with relay_process(nats_url, database_url) as relay, aiohttp.ClientSession() as session:
        await asyncio.sleep(1.0)
        idle = relay.rss_bytes()
        sockets = []
        for _ in range(100):
            job_id = await jobs.running()
            url = f"{relay.ws_url}/v1/jobs/{job_id}/logs/ws"
            sockets.append(await session.ws_connect(url, headers=headers))
        await asyncio.sleep(1.0)
        with_idle = relay.rss_bytes()
        for ws in sockets:
            await ws.close()

    peaks = {}
    for stalled in (False, True):
        async with (
            relay_process(nats_url, database_url) as relay,
            aiohttp.ClientSession() as session,
        ):
            job_id = await jobs.running()
            process, stdout = await client(relay, job_id)
            slow = None
            if stalled:  # connected, then never reads again
                url = f"{relay.ws_url}/v1/jobs/{job_id}/logs/ws"
                slow = await session.ws_connect(url, headers=headers)
            job = asyncio.ensure_future(
                run_job(docker, nc, js, busybox_image, ["seq", "1", str(n)], job_id)
            )
            peaks[stalled] = await _sample_rss(relay, job)
            await job
            await jobs.finish(job_id)
            assert (await result_of(process, stdout))["lines"] == n
            if slow is not None:
                await slow.close()
    with capsys.disabled():
        print("\nlog relay memory (RSS):")
        print(f"  idle                              {idle / mib:7.1f} MiB")
        print(f"  100 idle clients on 100 jobs      {with_idle / mib:7.1f} MiB")
        print(f"  {n:,}-line job, one fast client   {peaks[False] / mib:7.1f} MiB peak")
        print(f"  same, plus one stalled client     {peaks[True] / mib:7.1f} MiB peak")
