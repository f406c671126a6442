"""Events set aside by the outbox relay: never published, kept with why, for the operator.

A message NATS refuses for itself (an invalid subject, a payload over max_payload) would be
retried for ever and stop every later event behind it, so the relay records it here and goes
on. The record is written before the relay's checkpoint moves past the event, and writing it
again is a no-op: a relay that crashes in between sets the same event aside once more.
"""

from __future__ import annotations

from typing import Final, Protocol

from dockyard.core.events import type_name
from dockyard.store.pool import Pool, translated
from dockyard.store.ports import Position, RecordedEvent

_RECORD: Final = """
INSERT INTO outbox_set_aside (event_id, job_id, type, position, tx_id, error)
VALUES ($1::uuid, $2::uuid, $3, $4, $5::xid8, $6)
ON CONFLICT (event_id) DO NOTHING
"""

# What lies ahead of a position in the catch-up order: the relay skips these when it reads.
_AHEAD: Final = """
SELECT event_id::text FROM outbox_set_aside
WHERE (tx_id, position) > ($1::xid8, $2::bigint)
"""


class SetAsideLog(Protocol):
    """Where the relay records what it set aside (PostgreSQL, or memory in unit tests)."""

    async def record(self, recorded: RecordedEvent, error: str) -> bool:
        """Record `recorded` as set aside because of `error`; False if it already was."""
        ...

    async def ahead_of(self, position: Position) -> set[str]:
        """The ids of the events set aside after `position`."""
        ...


class PgSetAsideLog:
    """SetAsideLog in the `outbox_set_aside` table."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def record(self, recorded: RecordedEvent, error: str) -> bool:
        event = recorded.event
        async with translated("set_aside"):
            status = await self._pool.execute(
                _RECORD,
                event.event_id,
                event.job_id,
                type_name(type(event)),
                recorded.position,
                recorded.tx_id,
                error,
            )
        return bool(status == "INSERT 0 1")

    async def ahead_of(self, position: Position) -> set[str]:
        async with translated("set_aside_ahead"):
            rows = await self._pool.fetch(_AHEAD, position.tx_id, position.position)
        return {row["event_id"] for row in rows}


class MemorySetAsideLog:
    """SetAsideLog in memory, for unit tests and tools."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[RecordedEvent, str]] = {}

    async def record(self, recorded: RecordedEvent, error: str) -> bool:
        if recorded.event.event_id in self.records:
            return False
        self.records[recorded.event.event_id] = (recorded, error)
        return True

    async def ahead_of(self, position: Position) -> set[str]:
        return {id_ for id_, (r, _) in self.records.items() if r.at > position}
