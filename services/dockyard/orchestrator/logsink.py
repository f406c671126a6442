"""An attempt's log batches to `log_subject(orchestrator, job)`, pipelined, in order, none lost,
none twice. (The subject names this orchestrator: the log relay keeps a batch only from the
orchestrator that holds its attempt.)

Up to `window` batches are in flight at once (their acks overlap, which is what lets the log
keep up with a chatty container). Order holds because batches in flight together were all
sent on one connection, which the server reads in order: a batch is never sent while batches
sent before a reconnect still wait for their ack (those may have died with the old socket
while a later one, buffered during the reconnect, would get through). When an ack fails, or a
reconnect happened, every batch not yet acked is sent again in order on the new connection;
one that had been stored is dropped as a duplicate by its Nats-Msg-Id (`log_batch_id`, from
its first seq, under the sink's own nonce: see `protocol.msg_id_of`). So the stream holds every
line once, in seq order, without a gap, whatever NATS does meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck

from dockyard.bus import decode_event, names, protocol
from dockyard.bus.errors import (
    BusRejected,
    MessageDecodeError,
    translate,
    translated,
)
from dockyard.core.events import JobClaimed, type_name
from dockyard.core.log_line import LogLine
from dockyard.orchestrator.ports import LastBatch
from dockyard.orchestrator.retrying import backoff, wait_connected
from dockyard.runtime.output import LineBatch

log = logging.getLogger("dockyard.orchestrator.logs")

ACK_TIMEOUT_S: Final = 5.0
# A batch whose JSON is larger is split: under the streams' 1 MiB message limit, whatever the
# lines hold (JSON escapes a control character as 6 bytes, so estimates can be far off).
MAX_PAYLOAD: Final = 900 * 1024
# While waiting for an ack, how often to look for a reconnect (which means: resend now).
RECONNECT_POLL_S: Final = 0.1


class _Batch:
    __slots__ = ("ack", "lines", "msg_id", "output_bytes", "payload")

    def __init__(self, msg_id: str, payload: bytes, output_bytes: int = 0, lines: int = 0) -> None:
        self.msg_id = msg_id
        self.payload = payload
        self.output_bytes = output_bytes
        self.lines = lines
        self.ack: asyncio.Future[PubAck] | None = None  # None: not sent (on this connection)


class LogSink:
    """Publishes one attempt's batches; `flush` returns once every one is stored."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        job_id: str,
        attempt: int,
        *,
        orchestrator: str,
        window: int = 16,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        superseded: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`headers` go on every batch besides its Nats-Msg-Id: the attempt's trace context.
        `superseded` says whether a later attempt of the job was claimed: asked before
        batches are sent again after an outage (see `_resend`)."""
        self._nc = nc
        self._js = js
        self._job_id = job_id
        self._attempt = attempt
        self._subject = names.log_subject(orchestrator, job_id)
        self._nonce = protocol.new_nonce()
        self._window = max(1, window)
        self._ack_timeout_s = ack_timeout_s
        self._in_flight: deque[_Batch] = deque()
        self._epoch = -1  # the connection (reconnect count) the sent batches went out on
        self._headers = dict(headers or {})
        self._superseded = superseded
        self._checked_epoch = self._reconnects()  # the connection last asked about a claim
        self._fenced = False  # a later attempt owns the job's log: send nothing more
        self.published_lines = 0

    async def publish(self, lines: list[LogLine], *, last_seq: int | None = None) -> None:
        """Send a batch after the previous ones; waits only while the window is full.
        `last_seq`: the attempt's final batch, sent even without lines (see LogBatch)."""
        if (not lines and last_seq is None) or self._fenced:
            return
        if await self._fenced_after_reconnect():
            return
        batch = protocol.LogBatch(
            job_id=self._job_id, attempt=self._attempt, lines=lines, last_seq=last_seq
        )
        payload = protocol.encode(batch)
        if len(payload) > MAX_PAYLOAD and len(lines) > 1:
            half = len(lines) // 2
            await self.publish(lines[:half])
            await self.publish(lines[half:], last_seq=last_seq)
            return
        output = lines.output_bytes if isinstance(lines, LineBatch) else _output_bytes(lines)
        fact = (
            protocol.log_batch_id(self._job_id, lines[0].seq)
            if lines
            else protocol.log_end_id(self._job_id, self._attempt)
        )
        item = _Batch(protocol.msg_id_of(self._nonce, fact), payload, output, len(lines))
        self._in_flight.append(item)
        self.published_lines += len(lines)
        if self._may_send(item):
            await self._send(item)
        else:
            await self._settle_oldest()  # a failure or reconnect to resolve first, in order
        while len(self._in_flight) > self._window:
            await self._settle_oldest()

    async def flush(self) -> None:
        while self._in_flight:
            await self._settle_oldest()

    def abandon(self) -> None:
        """Forget what is in flight (the attempt was cancelled): free the client's ack slots."""
        for item in self._in_flight:
            _discard(item.ack)
        self._in_flight.clear()

    def _reconnects(self) -> int:
        return int(self._nc.stats.get("reconnects", 0))

    def _may_send(self, item: _Batch) -> bool:
        """Only right behind sent batches of this same connection (else: the resend does)."""
        if not self._nc.is_connected:
            return False
        previous = self._in_flight[-2] if len(self._in_flight) > 1 else None
        if previous is None:
            return True
        if previous.ack is None or _failed(previous.ack):
            return False
        return self._epoch == self._reconnects()

    async def _send(self, item: _Batch) -> None:
        if not any(other.ack is not None for other in self._in_flight):
            self._epoch = self._reconnects()
        try:
            item.ack = await self._js.publish_async(
                self._subject,
                item.payload,
                headers={
                    **self._headers,
                    names.MSG_ID: item.msg_id,
                    names.LOG_BYTES: str(item.output_bytes),
                },
                stream=names.LOGS_STREAM,
            )
        except (nats.errors.Error, OSError) as exc:
            failed: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            item.ack = failed  # settled (and resent, with what follows) in its turn

    async def _settle_oldest(self) -> None:
        failures = 0
        while self._in_flight:
            item = self._in_flight[0]
            if item.ack is None:
                await self._resend()
                continue
            try:
                stored = await self._await_ack(item.ack)
            except (nats.errors.Error, OSError) as exc:
                if isinstance(translate(exc), BusRejected):
                    # JetStream refuses it for good (it cannot be too large: batches are
                    # capped far below the stream's limit). Waiting would stall the job's
                    # whole log, so the batch is dropped, loudly.
                    log.error(
                        "orchestrator.log_batch_refused job=%s batch=%s error=%s",
                        self._job_id,
                        item.msg_id,
                        exc,
                        extra={"event": "orchestrator.log_batch_refused", "job": self._job_id},
                    )
                    self._in_flight.popleft()
                    return
                stored = False
            if stored:
                self._in_flight.popleft()
                return
            if self._epoch == self._reconnects():  # a failure, not a new connection: pause
                failures += 1
                await asyncio.sleep(backoff(failures))
            await self._resend()

    async def _await_ack(self, ack: asyncio.Future[PubAck]) -> bool:
        """True once acked; False if it timed out or the connection was replaced meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ack_timeout_s
        while True:
            if ack.done():
                ack.result()  # raises the publish's error
                return True
            if self._epoch != self._reconnects() or loop.time() > deadline:
                return False
            await asyncio.wait({ack}, timeout=RECONNECT_POLL_S)

    async def _resend(self) -> None:
        """Send every unacked batch again, in order, on the current connection.

        Unless, on a new connection, a later attempt turns out to have been claimed (this
        orchestrator was cut off past its lease and its attempt replaced): that attempt numbers
        its lines after what was stored when it was claimed, so what this one holds, or prints
        next, would take its seqs. Those lines are dropped, loudly. (A claim not yet on EVENTS
        when asked, behind the outbox, can still collide; the log relay then stores the batch
        it writes first and drops the other's lines with those seqs.)
        """
        for item in self._in_flight:
            _discard(item.ack)
            item.ack = None
        await wait_connected(self._nc)
        if await self._fenced_after_reconnect():
            return
        for item in self._in_flight:
            await self._send(item)
            if item.ack is None or _failed(item.ack):
                break  # the rest wait for the next resend, to stay in order

    async def _fenced_after_reconnect(self) -> bool:
        """Once per new connection (an outage may have outlasted the lease): fence if a later
        attempt was claimed meanwhile."""
        if self._superseded is None or self._checked_epoch == self._reconnects():
            return False
        self._checked_epoch = self._reconnects()
        if await self._is_superseded():
            self._fence()
        return self._fenced

    async def _is_superseded(self) -> bool:
        assert self._superseded is not None
        try:
            return await self._superseded()
        except Exception as exc:  # cannot tell: send as before, the batch ids still guard
            log.info("orchestrator.supersede_check_failed job=%s error=%s", self._job_id, exc)
            return False

    def _fence(self) -> None:
        lines = sum(item.lines for item in self._in_flight)
        log.warning(
            "orchestrator.log_superseded job=%s attempt=%d dropped_lines=%d",
            self._job_id,
            self._attempt,
            lines,
            extra={"event": "orchestrator.log_superseded", "job": self._job_id},
        )
        self._in_flight.clear()
        self._fenced = True


def _failed(ack: asyncio.Future[PubAck]) -> bool:
    return ack.done() and not ack.cancelled() and ack.exception() is not None


def _discard(ack: asyncio.Future[PubAck] | None) -> None:
    """Drop an ack future: cancel it if pending (frees its slot), read its error if failed."""
    if ack is None:
        return
    if not ack.done():
        ack.cancel()
    elif not ack.cancelled():
        ack.exception()


async def last_batch(js: JetStreamContext, job_id: str, orchestrator: str) -> LastBatch:
    """The last batch this orchestrator published for the job; BusUnavailable: ask again.
    What a recovered attempt continues after, and whether its log was whole. (A new attempt
    is told where to start by its claim answer: the scheduler looks at every orchestrator's
    batches of the job, which an orchestrator may not read.)
    """
    subject = names.log_subject(orchestrator, job_id)
    try:
        with translated():
            message = await js.get_last_msg(names.LOGS_STREAM, subject)
    except BusRejected as exc:
        if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
            return LastBatch()
        raise
    try:
        batch = protocol.decode_log_batch(message.data or b"")
    except MessageDecodeError:
        return LastBatch()
    return LastBatch(
        seq=batch.seq_reached(), attempt=batch.attempt, final=batch.last_seq is not None
    )


async def later_attempt_claimed(js: JetStreamContext, job_id: str, attempt: int) -> bool:
    """Whether the EVENTS stream's last claim of the job is of an attempt after `attempt`."""
    subject = names.event_subject(job_id, type_name(JobClaimed))
    try:
        with translated():
            message = await js.get_last_msg(names.EVENTS_STREAM, subject)
    except BusRejected as exc:
        if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
            return False
        raise
    event = decode_event(message.data or b"")
    return isinstance(event, JobClaimed) and event.attempt > attempt


def _output_bytes(lines: list[LogLine]) -> int:
    """The job's own output in `lines`, what the log cap counts. Only for batches not taken
    from a pipeline (halves of an oversized one, recovery's lines): a LineBatch knows it."""
    return sum(len(line.text) for line in lines if line.stream != "system")
