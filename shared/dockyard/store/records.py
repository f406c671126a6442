"""How an event is laid out in a stored row: payload in `data`, its Metadata in `metadata`.

Metadata (tracing, causation) is kept out of the payload so the fold never parses it and SQL
can query it; `join` puts it back, so a load gives back an Event equal to the one appended.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec.structs import replace

from dockyard.core.codec import decode, encode
from dockyard.core.events import NO_METADATA, Event, Metadata, type_name
from dockyard.core.state import Job

EMPTY = b"{}"

_encoder = msgspec.json.Encoder()
_meta_decoder = msgspec.json.Decoder(Metadata)


def split(event: Event) -> tuple[bytes, bytes]:
    """(data, metadata) as JSON bytes."""
    if event.meta == NO_METADATA:
        return encode(event), EMPTY
    return encode(replace(event, meta=NO_METADATA)), _encoder.encode(event.meta)


def join(data: bytes, metadata: bytes) -> Event:
    """The Event of a stored row, upcast to the current schema by the core's codec."""
    event = decode(data)
    if metadata == EMPTY:
        return event
    return replace(event, meta=_meta_decoder.decode(metadata))


class Batch:
    """A batch of events as column arrays, checked to belong to `job_id`."""

    __slots__ = ("data", "event_ids", "metadata", "schema_versions", "types")

    def __init__(self, job_id: str, events: Sequence[Event]) -> None:
        self.event_ids: list[str] = []
        self.types: list[str] = []
        self.schema_versions: list[int] = []
        self.data: list[bytes] = []
        self.metadata: list[bytes] = []
        for event in events:
            check_job(job_id, event)
            data, metadata = split(event)
            self.event_ids.append(event.event_id)
            self.types.append(type_name(type(event)))
            self.schema_versions.append(event.v)
            self.data.append(data)
            self.metadata.append(metadata)
        if len(set(self.event_ids)) != len(self.event_ids):
            raise ValueError("an event id appears twice in one batch")

    def columns(self) -> list[list[Any]]:
        return [self.event_ids, self.types, self.schema_versions, self.data, self.metadata]


def check_job(job_id: str, event: Event) -> None:
    """ValueError unless `event` is one of job `job_id`'s."""
    if event.job_id != job_id and canonical_id(event.job_id) != canonical_id(job_id):
        raise ValueError(f"event {event.event_id} is job {event.job_id}'s, not {job_id}'s")


def check_view(job_id: str, version: int, view: Job) -> None:
    """ValueError unless `view` is the job as an append leaving it at `version` makes it."""
    same_job = view.id == job_id or canonical_id(view.id) == canonical_id(job_id)
    if not same_job or view.version != version:
        raise ValueError(
            f"the view is job {view.id} at version {view.version}, "
            f"but the append leaves job {job_id} at version {version}"
        )


def canonical_id(value: str) -> str:
    """The lower-case hyphenated form PostgreSQL's uuid type gives back; ValueError if none."""
    return str(uuid.UUID(value))
