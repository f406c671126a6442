"""The outbox relay's sink: many events sent together reach EVENTS as one atomic batch.

With `sync_interval: always` every stored write waits for an fsync, and one publish per event
capped the relay at 4,000-5,000 events/s here (bench_bus). JetStream's atomic batch publish
stores a batch with one commit and answers with one ack: batches of 64 reach ~15,000 msgs/s
and of 256 ~35,000 on the same disk. Every message still carries its event id as Nats-Msg-Id.

What the relay submits within one turn of the event loop (a page, or as much of it as its
window lets through) goes out together: as one batch when it is at least MIN_BATCH events
(below that a batch costs the server more than one publish each), else one publish per event.
Under load batches are paced: after one goes, what follows is gathered for BATCH_SPACING_S
(unless MAX_BATCH events are waiting) and goes as the next. Each batch costs the server ~2 ms
of CPU whatever its size: it stages the batch in a file store of its own, made and deleted per
batch. Natural batches under the control-plane benchmark held ~120 events and that staging was
a third of the server's CPU; the feed lags by at most the spacing, and no job waits for it
(work offers go at once).
Each job's events stay in order: an event is sent only once its job's previous event (`after`,
if sent earlier) is stored, and never if that failed (the relay republishes both from its
checkpoint); a batch goes once all such earlier events of its own are stored, and within it,
order is the batch's. A server before 2.12 acks a batch's commit as a plain message: the
publisher notices (the ack names no batch), sends those events again one by one and batches
no more. A batch the server refuses because it holds
an event id it has stored already (the relay republishing after a crash) is sent again one
message at a time, which JetStream deduplicates one by one. Work offers go at once, as
EventPublisher sends them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError

from dockyard.bus import names
from dockyard.bus.errors import BusError, BusUnavailable, translate, translated
from dockyard.bus.messages import event_headers
from dockyard.bus.publish import ACK_TIMEOUT_S, EventPublisher, Published
from dockyard.core import codec
from dockyard.core.events import Event, JobQueued, type_name

log = logging.getLogger("dockyard.bus.event_batches")

# The server's ceiling on messages in one atomic batch (jetstream.limits.batch.max_msgs).
MAX_BATCH: Final = 1000
# Fewer events than this go one publish each: an atomic batch costs the server ~2 ms of CPU
# however small it is, one publish ~0.1 ms (measured here with `sync_interval: always`), so
# a batch pays off from about 20 events.
MIN_BATCH: Final = 32
# Under load, one batch at most this often (see the module's text): ~7,000 events/s makes
# batches of ~350, a sixth of the per-batch cost they had unpaced.
BATCH_SPACING_S: Final = 0.05
# A spacing timer may fire this much early by the loop's clock (uvloop counts whole
# milliseconds): it is due then, not to be armed again for a few microseconds, again and again.
CLOCK_SLACK_S: Final = 0.001
# "atomic publish batch contains duplicate message id": part of it is stored already.
BATCH_HAS_DUPLICATE: Final = 10201
# "atomic publish is disabled": the stream was made without allow_atomic.
ATOMIC_DISABLED: Final = 10174


class _BatchAck(msgspec.Struct):
    seq: int = 0
    error: dict[str, Any] | None = None
    batch: str | None = None  # set, with count, only by a server that committed a batch
    count: int = 0


class NoAtomicBatches(Exception):
    """The server does not store atomic batches on this stream (see `committed_seq`)."""


@dataclass(frozen=True)
class _Item:
    event: Event
    done: asyncio.Future[Published]
    after: asyncio.Future[Any] | None
    offer: asyncio.Future[PubAck] | None


class EventBatchPublisher:
    """An outbox EventSink publishing to EVENTS in atomic batches (see the module's text)."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        *,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        min_batch: int = MIN_BATCH,
        max_batch: int = MAX_BATCH,
        batch_spacing_s: float = BATCH_SPACING_S,
    ) -> None:
        self._nc = nc
        self._single = EventPublisher(js, ack_timeout_s=ack_timeout_s)
        self._ack_timeout_s = ack_timeout_s
        self._min_batch: float = min_batch
        self._max_batch = max_batch
        self._batch_spacing_s = batch_spacing_s
        self._next_batch_at = -math.inf  # loop time before which a batch gathers on
        self._send_scheduled = False
        self._gathering: list[_Item] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def submit(
        self, event: Event, after: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Published]:
        """Queue `event` to go out at the end of this turn (under load, with the next batch);
        the future resolves once it is stored (with its work offer, if any) or raises
        BusUnavailable / BusRejected. Sent only once `after` (its job's previous event) is
        stored, and never if that failed."""
        offer = await self._single.submit_offer(event) if isinstance(event, JobQueued) else None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Published] = loop.create_future()
        if not self._send_scheduled:
            self._send_scheduled = True
            loop.call_soon(self._send_gathered)
        self._gathering.append(_Item(event, done, after, offer))
        if len(self._gathering) >= self._max_batch:
            self._send_now()
        return done

    def _send_gathered(self) -> None:
        """At the end of a turn, or once the spacing after the last batch is over."""
        self._send_scheduled = False
        if not self._gathering:
            return
        loop = asyncio.get_running_loop()
        wait = self._next_batch_at - loop.time()
        if wait > CLOCK_SLACK_S:  # a batch went just now: this joins the next one
            self._send_scheduled = True
            loop.call_later(wait, self._send_gathered)
        else:
            self._send_now()

    def _send_now(self) -> None:
        """What is gathered: a batch if there is enough for one (up to MAX_BATCH; the rest
        follows in the next turn), else one publish each."""
        loop = asyncio.get_running_loop()
        if len(self._gathering) < self._min_batch:  # few, or no atomic batches on this server
            items, self._gathering = self._gathering, []
            for item in items:
                self._start(self._send_one(item))
            return
        items = self._gathering[: self._max_batch]
        del self._gathering[: len(items)]
        self._start(self._send_batch(items))
        self._next_batch_at = loop.time() + self._batch_spacing_s
        if self._gathering and not self._send_scheduled:
            self._send_scheduled = True
            loop.call_soon(self._send_gathered)

    def _start(self, sending: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(sending)
        self._sending.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._sending.discard)

    async def _send_one(self, item: _Item) -> None:
        if item.after is not None:
            await asyncio.wait([item.after])
        if _may_go(item):
            await _settling([item], self._single.publish_event(item.event), self._ack_timeout_s)

    async def _send_batch(self, items: list[_Item]) -> None:
        own = {id(item.done) for item in items}
        before = [i.after for i in items if i.after is not None and id(i.after) not in own]
        if before:
            await asyncio.wait(before)  # stored or failed: what follows them waits no longer
        items = [item for item in items if _may_go(item)]
        if items:
            await _settling(items, self._publish(items), self._ack_timeout_s)

    async def _publish(self, items: list[_Item]) -> list[Published]:
        """Store the items' events in order, as one batch (or one by one, see above)."""
        events = [item.event for item in items]
        try:
            last = await self._atomic(events)
        except NoAtomicBatches as exc:
            # Send them again one by one (any a server before 2.12 stored unacked is dropped
            # by its id), and batch no more.
            log.warning("event_batches.unsupported reason=%s: publishing one by one", exc)
            self._min_batch = math.inf
            return [await self._single.publish_event(event) for event in events]
        except BusError as exc:
            if getattr(exc, "err_code", None) != BATCH_HAS_DUPLICATE:
                raise
            return [await self._single.publish_event(event) for event in events]
        return [
            Published(seq=seq, duplicate=False) for seq in range(last - len(events) + 1, last + 1)
        ]

    async def _atomic(self, events: list[Event]) -> int:
        batch_id = uuid.uuid4().hex
        *rest, final = events
        with translated():
            for n, event in enumerate(rest, start=1):
                subject, payload, headers = _message(event, batch_id, n)
                await self._nc.publish(subject, payload, headers=headers)
            subject, payload, headers = _message(final, batch_id, len(events))
            headers[names.BATCH_COMMIT] = "1"
            reply = await self._nc.request(
                subject, payload, timeout=self._ack_timeout_s, headers=headers
            )
        return committed_seq(reply.data, batch_id, len(events))


