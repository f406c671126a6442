"""Answering claims: an orchestrator asks for an attempt; the answer is the appended claim.

Several schedulers share CLAIMS_SUBJECTS in a queue group; the expected-version append makes
exactly one orchestrator win an attempt however many ask, through however many schedulers.
An orchestrator asks on its own subject (NATS permissions let nobody else publish there), so
a request naming another orchestrator than its subject is refused before anything is stored.
Every answer is signed (signing.py) when the scheduler has a claim key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypedDict

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from dockyard.bus import names, protocol
from dockyard.bus.connection import jetstream
from dockyard.bus.errors import BusError, BusRejected, MessageDecodeError, translated
from dockyard.bus.signing import ClaimSigner
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
StreamedSeqOf = Callable[[str], Awaitable[int]]


class _Answers(TypedDict):
    """The claim an answer is for, under its signature."""

    job_id: str
    attempt: int
    orchestrator: str


def answers_to(request: protocol.ClaimRequest) -> _Answers:
    return {
        "job_id": request.job_id,
        "attempt": request.attempt,
        "orchestrator": request.orchestrator,
    }


async def answer_claim(
    batcher: CommandBatcher,
    request: protocol.ClaimRequest,
    stored_log_of: StoredLogOf | None = None,
    streamed_seq_of: StreamedSeqOf | None = None,
) -> protocol.ClaimAnswer:
    command = ClaimJob(
        attempt=request.attempt, orchestrator=request.orchestrator, resources=request.resources
    )
    answering = answers_to(request)
    try:
        outcome = await batcher.execute(request.job_id, command, meta=request.meta)
    except Rejected as refused:
        return protocol.ClaimAnswer(granted=False, reason=refused.message, **answering)
    except (StoreUnavailable, ConcurrencyError) as error:
        return protocol.ClaimAnswer(granted=False, reason=str(error), retry=True, **answering)
    job = outcome.job
    assert job is not None  # decide raised UnknownJob otherwise
    stored, streamed = NOTHING, 0
    # A first attempt follows no other, so nothing of the job can be logged yet.
    if request.attempt > 1:
        try:  # the attempt numbers its lines after every line of the earlier ones
            stored, streamed = await asyncio.gather(
                _stored(stored_log_of, request.job_id), _streamed(streamed_seq_of, request.job_id)
            )
        except BusError as error:  # ask again: the claim stands, the next answer is the same
            reason = f"the job's last log seq is unknown for now: {error}"
            return protocol.ClaimAnswer(granted=False, reason=reason, retry=True, **answering)
    return protocol.ClaimAnswer(
        log_seq=max(stored.seq, streamed),
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
        **answering,
    )


async def _stored(stored_log_of: StoredLogOf | None, job_id: str) -> StoredLog:
    if stored_log_of is None:
        return NOTHING
    try:
        return await stored_log_of(job_id)
    except Exception as error:  # the LOGS stream's last seq still covers what is waiting
        log.warning("claim.stored_log_unknown job=%s error=%s", job_id, error)
        return NOTHING


async def _streamed(streamed_seq_of: StreamedSeqOf | None, job_id: str) -> int:
    return 0 if streamed_seq_of is None else await streamed_seq_of(job_id)


async def last_streamed_seq(js: JetStreamContext, job_id: str) -> int:
    """The last seq of the job's last batch on the LOGS stream, whoever sent it (0 if none):
    lines of an earlier attempt may still wait there for the log relay. BusError if NATS
    cannot say. (A batch on the subject of an orchestrator that does not hold its attempt,
    which the relay drops, can only make the seqs skip ahead.)"""
    try:
        with translated():
            message = await js.get_last_msg(names.LOGS_STREAM, names.job_logs_filter(job_id))
    except BusRejected as exc:
        if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
            return 0
        raise
    try:
        batch = protocol.decode_log_batch(message.data or b"")
    except MessageDecodeError:
        return 0
    return batch.seq_reached()  # an attempt's final batch may hold no line


class ClaimResponder:
    def __init__(
        self,
        nc: NatsClient,
        store: EventStore,
        metrics: SchedulerMetrics | None = None,
        stored_log_of: StoredLogOf | None = None,
        batcher: CommandBatcher | None = None,
        signer: ClaimSigner | None = None,
    ) -> None:
        """`signer`: the claim key every answer is signed with; None only in development
        (orchestrators then run whatever answers them, which the service warns about)."""
        self.nc = nc
        self.store = store
        self.signer = signer
        self.batcher = batcher or CommandBatcher(store)
        self._owns_batcher = batcher is None
        self.metrics = metrics
        self.stored_log_of = stored_log_of
        js = jetstream(nc)
        self.streamed_seq_of: StreamedSeqOf = lambda job_id: last_streamed_seq(js, job_id)
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(
            names.CLAIMS_SUBJECTS, queue=names.CLAIMS_QUEUE_GROUP, cb=self._on_message
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
            await self._respond(msg, protocol.ClaimAnswer(granted=False, reason=str(error)))
            return
        sender = names.claim_sender(msg.subject)
        if sender is None or names.subject_token(request.orchestrator) != sender:
            await self._refuse_sender(msg, request, sender)
            return
        answer = await answer_claim(self.batcher, request, self.stored_log_of, self.streamed_seq_of)
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
        await self._respond(msg, answer)

    async def _refuse_sender(
        self, msg: Msg, request: protocol.ClaimRequest, sender: str | None
    ) -> None:
        """A claim for another orchestrator than the one whose subject it came on."""
        log.warning(
            "claim.wrong_sender job=%s orchestrator=%s subject=%s",
            request.job_id,
            request.orchestrator,
            msg.subject,
            extra={"event": "claim.wrong_sender", "job": request.job_id},
        )
        if self.metrics is not None:
            self.metrics.senders_refused.labels("claim").inc()
        reason = (
            f"a claim for orchestrator {request.orchestrator} must come on its own subject "
            f"({names.claim_subject(request.orchestrator)}), not from {sender or msg.subject}"
        )
        answer = protocol.ClaimAnswer(granted=False, reason=reason, **answers_to(request))
        await self._respond(msg, answer)

    async def _respond(self, msg: Msg, answer: protocol.ClaimAnswer) -> None:
        """The answer, signed over its exact bytes; sign once, verify once per claim."""
        payload = protocol.encode(answer)
        headers = self.signer.headers(payload) if self.signer is not None else None
        try:
            await self.nc.publish(msg.reply, payload, headers=headers)
        except Exception as error:  # the asker gave up; it will ask again, and get the same
            log.warning("claim.reply_failed error=%s", error)
