"""A job's log batches from the LOGS stream, live, taken at the pace the relay handles them.

A room's live lines come from an ephemeral pull consumer on the job's subject, not from a plain
subscription. With a plain subscription the server pushes every batch as it is published; a
relay busy elsewhere (the persister, a burst on another job, a CPU it shares) falls behind, and
past NATS's per-connection limit (64 MiB by default) the server cuts the whole connection as a
slow consumer: every room on it loses what was in flight, and its clients then wait for those
lines to be stored. Pulled, the server sends only what was asked for (`batch` messages or
`max_bytes`, whichever comes first) and the rest waits in the stream, which keeps everything
for a day: a relay that falls behind is only behind.

The next pull is asked for as soon as the previous one is used up, so a batch published while
one is outstanding is delivered at once (a pull request is served message by message, it does
not wait to fill up). The consumer starts at the first message published after it is made (what
came before is read from the store) and is made again, after the last message received, if it
goes away (NATS restarted, or it expired while the relay was cut off).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DEFAULT_PREFIX, AckPolicy, ConsumerConfig, DeliverPolicy

from dockyard.bus import names
from dockyard.bus.connection import jetstream
from dockyard.bus.errors import BusError, translated
from dockyard.process.cancelling import cancel_and_wait, raise_if_cancelled

log = logging.getLogger("dockyard.log_relay.tail")

_NEXT: Final = DEFAULT_PREFIX + ".CONSUMER.MSG.NEXT.{stream}.{consumer}"
# Every pull request ends with a status message on the inbox, after its last message: 409
# "Batch Completed" (it brought `batch` messages), 409 "Message Size Exceeds MaxBytes" (the
# next one would pass max_bytes) or 408 "Request Timeout" (expired, idle). The next request
# is asked for then, so exactly one is ever outstanding. No consumer to answer: 503, or 409
# "Consumer Deleted".
_ENDED: Final = frozenset({"408", "409 batch completed", "409 message size exceeds maxbytes"})
_GONE: Final = frozenset({"503", "409 consumer deleted"})


@dataclass(frozen=True)
class TailLimits:
    batch: int = 16  # messages per pull request
    # Bytes per pull request: at least the stream's largest message (8 MiB), and well under
    # what the server lets one connection owe it before cutting it off (64 MiB).
    max_bytes: int = 16 * 1024 * 1024
    expires_s: float = 10.0  # an idle pull request ends (and is asked for again) this often
    check_s: float = 1.0  # how often to look for a pull lost with the connection
    inactive_s: float = 60.0  # the server removes a consumer nobody pulls from this long
    retry_s: float = 0.5  # after a failure to make the consumer


class _Request(msgspec.Struct, omit_defaults=True):
    batch: int
    max_bytes: int
    expires: int  # nanoseconds


_encode = msgspec.json.Encoder().encode


class LiveTail:
    """Calls `on_batch(payload, subject)` for each message on the job's log subjects (the
    subject names its sender), in stream order, from the first one published after `start`."""

    def __init__(
        self,
        nc: NatsClient,
        job_id: str,
        on_batch: Callable[[bytes, str], None],
        limits: TailLimits = TailLimits(),
    ) -> None:
        self._nc = nc
        self._js = jetstream(nc)
        self._subject = names.job_logs_filter(job_id)
        self._on_batch = on_batch
        self._limits = limits
        self._inbox = ""
        self._sub: Subscription | None = None
        self._consumer = ""
        self._next_subject = ""
        self._last_seq = 0  # stream sequence of the last message received (or skipped)
        self._outstanding = 0  # pull requests not ended yet (one, but for a lost one)
        self._asked_at = 0.0  # loop time of the last request
        self._asked_on = -1  # the connection (reconnect count) it went out on
        self._heard_at = 0.0
        self._gone = False  # the consumer must be made again
        self._task: asyncio.Task[None] | None = None
        self.remade = 0  # how often the consumer was made again (for tests and logs)

    @property
    def consumer(self) -> str:
        """The name of the consumer now pulled from ("" before `start` and after `close`)."""
        return self._consumer

    async def start(self) -> None:
        """Make the consumer and ask for the first batch. Raises BusError."""
        loop = asyncio.get_running_loop()
        with translated():
            self._inbox = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(
                self._inbox, cb=self._on_msg, pending_bytes_limit=4 * self._limits.max_bytes
            )
            await self._make(DeliverPolicy.NEW)
            await self._ask()
        self._heard_at = loop.time()
        self._task = asyncio.create_task(self._watch(), name=f"tail-{self._subject}")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as error:  # the connection is gone: nothing to undo
                log.debug("tail.unsubscribe_failed error=%s", error)
        if self._consumer:  # it would expire by itself; this frees it at once
            try:
                async with asyncio.timeout(1.0):
                    await self._js.delete_consumer(names.LOGS_STREAM, self._consumer)
            except Exception as error:
                log.debug("tail.delete_failed consumer=%s error=%s", self._consumer, error)
            self._consumer = ""

    # -- what arrives on the inbox (a nats-py callback: no awaits on anything slow)

    async def _on_msg(self, msg: Msg) -> None:
        self._heard_at = asyncio.get_running_loop().time()
        if msg.subject == self._inbox:  # a status: the pull request ended, or found no one
            headers = msg.headers or {}
            code = headers.get("Status", "")
            status = f"{code} {headers.get('Description', '')}".strip().lower()
            if code in _ENDED or status in _ENDED:
                self._outstanding = max(0, self._outstanding - 1)
                if not self._outstanding:
                    await self._ask_quietly()
            elif code in _GONE or status in _GONE:
                self._gone = True
                self._outstanding = 0
            elif code != "100":  # not an idle heartbeat: the watch asks again in a while
                log.warning("tail.pull_refused subject=%s status=%s", self._subject, status)
            return
        try:
            seq = msg.metadata.sequence.stream
        except Exception:  # no JetStream metadata: not from our consumer
            return
        if seq <= self._last_seq:
            return  # already had (a consumer made again from an earlier point)
        self._last_seq = seq
        self._on_batch(msg.data, msg.subject)

    # -- asking for batches, and making the consumer again when it is gone

    async def _ask(self) -> None:
        limits = self._limits
        request = _Request(
            batch=limits.batch,
            max_bytes=limits.max_bytes,
            expires=int(limits.expires_s * 1e9),
        )
        loop = asyncio.get_running_loop()
        self._asked_at = loop.time()
        self._asked_on = self._reconnects()
        await self._nc.publish(self._next_subject, _encode(request), reply=self._inbox)
        self._outstanding += 1

    async def _ask_quietly(self) -> None:
        try:
            await self._ask()
        except Exception as error:  # the watch asks again
            log.debug("tail.ask_failed subject=%s error=%s", self._subject, error)

    async def _make(self, policy: DeliverPolicy) -> None:
        config = ConsumerConfig(
            name=self._nc.new_inbox().rsplit(".", 1)[-1],
            filter_subject=self._subject,
            deliver_policy=policy,
            opt_start_seq=self._last_seq + 1 if policy is DeliverPolicy.BY_START_SEQUENCE else None,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=self._limits.inactive_s,
            mem_storage=True,
            num_replicas=1,
        )
        info = await self._js.add_consumer(names.LOGS_STREAM, config=config)
        self._consumer = info.name
        self._next_subject = _NEXT.format(stream=names.LOGS_STREAM, consumer=info.name)
        if policy is DeliverPolicy.NEW and info.delivered is not None:
            # Everything up to here is before the start: the store has it, or will.
            self._last_seq = max(self._last_seq, info.delivered.stream_seq or 0)
        self._gone = False

    def _reconnects(self) -> int:
        return int(self._nc.stats.get("reconnects", 0))

    async def _watch(self) -> None:
        """Ask again when a pull was lost with the connection or went unanswered; make the
        consumer again when it is gone, from the message after the last one received."""
        limits = self._limits
        loop = asyncio.get_running_loop()
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
            await asyncio.sleep(limits.check_s)
            if not self._nc.is_connected:
                continue
            try:
                if self._gone:
                    with translated():
                        await self._make(DeliverPolicy.BY_START_SEQUENCE)
                        await self._ask()
                    self.remade += 1
                    log.info("tail.remade subject=%s after=%d", self._subject, self._last_seq)
                    continue
                silent = loop.time() - max(self._heard_at, self._asked_at)
                if self._asked_on != self._reconnects() or silent > limits.expires_s + 2.0:
                    self._outstanding = 0  # lost with the connection, or never answered
                    with translated():
                        await self._ask()  # a 503 answers if the consumer is gone
            except BusError as error:
                log.warning("tail.retry subject=%s error=%s", self._subject, error)
                await asyncio.sleep(limits.retry_s)
