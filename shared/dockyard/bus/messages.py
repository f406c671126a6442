"""What travels on the bus besides events, and how consumers read any message back.

Decoding is tolerant (unknown fields are ignored) because producers and consumers of different
versions run side by side during a rolling upgrade; a message that still cannot be read raises
MessageDecodeError, which a consumer terms as poison instead of redelivering it forever.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from msgspec import Struct

from dockyard.bus import names
from dockyard.bus.errors import MessageDecodeError
from dockyard.core import codec
from dockyard.core.events import Event, JobQueued, Metadata, type_name
from dockyard.telemetry import tracing


class WorkOffer(Struct, frozen=True, kw_only=True):
    """One queued attempt offered to the orchestrators of `queue`; claiming it is a separate step.

    `event_id` is the JobQueued event that made the offer, for tracing and for idempotence.
    """

    job_id: str
    attempt: int
    queue: str
    event_id: str
    # The job asks for an `egress` network (False in offers of earlier versions).
    egress: bool = False


_offer_encoder = msgspec.json.Encoder()
_offer_decoder = msgspec.json.Decoder(WorkOffer)


def work_offer_for(event: JobQueued) -> WorkOffer:
    return WorkOffer(
        job_id=event.job_id,
        attempt=event.attempt,
        queue=event.queue,
        event_id=event.event_id,
        egress=event.egress,
    )


def encode_work_offer(offer: WorkOffer) -> bytes:
    return _offer_encoder.encode(offer)


def decode_work_offer(data: bytes) -> WorkOffer:
    try:
        return _offer_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageDecodeError(f"not a work offer: {exc}") from exc


def decode_event(data: bytes) -> Event:
    """An event from a message on the EVENTS stream (upcast if an older schema wrote it)."""
    try:
        return codec.decode(data)
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise MessageDecodeError(f"not an event: {exc}") from exc


def event_headers(event: Event) -> dict[str, str]:
    """The headers of an event's message: dedup id, type and schema for routing, trace context."""
    headers = {
        names.MSG_ID: event.event_id,
        names.EVENT_TYPE: type_name(type(event)),
        names.SCHEMA_VERSION: str(event.v),
    }
    meta: Metadata = event.meta
    if meta.traceparent is not None:
        headers[names.TRACEPARENT] = meta.traceparent
    if meta.tracestate is not None:
        headers[names.TRACESTATE] = meta.tracestate
    return headers


def work_offer_headers(offer: WorkOffer, event: Event) -> dict[str, str]:
    """The offer's dedup id is per attempt, so a republished offer for the same attempt drops.

    Its trace context is the dispatch's: a span from the JobQueued's commit to this publish,
    in the job's trace (with tracing off, the event's own context is passed on unchanged).
    """
    headers = {names.MSG_ID: names.offer_msg_id(offer.job_id, offer.attempt)}
    meta = event.meta
    if meta.traceparent is not None and tracing.enabled():
        meta = tracing.record_span(
            tracing.SCHEDULER,
            "dockyard.dispatch",
            parent=meta,
            start=event.at,
            attributes={
                tracing.JOB: offer.job_id,
                tracing.ATTEMPT: offer.attempt,
                "dockyard.queue": offer.queue,
            },
        )
    if meta.traceparent is not None:
        headers[names.TRACEPARENT] = meta.traceparent
    if meta.tracestate is not None:
        headers[names.TRACESTATE] = meta.tracestate
    return headers


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """One header of a received message, or None (nats-py gives None when there are none)."""
    if headers is None:
        return None
    return headers.get(name)


def message_id(headers: Mapping[str, str] | None) -> str:
    """The Nats-Msg-Id of a received message: the event id, or the work offer's attempt id."""
    value = header(headers, names.MSG_ID)
    if value is None:
        raise MessageDecodeError(f"message without the {names.MSG_ID} header")
    return value
