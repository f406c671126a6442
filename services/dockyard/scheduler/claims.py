"""Answering claims: an orchestrator asks for an attempt; the answer is the appended claim.

Several schedulers share CLAIMS_SUBJECT in a queue group; the expected-version append makes
exactly one orchestrator win an attempt however many ask, through however many schedulers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from dockyard.bus import names, protocol
from dockyard.bus.errors import MessageDecodeError
from dockyard.core import ClaimJob, Rejected
from dockyard.core.state import resource_key
from dockyard.handling.batching import CommandBatcher
from dockyard.handling.execute import utc_now
from dockyard.job_logs.position import NOTHING, StoredLog
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.store.ports import ConcurrencyError, EventStore, StoreUnavailable

log = logging.getLogger("dockyard.scheduler.claims")

# Claims in flight at once per scheduler: enough to keep PostgreSQL busy, bounded for memory.
MAX_IN_FLIGHT = 64


StoredLogOf = Callable[[str], Awaitable[StoredLog]]


async def answer_claim(
    batcher: CommandBatcher,
    request: protocol.ClaimRequest,
    stored_log_of: StoredLogOf | None = None,
) -> protocol.ClaimAnswer:
    command = ClaimJob(
        attempt=request.attempt, orchestrator=request.orchestrator, resources=request.resources
    )
    try:
        outcome = await batcher.execute(request.job_id, command, meta=request.meta)
    except Rejected as refused:
        return protocol.ClaimAnswer(granted=False, reason=refused.message)
    except (StoreUnavailable, ConcurrencyError) as error:
        return protocol.ClaimAnswer(granted=False, reason=str(error), retry=True)
    job = outcome.job
    assert job is not None  # decide raised UnknownJob otherwise
    stored = NOTHING
    # A first attempt follows no other, so nothing of the job can be stored yet.
    if stored_log_of is not None and request.attempt > 1:
        try:  # the attempt numbers its lines after every line stored so far
            stored = await stored_log_of(request.job_id)
        except Exception as error:  # the orchestrator also reads the LOGS stream's last seq
            log.warning("claim.log_seq_unknown job=%s error=%s", request.job_id, error)
    return protocol.ClaimAnswer(
        log_seq=stored.seq,
        log_bytes=stored.bytes,
        granted=True,
        tenant=job.tenant,
        spec=job.spec,
        queued_at=job.queued_at,
        recorded=[
            r.name
            for r in request.resources
            if resource_key(r.kind, r.name, request.attempt) in job.resources
        ],
        meta=request.meta,
    )


class ClaimResponder:
    def __init__(
        self,
        nc: NatsClient,
        store: EventStore,
        metrics: SchedulerMetrics | None = None,
        stored_log_of: StoredLogOf | None = None,
        batcher: CommandBatcher | None = None,
    ) -> None:
        self.nc = nc
        self.store = store
        self.batcher = batcher or CommandBatcher(store)
        self._owns_batcher = batcher is None
        self.metrics = metrics
        self.stored_log_of = stored_log_of
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(
            names.CLAIMS_SUBJECT, queue=names.CLAIMS_QUEUE_GROUP, cb=self._on_message
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_batcher:
            await self.batcher.close()

    async def _on_message(self, msg: Msg) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        try:
            request = protocol.decode_claim(msg.data)
        except MessageDecodeError as error:
            log.warning("claim.malformed error=%s", error, extra={"event": "claim.malformed"})
            await msg.respond(
                protocol.encode(protocol.ClaimAnswer(granted=False, reason=str(error)))
            )
            return
        answer = await answer_claim(self.batcher, request, self.stored_log_of)
        if answer.granted and self.metrics is not None and answer.queued_at is not None:
            waited = (utc_now() - answer.queued_at).total_seconds()
            self.metrics.dispatch_latency.observe(max(waited, 0.0))
        log.info(
            "claim job=%s attempt=%d orchestrator=%s granted=%s",
            request.job_id,
            request.attempt,
            request.orchestrator,
            answer.granted,
            extra={"event": "claim", "job": request.job_id, "granted": answer.granted},
        )
        try:
            await msg.respond(protocol.encode(answer))
        except Exception as error:  # the asker gave up; it will ask again, and get the same
            log.warning("claim.reply_failed error=%s", error)
