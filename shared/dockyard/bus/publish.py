"""Publishing to JetStream: events (with the work offer a JobQueued makes) and plain messages.

Every message carries a Nats-Msg-Id, so a publish that is retried after a timeout, or an event
republished after an outbox relay crash, is stored once within the stream's duplicate window.
A publish is done only when JetStream acks it: the ack means it is stored (and fsynced, see
topology.py), which is what lets the outbox relay advance its checkpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final

from msgspec import Struct
from nats.js import JetStreamContext
from nats.js.api import PubAck

from dockyard.bus import names
from dockyard.bus.errors import BusUnavailable, translate, translated
from dockyard.bus.messages import (
    encode_work_offer,
    event_headers,
    work_offer_for,
    work_offer_headers,
)
from dockyard.core import codec
from dockyard.core.events import Event, JobQueued, type_name

# Long enough for an fsync on a slow disk under load, short enough that a publish lost in a
# NATS restart is retried promptly (the retry is deduplicated).
ACK_TIMEOUT_S: Final = 5.0


class Published(Struct, frozen=True):
    """What JetStream acked: the event's stream sequence, and whether it was a duplicate."""

    seq: int
    duplicate: bool
    offer_duplicate: bool | None = None  # None when the event made no work offer


class EventPublisher:
    """Publishes events to the EVENTS stream, and each JobQueued's work offer beside it."""

    def __init__(self, js: JetStreamContext, *, ack_timeout_s: float = ACK_TIMEOUT_S) -> None:
        self._js = js
        self._ack_timeout_s = ack_timeout_s

    async def publish(self, event: Event) -> Published:
        """Publish and wait for the acks. Raises BusUnavailable (retry) or BusRejected."""
        return await (await self.submit(event))

    async def submit(
        self, event: Event, after: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Published]:
        """Send now; return an awaitable of the acks, so a caller can keep many in flight.

        With `after` (the job's previous event, still in flight), the event is sent once that
        one is stored, and never if it failed; a JobQueued's work offer goes at once all the
        same, since dispatch waits on it and its order among the job's events matters to
        nobody (a copy sent again is dropped as a duplicate). The awaitable raises
        BusUnavailable if an ack does not come within the ack timeout.
        """
        offer = await self.submit_offer(event) if isinstance(event, JobQueued) else None
        try:
            if after is None:
                return asyncio.ensure_future(self._acked(await self._submit_event(event), offer))
        except BaseException:
            _cancel([offer] if offer is not None else [])
            raise
        return asyncio.ensure_future(self._chained(after, event, offer))

    async def _chained(
        self, after: asyncio.Future[Any], event: Event, offer: asyncio.Future[PubAck] | None
    ) -> Published:
        try:
            await asyncio.shield(after)  # its failure is ours too: `event` is never sent
            ack = await self._submit_event(event)
        except BaseException:
            _cancel([offer] if offer is not None else [])
            raise
        return await self._acked(ack, offer)

    async def _acked(
        self, event_ack: asyncio.Future[PubAck], offer_ack: asyncio.Future[PubAck] | None
    ) -> Published:
        acks = [event_ack] if offer_ack is None else [event_ack, offer_ack]
        return await _wait_acks(acks, self._ack_timeout_s)

    async def publish_event(
        self, event: Event, offer: asyncio.Future[PubAck] | None = None
    ) -> Published:
        """Publish the event alone (its offer, if sent, is `offer`) and wait for the acks."""
        try:
            sent = await self._submit_event(event)
        except BaseException:
            _cancel([offer] if offer is not None else [])
            raise
        return await self._acked(sent, offer)

    async def _submit_event(self, event: Event) -> asyncio.Future[PubAck]:
        with translated():
            return await self._js.publish_async(
                names.event_subject(event.job_id, type_name(type(event))),
                codec.encode(event),
                headers=event_headers(event),
                stream=names.EVENTS_STREAM,
            )

    async def submit_offer(self, event: JobQueued) -> asyncio.Future[PubAck]:
        """Send a JobQueued's work offer now; the awaitable of its ack."""
        offer = work_offer_for(event)
        with translated():
            return await self._js.publish_async(
                names.offer_subject(event.queue),
                encode_work_offer(offer),
                headers=work_offer_headers(offer, event),
                stream=names.OFFERS_STREAM,
            )


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    stream: str,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = ACK_TIMEOUT_S,
) -> PubAck:
    """Publish one message with a dedup id to `stream` and wait for its ack.

    For reports and log batches; raises BusUnavailable (retry with the same msg_id) or
    BusRejected.
    """
    all_headers = {**(headers or {}), names.MSG_ID: msg_id}
    with translated():
        return await js.publish(
            subject, payload, timeout=timeout_s, stream=stream, headers=all_headers
        )


async def _wait_acks(acks: list[asyncio.Future[PubAck]], timeout_s: float) -> Published:
    try:
        async with asyncio.timeout(timeout_s):
            results = await asyncio.gather(*acks)
    except TimeoutError:
        raise BusUnavailable(f"no JetStream ack within {timeout_s}s") from None
    except Exception as exc:
        raise translate(exc) from exc
    finally:
        _cancel(acks)
    first = results[0]
    return Published(
        seq=first.seq,
        duplicate=bool(first.duplicate),
        offer_duplicate=bool(results[1].duplicate) if len(results) > 1 else None,
    )


def _cancel(acks: Sequence[asyncio.Future[PubAck]]) -> None:
    for ack in acks:
        if not ack.done():
            ack.cancel()
