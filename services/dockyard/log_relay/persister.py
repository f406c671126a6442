"""The durable consumer that keeps every log line: LOGS batches into PostgreSQL, in bulk.

Messages are gathered into a flush until it holds FLUSH_BYTES or FLUSH_DELAY_S has passed
since its first message, written in one statement, and acked only after the commit. While
one flush is written the next is gathered (a two-stage pipeline), and a writer that falls
behind stops the fetching, so memory holds at most a few flushes. A batch delivered again -
after a crash between commit and ack, or a NATS restart - writes nothing twice (see store.py).
The database being down only delays: a flush is retried until it is stored, and its messages
are kept from redelivery meanwhile with in-progress acks.

A batch is kept only from the orchestrator holding its attempt (holders.py): one that came on
another orchestrator's subject is dropped before it can take any seq (acked, counted in
`dockyard_log_batches_dropped_total`, logged once per job, attempt and sender). Batches an
earlier version published on `dockyard.logs.<job>`, which names no sender and which the LOGS
stream no longer takes, are still stored as they come. A batch of an attempt that a later
one replaced, which reached the stream after the later attempt's first (superseded.py), is
dropped the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dockyard.bus import names
from dockyard.bus.errors import BusError, BusRejected, MessageDecodeError, translated
from dockyard.bus.names import log_sender, subject_token
from dockyard.bus.topology import LOGS_POLICY
from dockyard.core.events import Metadata
from dockyard.job_logs.chunks import Chunk, chunks_of, with_output_bytes
from dockyard.job_logs.store import LogStore
from dockyard.log_relay.holders import Attempt, AttemptHolders
from dockyard.log_relay.metrics import RelayMetrics
from dockyard.log_relay.superseded import LaterAttempts
from dockyard.process.cancelling import cancel_and_wait, raise_if_cancelled
from dockyard.store.ports import StoreUnavailable
from dockyard.telemetry import tracing

log = logging.getLogger("dockyard.log_relay.persister")

# A fetch asks for at most this many messages, and fewer when they are large: the server
# disconnects a client that has too much to read (64 MiB by default), so a fetch aims at
# FETCH_BYTES whatever the batch size the orchestrators use.
FETCH_BATCH: Final = 256
FETCH_BYTES: Final = 4 * 1024 * 1024
FLUSH_BYTES: Final = 4 * 1024 * 1024
FLUSH_DELAY_S: Final = 0.02
IDLE_FETCH_S: Final = 5.0
MIN_FETCH_S: Final = 0.005
QUEUED_FLUSHES: Final = 1
RETRY_CAP_S: Final = 5.0
# Three times per ack wait: a flush waiting for the database keeps its messages from being
# redelivered (to this relay or another) meanwhile, even if an in-progress ack is lost.
IN_PROGRESS_EVERY_S: Final = LOGS_POLICY.ack_wait / 3
# Dropped batches are logged once per (job, attempt, sender), for this many of them.
DROPS_LOGGED: Final = 10_000


@dataclass
class _Flush:
    msgs: list[Msg] = field(default_factory=list)
    chunks: dict[tuple[str, int], Chunk] = field(default_factory=dict)
    of_msg: list[list[Chunk]] = field(default_factory=list)  # each message's chunks
    bytes: int = 0
    repeated_lines: int = 0  # the same batch twice in one flush (a redelivery)

    def take(self, msg: Msg, chunks: list[Chunk]) -> None:
        self.add(msg, chunks)
        # The chunks hold the lines now; the payload is not needed again (only the message,
        # to ack it), so it is let go at once: a flush weighs its lines once, not twice.
        self.bytes += len(msg.data)
        msg.data = b""

    def add(self, msg: Msg, chunks: list[Chunk]) -> None:
        self.msgs.append(msg)
        self.of_msg.append(chunks)
        for chunk in chunks:
            if self.chunks.setdefault((chunk.job_id, chunk.first), chunk) is not chunk:
                self.repeated_lines += chunk.count


def _backoff(failures: int) -> float:
    return min(RETRY_CAP_S, 0.1 * 2.0 ** min(failures, 8)) * random.uniform(0.8, 1.2)


class LogPersister:
    def __init__(
        self,
        js: JetStreamContext,
        store: LogStore,
        metrics: RelayMetrics | None = None,
        *,
        fetch_batch: int = FETCH_BATCH,
        flush_bytes: int = FLUSH_BYTES,
        flush_delay_s: float = FLUSH_DELAY_S,
        holders: AttemptHolders | None,
    ) -> None:
        """`holders`: who claimed each attempt, the only sender whose batches are kept; None
        keeps every batch (for tests of the relay's other parts only)."""
        self._js = js
        self._store = store
        self._holders = holders
        self._drops_logged: set[tuple[str, int, str]] = set()
        self._later = LaterAttempts()
        self._metrics = metrics or RelayMetrics()
        self._fetch_batch = fetch_batch
        self._message_bytes = 256 * 1024.0  # what a message may weigh (LogPump's batch size)
        self._flush_bytes = flush_bytes
        self._flush_delay = flush_delay_s
        self._sub: JetStreamContext.PullSubscription | None = None

    async def run(self) -> None:
        """Persist forever: gather the next flush while the previous one is written."""
        queue: asyncio.Queue[_Flush] = asyncio.Queue(maxsize=QUEUED_FLUSHES)

        async def gather() -> None:
            while True:
                raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
                flush = await self._collect(IDLE_FETCH_S)
                if flush.msgs:
                    await queue.put(flush)

        async def write() -> None:
            while True:
                await self._persist(await queue.get())

        # Not a TaskGroup: on 3.11 it passes only the first cancel on to its tasks, and a
        # gatherer whose cancel nats-py lost would then wait on a full queue forever.
        tasks = [asyncio.create_task(gather()), asyncio.create_task(write())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises what ended it (the loops end no other way)
        finally:
            await cancel_and_wait(tasks)

    async def run_until_idle(self, idle_s: float = 0.3) -> int:
        """Persist until nothing arrives for `idle_s` (tests); returns the lines written."""
        lines = 0
        while (flush := await self._collect(idle_s)).msgs:
            lines += await self._persist(flush)
        return lines

    async def _collect(self, wait_s: float) -> _Flush:
        flush = _Flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while flush.bytes < self._flush_bytes:
            raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            fetched: list[tuple[Msg, list[Chunk]]] = []
            for msg in await self._fetch(max(remaining, MIN_FETCH_S)):
                try:
                    fetched.append((msg, with_output_bytes(chunks_of(msg.data), msg.headers)))
                except MessageDecodeError as error:
                    await self._poison(msg, error)
            for msg, chunks in await self._from_holders(fetched):
                if not flush.msgs:
                    deadline = min(deadline, loop.time() + self._flush_delay)
                flush.take(msg, chunks)
        return flush

    async def _from_holders(
        self, fetched: list[tuple[Msg, list[Chunk]]]
    ) -> list[tuple[Msg, list[Chunk]]]:
        """The batches sent by the orchestrator holding their attempt; the others are acked
        and dropped. (Before they join a flush, whose duplicates check would let a forged
        batch stand in for the real one with the same first seq.)"""
        if self._holders is None or not fetched:
            return fetched
        wanted = {
            (chunks[0].job_id, chunks[0].attempt)
            for msg, chunks in fetched
            if chunks and log_sender(msg.subject) is not None
        }
        holders = await self._holders_of(wanted, [msg for msg, _ in fetched]) if wanted else {}
        kept: list[tuple[Msg, list[Chunk]]] = []
        for msg, chunks in fetched:
            sender = log_sender(msg.subject)
            if sender is None or not chunks:
                kept.append((msg, chunks))  # an earlier version's subject, or no lines
                continue
            key = (chunks[0].job_id, chunks[0].attempt)
            holder = holders.get(key)
            if holder is None or subject_token(holder) != sender:
                await self._drop_foreign(msg, key, sender, holder)
            elif self._later.admit(chunks):
                kept.append((msg, chunks))
            else:
                await self._drop_superseded(msg, key, sender)
        return kept

    async def _holders_of(self, wanted: set[Attempt], msgs: list[Msg]) -> dict[Attempt, str]:
        """The holders, waiting for the database as a write does (keeping `msgs` alive)."""
        assert self._holders is not None
        loop = asyncio.get_running_loop()
        kept_at = loop.time()
        failures = 0
        while True:
            try:
                return await self._holders.of(wanted)
            except StoreUnavailable as error:
                failures += 1
                log.warning("log_persister.holders_unknown failures=%d error=%s", failures, error)
                await asyncio.sleep(_backoff(failures))
                if loop.time() - kept_at >= IN_PROGRESS_EVERY_S:
                    kept_at = loop.time()
                    await _each(msgs, Msg.in_progress)

    async def _drop_foreign(self, msg: Msg, key: Attempt, sender: str, holder: str | None) -> None:
        self._metrics.foreign_batches.inc()
        job_id, attempt = key
        if len(self._drops_logged) < DROPS_LOGGED and (job_id, attempt, sender) not in (
            self._drops_logged
        ):
            self._drops_logged.add((job_id, attempt, sender))
            log.warning(
                "log_persister.foreign_batch job=%s attempt=%d sender=%s holder=%s: dropped, "
                "its sender does not hold the attempt (logged once)",
                job_id,
                attempt,
                sender,
                holder,
                extra={"event": "log_persister.foreign_batch", "job": job_id},
            )
        await _each([msg], Msg.ack)

    async def _drop_superseded(self, msg: Msg, key: Attempt, sender: str) -> None:
        self._metrics.foreign_batches.inc()
        job_id, attempt = key
        if len(self._drops_logged) < DROPS_LOGGED and (*key, sender) not in self._drops_logged:
            self._drops_logged.add((job_id, attempt, sender))
            later = {a: s for a, s in self._later.started(job_id).items() if a > attempt}
            log.warning(
                "log_persister.superseded_batch job=%s attempt=%d sender=%s: dropped, a later "
                "attempt took over the job's log (attempt: first seq %s; logged once)",
                job_id,
                attempt,
                sender,
                later,
                extra={"event": "log_persister.superseded_batch", "job": job_id},
            )
        await _each([msg], Msg.ack)

    async def _fetch(self, wait_s: float) -> list[Msg]:
        """Up to a fetch batch of messages; none after `wait_s`, or while NATS is away."""
        try:
            with translated():
                if self._sub is None:
                    self._sub = await self._js.pull_subscribe_bind(
                        names.LOGS_DURABLE, stream=names.LOGS_STREAM
                    )
                batch = max(1, min(self._fetch_batch, int(FETCH_BYTES / self._message_bytes)))
                msgs = await self._sub.fetch(batch, timeout=wait_s)
            if msgs:  # a slowly decaying maximum: big messages shrink the next fetch at once
                largest = max(len(msg.data) for msg in msgs)
                self._message_bytes = max(largest, 0.9 * self._message_bytes, 1024.0)
            return msgs
        except BusError as error:
            if isinstance(error.__cause__, TimeoutError):
                return []  # nothing to fetch (nats-py's timeouts are TimeoutErrors)
            # NATS restarting answers "service unavailable" for a while; a consumer that was
            # removed needs binding again (ensure_topology makes it at the next start).
            log.warning("log_persister.fetch_failed error=%s", error)
            if isinstance(error, BusRejected) and self._sub is not None:
                sub, self._sub = self._sub, None
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await asyncio.sleep(min(wait_s, 1.0))
            return []

    async def _persist(self, flush: _Flush, *, split: bool = True) -> int:
        """Write the flush until it is stored, then ack its messages; the lines written."""
        chunks = list(flush.chunks.values())
        failures = 0
        loop = asyncio.get_running_loop()
        kept_at = loop.time()
        began_ns = time.time_ns()
        while True:
            started = loop.time()
            try:
                written = await self._store.append(chunks)
                break
            except StoreUnavailable as error:
                failures += 1
                log.warning("log_persister.write_failed failures=%d error=%s", failures, error)
                await asyncio.sleep(_backoff(failures))
                if loop.time() - kept_at >= IN_PROGRESS_EVERY_S:
                    kept_at = loop.time()
                    await _each(flush.msgs, Msg.in_progress)
            except ValueError as error:  # the database refused a value: find the message
                if not split:
                    raise
                log.error("log_persister.refused error=%s", error)
                return await self._persist_one_by_one(flush)
        if tracing.enabled():
            _trace_persisted(flush, began_ns)
        self._metrics.persisted(
            loop.time() - started,
            lines=written.lines,
            chunks=written.chunks,
            duplicate_lines=sum(c.count for c in chunks) - written.lines + flush.repeated_lines,
        )
        await _each(flush.msgs, Msg.ack)
        return written.lines

    async def _persist_one_by_one(self, flush: _Flush) -> int:
        lines = 0
        for msg, chunks in zip(flush.msgs, flush.of_msg, strict=True):
            single = _Flush()
            single.add(msg, chunks)
            try:
                lines += await self._persist(single, split=False)
            except ValueError as error:
                await self._poison(msg, error)
        return lines

    async def _poison(self, msg: Msg, error: Exception) -> None:
        """A message that can never be stored: say so loudly and drop it (term)."""
        log.error(
            "log_persister.poison subject=%s error=%s",
            msg.subject,
            error,
            extra={"event": "log_persister.poison", "subject": msg.subject},
        )
        self._metrics.poison.inc()
        await _each([msg], Msg.term)


def _trace_persisted(flush: _Flush, began_ns: int) -> None:
    """A span per job trace in the flush (from the write's start to its commit), each a child
    of the context its batches carried from the orchestrator's attempt."""
    traces: dict[str, tuple[Metadata, str, int]] = {}  # traceparent: (parent, job, lines)
    for msg, chunks in zip(flush.msgs, flush.of_msg, strict=True):
        parent = tracing.message_metadata(msg.headers)
        if parent.traceparent is None or not chunks:
            continue
        _, job_id, lines = traces.get(parent.traceparent, (parent, chunks[0].job_id, 0))
        traces[parent.traceparent] = (parent, job_id, lines + sum(c.count for c in chunks))
    for parent, job_id, lines in traces.values():
        tracing.record_span(
            tracing.LOG_RELAY,
            "dockyard.logs.persist",
            parent=parent,
            start=began_ns,
            attributes={tracing.JOB: job_id, "dockyard.lines": lines},
        )


async def _each(msgs: list[Msg], action: Callable[[Msg], Awaitable[None]]) -> None:
    """Ack, term or in-progress each message; a failure only means a redelivery later."""
    for msg in msgs:
        try:
            await action(msg)
        except (nats.errors.Error, OSError) as error:
            log.info("log_persister.ack_failed action=%s error=%s", action.__name__, error)
            return
