"""The least any scheduler-plus-orchestrator of this architecture must do per job, for
bench_orchestrator.py's lower bound on trivial jobs/s.

Per job, the durable steps Dockyard takes, each on raw asyncpg, raw nats-py or raw aiodocker,
in straight-line code, in one process, with nothing else (no state machine, codec, batching,
read model, tracing, log pipeline, heartbeats, keep-alives or cleanup guarantees):

- submit: one PostgreSQL insert of two event rows (submitted, queued), then both events and
  the work offer stored in JetStream, one publish each;
- claim: the offer pulled from a work-queue stream, a request answered once two event rows
  (claimed, the container's ledger intent) are inserted, both events then published;
- run: the hardened container created, its output attached, started, waited for, read to the
  end; the offer acked; the container removed (aiodocker's attach() inspects the container
  first: the one inspect Dockyard makes too, after the exit, to learn of an OOM kill);
- reports: started, exit and removal each stored on a work-queue stream, pulled by the
  scheduler side, inserted as an event row, published as an event, acked.

That is 5 inserts and 15 stored JetStream writes a job (7 events, an offer and 3 reports, and
the acks that remove the offer and the reports), as in Dockyard. On the same NATS server
(`sync_interval: always`) and PostgreSQL, what this reaches against raw create/start/wait/
delete bounds what any implementation of the architecture can reach on the machine.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Final

import aiodocker
import asyncpg
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

EVENTS: Final = "SKELETON_EVENTS"
WORK: Final = "SKELETON_WORK"
REPORTS: Final = "SKELETON_REPORTS"
CLAIMS: Final = "skeleton.claims"
# Payloads about the size of Dockyard's: an event ~400 bytes, a submitted job's ~1 KB.
EVENT: Final = b"e" * 400
SUBMITTED: Final = b"s" * 1000


class Skeleton:
    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        docker: aiodocker.Docker,
        container_config: dict[str, Any],
    ) -> None:
        self._nc, self._js, self._pool, self._docker = nc, js, pool, docker
        self._config = container_config
        self._versions: dict[str, int] = {}
        self._succeeded: dict[str, float] = {}
        self._work: JetStreamContext.PullSubscription | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def set_up(self) -> None:
        await self._pool.execute(
            "CREATE TABLE IF NOT EXISTS skeleton_events"
            " (job text, seq int, type text, data jsonb, PRIMARY KEY (job, seq))"
        )
        streams = [
            (EVENTS, "skeleton.events.>", RetentionPolicy.LIMITS),
            (WORK, "skeleton.work", RetentionPolicy.WORK_QUEUE),
            (REPORTS, "skeleton.reports", RetentionPolicy.WORK_QUEUE),
        ]
        for name, subject, retention in streams:
            await self._js.add_stream(
                StreamConfig(
                    name=name, subjects=[subject], retention=retention, storage=StorageType.FILE
                )
            )
        await self._nc.subscribe(CLAIMS, cb=self._on_claim)
        self._work = await self._js.pull_subscribe(
            "skeleton.work", "skeleton-work", stream=WORK, config=_explicit()
        )
        reports = await self._js.pull_subscribe(
            "skeleton.reports", "skeleton-reports", stream=REPORTS, config=_explicit()
        )
        self._scheduler = asyncio.create_task(self._consume_reports(reports))

    async def rate(self, jobs: int, concurrency: int) -> float:
        """Jobs/s from the first submit to the last job's success committed."""
        ids = [uuid.uuid4().hex for _ in range(jobs)]
        started = time.perf_counter()
        claimer = asyncio.create_task(self._claim_and_run(jobs, concurrency))
        for job_id in ids:
            await self._submit(job_id)
        await claimer
        deadline = time.monotonic() + 120
        while not self._succeeded.keys() >= set(ids):
            if self._scheduler is not None and self._scheduler.done():
                self._scheduler.result()  # raises what stopped it
            if time.monotonic() > deadline:
                missing = len(set(ids) - self._succeeded.keys())
                raise AssertionError(f"skeleton: {missing} of {jobs} jobs never succeeded")
            await asyncio.sleep(0.01)
        return jobs / (max(self._succeeded[j] for j in ids) - started)

    async def close(self) -> None:
        # A flag, not cancel(): a cancel landing inside nats-py's fetch can be swallowed by it,
        # and the loop would pull forever.
        self._stopping.set()
        if self._scheduler is not None:
            await asyncio.wait_for(self._scheduler, timeout=10)

    async def _append(self, job_id: str, types: list[str]) -> None:
        version = self._versions.get(job_id, 0)
        seqs = list(range(version + 1, version + 1 + len(types)))
        await self._pool.execute(
            "INSERT INTO skeleton_events"
            " SELECT $1, s, t, '{}'::jsonb FROM unnest($2::int[], $3::text[]) AS u(s, t)",
            job_id,
            seqs,
            types,
        )
        self._versions[job_id] = seqs[-1]

    async def _publish_events(self, job_id: str, types: list[str]) -> None:
        for kind in types:
            payload = SUBMITTED if kind == "submitted" else EVENT
            await self._js.publish(f"skeleton.events.{job_id}.{kind}", payload)

    async def _submit(self, job_id: str) -> None:
        await self._append(job_id, ["submitted", "queued"])
        await self._publish_events(job_id, ["submitted", "queued"])
        await self._js.publish("skeleton.work", job_id.encode())

    async def _on_claim(self, msg: Msg) -> None:
        job_id = msg.data.decode()
        await self._append(job_id, ["claimed", "intended"])
        await msg.respond(b"granted")
        await self._publish_events(job_id, ["claimed", "intended"])

    async def _claim_and_run(self, jobs: int, concurrency: int) -> None:
        work = self._work
        assert work is not None, "set_up first"
        slots = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[None]] = set()
        taken = 0
        while taken < jobs:
            await slots.acquire()
            try:
                [offer] = await work.fetch(1, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                slots.release()
                continue
            taken += 1
            task = asyncio.create_task(self._run(offer, slots))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)

    async def _run(self, offer: Msg, slots: asyncio.Semaphore) -> None:
        job_id = offer.data.decode()
        try:
            await self._nc.request(CLAIMS, offer.data, timeout=5)
            container = await self._docker.containers.create(self._config)
            async with container.attach(stdout=True, stderr=True) as output:
                await container.start()
                await self._report(job_id, "started")
                await container.wait()
                while await output.read_out() is not None:
                    pass
            await self._report(job_id, "succeeded")
            await offer.ack()
            await container.delete(force=True)
            await self._report(job_id, "released")
        finally:
            slots.release()

    async def _report(self, job_id: str, kind: str) -> None:
        await self._js.publish("skeleton.reports", f"{job_id}:{kind}".encode())

    async def _consume_reports(self, reports: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await reports.fetch(64, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                job_id, kind = msg.data.decode().split(":")
                await self._append(job_id, [kind])
                if kind == "succeeded":
                    self._succeeded[job_id] = time.perf_counter()
                await self._publish_events(job_id, [kind])
                await msg.ack()


def _explicit() -> ConsumerConfig:
    return ConsumerConfig(ack_wait=30, max_ack_pending=1000)
