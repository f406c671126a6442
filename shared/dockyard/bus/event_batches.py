"""The outbox relay's sink: many events sent together reach EVENTS as one atomic batch.

With `sync_interval: always` every stored write waits for an fsync, and one publish per event
capped the relay at 4,000-5,000 events/s here (bench_bus). JetStream's atomic batch publish
stores a batch with one commit and answers with one ack: batches of 64 reach ~15,000 msgs/s
and of 256 ~35,000 on the same disk. Every message still carries its event id as Nats-Msg-Id.

What the relay submits within one turn of the event loop (a page, or as much of it as its
window lets through) goes out together: as one batch when it makes at least MIN_BATCH
messages (below that a batch costs the server more than one publish each), else one publish
per event. A JobQueued's work offer (names.OFFERS_STREAM) goes in the same batch, right after
its event: both are stored or neither, with one fsync, where an offer published alone cost a
write and an fsync of its own.
Under load batches are paced: after one goes, what follows is gathered for BATCH_SPACING_S
(unless MAX_BATCH messages are waiting) and goes as the next. Each batch costs the server
~2 ms of CPU whatever its size: it stages the batch in a file store of its own, made and
deleted per batch. Natural batches under the control-plane benchmark held ~120 events and
that staging was a third of the server's CPU; the feed, and so dispatch, lags by at most the
spacing (and behind earlier batches of the same jobs, whose acks it waits for).
Each job's events stay in order: an event is sent only once its job's previous event (`after`,
if sent earlier) is stored, and never if that failed (the relay republishes both from its
checkpoint); a batch goes once all such earlier events of its own are stored, and within it,
order is the batch's. A server before 2.12 acks a batch's commit as a plain message: the
publisher notices (the ack names no batch), sends those events again one by one and batches
no more. A batch the server refuses because it holds a message id it has stored already (the
relay republishing after a crash) is sent again one event at a time, which JetStream
deduplicates one by one. An event sent on its own goes as EventPublisher sends it, with its
offer at once beside it. A failed publish holding offers has EVENTS checked for their
subjects, which a service of an earlier version may have taken out (restore_offer_subjects).
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
from nats.js.errors import APIError

from dockyard.bus import names
from dockyard.bus.errors import BusError, BusUnavailable, translate, translated
from dockyard.bus.messages import (
    encode_work_offer,
    event_headers,
    work_offer_for,
    work_offer_headers,
)
from dockyard.bus.publish import ACK_TIMEOUT_S, EventPublisher, Published
from dockyard.bus.topology import restore_offer_subjects
from dockyard.core import codec
from dockyard.core.events import Event, JobQueued, type_name

log = logging.getLogger("dockyard.bus.event_batches")

# The server's ceiling on messages in one atomic batch (jetstream.limits.batch.max_msgs); a
# JobQueued counts twice, with its offer.
MAX_BATCH: Final = 1000
# Fewer messages than this go one publish each: an atomic batch costs the server ~2 ms of CPU
# however small it is, one publish ~0.1 ms (measured here with `sync_interval: always`), so
# a batch pays off from about 20 messages.
MIN_BATCH: Final = 32
# Under load, one batch at most this often (see the module's text): ~7,000 events/s makes
# batches of ~350, a sixth of the per-batch cost they had unpaced.
BATCH_SPACING_S: Final = 0.05
# A spacing timer may fire this much early by the loop's clock (uvloop counts whole
# milliseconds): it is due then, not to be armed again for a few microseconds, again and again.
CLOCK_SLACK_S: Final = 0.001
# A publish holding offers that fails has EVENTS' subjects checked, at most this often.
OFFER_CHECK_S: Final = 5.0
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

    @property
    def size(self) -> int:
        """Messages in a batch: the event, and a JobQueued's work offer."""
        return 2 if isinstance(self.event, JobQueued) else 1


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
        self._js = js
        self._single = EventPublisher(js, ack_timeout_s=ack_timeout_s)
        self._offers_checked_at = -math.inf
        self._offer_check: asyncio.Future[None] | None = None
        self._ack_timeout_s = ack_timeout_s
        self._min_batch: float = min_batch
        self._max_batch = max_batch
        self._batch_spacing_s = batch_spacing_s
        self._next_batch_at = -math.inf  # loop time before which a batch gathers on
        self._send_scheduled = False
        self._gathering: list[_Item] = []
        self._gathered = 0  # messages the gathered items make
        self._sending: set[asyncio.Task[None]] = set()

    async def submit(
        self, event: Event, after: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Published]:
        """Queue `event` to go out at the end of this turn (under load, with the next batch);
        the future resolves once it is stored (a JobQueued with its work offer, in the same
        batch) or raises BusUnavailable / BusRejected. Sent only once `after` (its job's
        previous event) is stored, and never if that failed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Published] = loop.create_future()
        if not self._send_scheduled:
            self._send_scheduled = True
            loop.call_soon(self._send_gathered)
        item = _Item(event, done, after)
        self._gathering.append(item)
        self._gathered += item.size
        if self._gathered >= self._max_batch:
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
        if self._gathered < self._min_batch:  # few, or no atomic batches on this server
            items, self._gathering, self._gathered = self._gathering, [], 0
            for item in items:
                self._start(self._send_one(item))
            return
        items = self._take_batch()
        self._start(self._send_batch(items))
        self._next_batch_at = loop.time() + self._batch_spacing_s
        if self._gathering and not self._send_scheduled:
            self._send_scheduled = True
            loop.call_soon(self._send_gathered)

    def _take_batch(self) -> list[_Item]:
        """The gathered items, from the first, whose messages fit in one batch."""
        size = taken = 0
        for item in self._gathering:
            if size + item.size > self._max_batch:
                break
            size += item.size
            taken += 1
        taken = max(taken, 1)  # a JobQueued alone when max_batch is 1
        items = self._gathering[:taken]
        del self._gathering[:taken]
        self._gathered -= sum(item.size for item in items)
        return items

    def _start(self, sending: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(sending)
        self._sending.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._sending.discard)

    async def _send_one(self, item: _Item) -> None:
        """As EventPublisher sends it: a JobQueued's offer at once (dispatch waits on it, and
        a claim is checked against the store), the event once `after` is stored."""
        offer = None
        if isinstance(item.event, JobQueued) and not item.done.cancelled():
            try:
                offer = await self._single.submit_offer(item.event)
            except Exception as exc:
                _fail(item, translate(exc))
                return
        if item.after is not None:
            await asyncio.wait([item.after])
        if _may_go(item):
            publishing = self._single.publish_event(item.event, offer)
            await _settling([item], self._offering(publishing) if offer is not None else publishing)
        elif offer is not None:
            offer.cancel()  # its ack is nobody's concern now

    async def _send_batch(self, items: list[_Item]) -> None:
        own = {id(item.done) for item in items}
        before = [i.after for i in items if i.after is not None and id(i.after) not in own]
        if before:
            await asyncio.wait(before)  # stored or failed: what follows them waits no longer
        items = [item for item in items if _may_go(item)]
        if items:
            publishing = self._publish(items)
            offered = any(isinstance(item.event, JobQueued) for item in items)
            await _settling(items, self._offering(publishing) if offered else publishing)

    async def _offering(self, publishing: Awaitable[_Stored]) -> _Stored:
        """`publishing`, which sends offers: if it fails, see that EVENTS still takes them."""
        try:
            return await publishing
        except Exception:
            await self._check_offer_subjects()
            raise

    async def _check_offer_subjects(self) -> None:
        """At most every OFFER_CHECK_S (failures that come meanwhile wait for the check in
        progress): a service of an earlier version may have set EVENTS up without the offers'
        subjects (topology.restore_offer_subjects)."""
        now = asyncio.get_running_loop().time()
        checking = self._offer_check
        due = now >= self._offers_checked_at + OFFER_CHECK_S
        if checking is None or checking.cancelled() or (checking.done() and due):
            self._offers_checked_at = now
            checking = self._offer_check = asyncio.ensure_future(self._restore_offer_subjects())
        await asyncio.wait([checking])  # neither raises its outcome nor cancels it for others

    async def _restore_offer_subjects(self) -> None:
        try:
            await restore_offer_subjects(self._js)
        except BusError as exc:
            log.warning("event_batches.offer_subjects_unchecked error=%s", exc)
        except Exception:
            log.exception("event_batches.offer_subjects_unchecked")

    async def _publish(self, items: list[_Item]) -> list[Published]:
        """Store the items' events (and offers) in order, as one batch (or one by one, see
        above)."""
        events = [item.event for item in items]
        messages = [m for event in events for m in _messages(event)]
        try:
            last = await self._atomic(messages)
        except NoAtomicBatches as exc:
            # Send them again one by one (any a server before 2.12 stored unacked is dropped
            # by its id), and batch no more.
            log.warning("event_batches.unsupported reason=%s: publishing one by one", exc)
            self._min_batch = math.inf
            return [await self._single.publish(event) for event in events]
        except BusError as exc:
            if getattr(exc, "err_code", None) != BATCH_HAS_DUPLICATE:
                raise
            return [await self._single.publish(event) for event in events]
        return _stored(items, first_seq=last - len(messages) + 1)

    async def _atomic(self, messages: list[_Message]) -> int:
        batch_id = uuid.uuid4().hex
        *rest, (subject, payload, headers) = messages
        with translated():
            for n, (each, data, their) in enumerate(rest, start=1):
                their.update({names.BATCH_ID: batch_id, names.BATCH_SEQUENCE: str(n)})
                await self._nc.publish(each, data, headers=their)
            headers[names.BATCH_ID] = batch_id
            headers[names.BATCH_SEQUENCE] = str(len(messages))
            headers[names.BATCH_COMMIT] = "1"
            reply = await self._nc.request(
                subject, payload, timeout=self._ack_timeout_s, headers=headers
            )
        return committed_seq(reply.data, batch_id, len(messages))


_Stored = Published | list[Published]


async def _settling(items: list[_Item], publishing: Awaitable[_Stored]) -> None:
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
        if not item.done.done():
            item.done.set_result(one)


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


_Message = tuple[str, bytes, dict[str, str]]  # subject, payload, headers


def _messages(event: Event) -> list[_Message]:
    """The event's message, then (for a JobQueued) its work offer's."""
    subject = names.event_subject(event.job_id, type_name(type(event)))
    message = (subject, codec.encode(event), event_headers(event))
    if not isinstance(event, JobQueued):
        return [message]
    offer = work_offer_for(event)
    offered = (
        names.offer_subject(offer.queue),
        encode_work_offer(offer),
        work_offer_headers(offer, event),
    )
    return [message, offered]


def _stored(items: list[_Item], first_seq: int) -> list[Published]:
    """Each item's Published, its messages stored in order from `first_seq`."""
    published = []
    seq = first_seq
    for item in items:
        offered = False if item.size == 2 else None
        published.append(Published(seq=seq, duplicate=False, offer_duplicate=offered))
        seq += item.size
    return published


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
    if not item.done.done():
        item.done.set_exception(error)
