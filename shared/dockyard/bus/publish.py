"""Publishing to JetStream: events (with the work offer a JobQueued makes) and plain messages.

Every message carries a Nats-Msg-Id, so a publish that is retried after a timeout, or an event
republished after an outbox relay crash, is stored once within the stream's duplicate window.
A publish is done only when JetStream acks it: the ack means it is stored (and fsynced, see
topology.py), which is what lets the outbox relay advance its checkpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

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
    """Publishes events to the EVENTS stream, and each JobQueued's work offer to WORK."""

    def __init__(self, js: JetStreamContext, *, ack_timeout_s: float = ACK_TIMEOUT_S) -> None:
        self._js = js
        self._ack_timeout_s = ack_timeout_s

    async def publish(self, event: Event) -> Published:
        """Publish and wait for the acks. Raises BusUnavailable (retry) or BusRejected."""
        return await (await self.submit(event))

    async def submit(self, event: Event) -> asyncio.Future[Published]:
        """Send now; return an awaitable of the acks, so a caller can keep many in flight.

        The awaitable raises BusUnavailable if an ack does not come within the ack timeout.
        """
        subject = names.event_subject(event.job_id, type_name(type(event)))
        acks: list[asyncio.Future[PubAck]] = []
        try:
            with translated():
                acks.append(
                    await self._js.publish_async(
                        subject,
                        codec.encode(event),
                        headers=event_headers(event),
                        stream=names.EVENTS_STREAM,
                    )
                )
                if isinstance(event, JobQueued):
                    offer = work_offer_for(event)
                    acks.append(
                        await self._js.publish_async(
                            names.work_subject(event.queue),
                            encode_work_offer(offer),
                            headers=work_offer_headers(offer, event),
                            stream=names.WORK_STREAM,
                        )
                    )
        except BaseException:
            _cancel(acks)  # a pending ack future holds one of the client's in-flight slots
            raise
        return asyncio.ensure_future(_wait_acks(acks, self._ack_timeout_s))


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


def _cancel(acks: list[asyncio.Future[PubAck]]) -> None:
    for ack in acks:
        if not ack.done():
            ack.cancel()