async def _settling(
    items: list[_Item], publishing: Awaitable[Published | list[Published]], timeout_s: float
) -> None:
    """Resolve each item's future with how its event was stored, or fail them all."""
    try:
        stored = await publishing
    except Exception as exc:
        error = translate(exc)
        for item in items:
            _fail(item, error)
        return
    except BaseException:
        for item in items:
            _fail(item, BusUnavailable("the publisher stopped"))
        raise
    published = stored if isinstance(stored, list) else [stored]
    for item, one in zip(items, published, strict=True):
        _settle(item, one.seq, timeout_s)


def committed_seq(reply: bytes, batch_id: str, count: int) -> int:
    """The stream sequence of a batch's last message, from the server's answer to its commit.

    Raises the server's refusal as BusRejected / BusUnavailable, and NoAtomicBatches when the
    server does not do atomic batches: it refused them on this stream, or (before 2.12) it
    acked the commit as a plain message, having stored the others unacked.
    """
    ack = msgspec.json.decode(reply, type=_BatchAck)
    if ack.error is not None:
        if ack.error.get("err_code") == ATOMIC_DISABLED:
            raise NoAtomicBatches(str(ack.error.get("description")))
        with translated():
            APIError.from_error(ack.error)
    if ack.batch != batch_id or ack.count != count:
        raise NoAtomicBatches("the commit was acked as a plain message")
    return ack.seq


def _message(event: Event, batch_id: str, n: int) -> tuple[str, bytes, dict[str, str]]:
    headers = event_headers(event)
    headers[names.BATCH_ID] = batch_id
    headers[names.BATCH_SEQUENCE] = str(n)
    return names.event_subject(event.job_id, type_name(type(event))), codec.encode(event), headers


def _may_go(item: _Item) -> bool:
    """False (and the item failed) if its job's previous event was not stored, or the relay
    gave it up (cancelled: it republishes from its checkpoint)."""
    if item.done.cancelled():
        return False
    after = item.after
    if after is None or not after.done():
        return True  # none, or in this same batch: stored together or not at all
    if after.cancelled() or after.exception() is not None:
        _fail(item, BusUnavailable("not sent: its job's previous event was not stored"))
        return False
    return True


def _fail(item: _Item, error: BaseException) -> None:
    if item.offer is not None and not item.offer.done():
        item.offer.cancel()
    if not item.done.done():
        item.done.set_exception(error)


def _settle(item: _Item, seq: int, timeout_s: float) -> None:
    if item.offer is None:
        if not item.done.done():
            item.done.set_result(Published(seq=seq, duplicate=False))
        return
    task = asyncio.ensure_future(EventPublisher.wait_offer(item.offer, seq, timeout_s))
    task.add_done_callback(lambda t: _chain(t, item.done))


def _chain(task: asyncio.Future[Published], done: asyncio.Future[Published]) -> None:
    if done.done():
        if not task.cancelled():
            task.exception()  # retrieved: nobody waits for an item the relay gave up
        return
    if task.cancelled():
        done.cancel()
    elif (exc := task.exception()) is not None:
        done.set_exception(exc)
    else:
        done.set_result(task.result())
