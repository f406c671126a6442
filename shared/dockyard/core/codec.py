"""Encoding and decoding events, with upcasting of old schema versions on read.

One module-level Decoder serves the fast path; a payload of an older version (or one that no
longer decodes) goes through the registered upcasters, oldest first, and is then converted,
without the constraints if it breaks one tightened since it was stored (core.unchecked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from dockyard.core.events import EVENT_TYPES, Event, type_name
from dockyard.core.unchecked import convert_unchecked

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)
_raw_decoder = msgspec.json.Decoder(dict[str, Any])

CURRENT_VERSION: dict[str, int] = {
    type_name(cls): next(f.default for f in msgspec.structs.fields(cls) if f.name == "v")
    for cls in EVENT_TYPES
}

# (type, from_version) -> function turning a payload of that version into the next version.
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Declare how a stored payload of `from_version` becomes `from_version + 1`."""

    def register(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        CURRENT_VERSION[event_type] = max(CURRENT_VERSION.get(event_type, 1), from_version + 1)
        return fn

    return register


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def encode_many(events: list[Event]) -> bytes:
    return _encoder.encode(events)


def decode(data: bytes | str) -> Event:
    """Decode one event, upcasting it if it was written by an older schema."""
    try:
        event: Event = _decoder.decode(data)
    except msgspec.ValidationError:
        return _decode_slow(_raw_decoder.decode(data))
    if event.v != CURRENT_VERSION[type_name(type(event))]:
        return _decode_slow(_raw_decoder.decode(data))
    return event


def upcast(payload: Payload) -> Payload:
    event_type = payload["type"]
    version = int(payload.get("v", 1))
    target = CURRENT_VERSION.get(event_type, version)
    while version < target:
        payload = _UPCASTERS[(event_type, version)](payload)
        version += 1
        payload["v"] = version
    return payload


def _decode_slow(payload: Payload) -> Event:
    upcasted = upcast(payload)
    try:
        event: Event = msgspec.convert(upcasted, Event)
    except msgspec.ValidationError:
        # Stored before a constraint was tightened (see core.unchecked): read all the same;
        # what may no longer be sent on is set aside (core.deliverable).
        event = convert_unchecked(upcasted, Event)
    return event
