"""The outbox relay's sink: the events it sends together reach EVENTS as one atomic batch.

With `sync_interval: always` every stored write waits for an fsync, and one publish per event
capped the relay at 4,000-5,000 events/s here (bench_bus). JetStream's atomic batch publish
stores a batch with one commit and answers with one ack: batches of 64 reach ~15,000 msgs/s
and of 256 ~35,000 on the same disk. Every message still carries its event id as Nats-Msg-Id.

What the relay submits within one turn of the event loop (a page, or as much of it as its
window lets through) goes out as one batch, once the batch before it is answered: so batches
are stored in submission order and each job's events in order. An event whose job's previous
event failed is never sent (the relay republishes both from its checkpoint). A lone event goes
as a plain publish. A batch the server refuses because it holds an event id it has stored
already (the relay republishing after a crash) is sent again one message at a time, which
JetStream deduplicates one by one. Work offers are published at once, as EventPublisher does.
"""

from __future__ import annotations

import asyncio
import uuid
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

# The server's ceiling on messages in one atomic batch (jetstream.limits.batch.max_msgs).
MAX_BATCH: Final = 1000
# "atomic publish batch contains duplicate message id": part of it is stored already.
BATCH_HAS_DUPLICATE: Final = 10201


class _BatchAck(msgspec.Struct):
    seq: int = 0
    error: dict[str, Any] | None = None


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
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._nc = nc
        self._single = EventPublisher(js, ack_timeout_s=ack_timeout_s)
        self._ack_timeout_s = ack_timeout_s
        self._max_batch = max_batch
        self._gathering: list[_Item] = []
        self._last: asyncio.Task[None] | None = None  # the batch sent last

    async def submit(
        self, event: Event, after: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Published]:
        """Queue `event` for the next batch; the future resolves once it is stored (with its
        work offer, if any) or raises BusUnavailable / BusRejected. Never sent if `after`
        (its job's previous event) failed."""
        offer = await self._single.submit_offer(event) if isinstance(event, JobQueued) else None
        done: asyncio.Future[Published] = asyncio.get_running_loop().create_future()
        if not self._gathering:
            asyncio.get_running_loop().call_soon(self._send_gathered)
        self._gathering.append(_Item(event, done, after, offer))
        if len(self._gathering) >= self._max_batch:
            self._send_gathered()
        return done

    def _send_gathered(self) -> None:
        items, self._gathering = self._gathering, []
        if items:
            self._last = asyncio.create_task(self._send(items, self._last))

    async def _send(self, items: list[_Item], previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # stored or failed: either way, its turn is over
        items = [item for item in items if _may_go(item)]
        try:
            seqs = await self._publish([item.event for item in items])
        except BaseException as exc:
            error = translate(exc) if isinstance(exc, Exception) else exc
            for item in items:
                _fail(item, error)
            if not isinstance(exc, Exception):
                raise
            return
        for item, seq in zip(items, seqs, strict=True):
            _settle(item, seq, self._ack_timeout_s)

    async def _publish(self, events: list[Event]) -> list[int]:
        """Store `events` in order; their stream sequences."""
        if len(events) == 1:
            return [(await self._single.publish_event(events[0])).seq]
        try:
            last = await self._atomic(events)
        except BusError as exc:
            if getattr(exc, "err_code", None) != BATCH_HAS_DUPLICATE:
                raise
            return [(await self._single.publish_event(event)).seq for event in events]
        return list(range(last - len(events) + 1, last + 1))

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
        ack = msgspec.json.decode(reply.data, type=_BatchAck)
        if ack.error is not None:
            with translated():
                APIError.from_error(ack.error)
        return ack.seq


def _message(event: Event, batch_id: str, n: int) -> tuple[str, bytes, dict[str, str]]:
    headers = event_headers(event)
    headers[names.BATCH_ID] = batch_id
    headers[names.BATCH_SEQUENCE] = str(n)
    return names.event_subject(event.job_id, type_name(type(event))), codec.encode(event), headers


def _may_go(item: _Item) -> bool:
    """False (and the item failed) if its job's previous event was not stored."""
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
        return
    if task.cancelled():
        done.cancel()
    elif (exc := task.exception()) is not None:
        done.set_exception(exc)
    else:
        done.set_result(task.result())
