"""The EventStore on PostgreSQL (asyncpg): one statement per append, a gap-free catch-up read.

append is a single autocommit statement (see `append.py`): the expected-version check, the
insert of the batch and the upsert of the job's read-model row happen together or not at
all. The unique key (job_id, version) settles a race between two writers of one job: the
loser's insert fails, and only then does a second query find out what happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from dockyard.core.events import Event
from dockyard.core.state import Job
from dockyard.store import append_many
from dockyard.store.append import DIAGNOSE, Append
from dockyard.store.notify import Listener
from dockyard.store.pool import Pool, translated
from dockyard.store.ports import (
    START,
    BatchConflict,
    ConcurrencyError,
    DuplicateIdempotencyKey,
    PendingAppend,
    Position,
    RecordedEvent,
)
from dockyard.store.records import canonical_id, join

_COLUMNS = "version, position, tx_id, recorded_at, data, metadata"

_LOAD = f"SELECT {_COLUMNS} FROM events WHERE job_id = $1 ORDER BY version"

# The catch-up order is (tx_id, position), read only below the snapshot's xmin (the oldest
# transaction still running anywhere in the cluster). Why not position alone: positions are
# drawn at insert time and commits come later in any order, so after a reader has passed
# position p, a slower transaction may still commit p - 1, which `position > checkpoint`
# then skips for ever. The xmin horizon makes everything below it final, but it is a bound
# on xids, not on positions: a transaction with a smaller xid can insert a larger position
# (it took its xid first and inserted later). Ordered by tx_id first, every row still to
# come has tx_id >= xmin > every tx_id returned, so nothing is skipped and nothing repeated.
# The price: a long transaction (in any database of the cluster) holds the reader back.
#
# `held` says, in the same snapshot, whether committed events wait beyond the horizon (behind
# an older transaction of any table - a log write, a checkpoint - which may still insert
# events that sort before them). With no row to return, the one row holds only `held`.
# It is the first such row in index order, looked up from one start key: the later of the
# checkpoint and (xmin, -1), since past the horizon every row is past the checkpoint too.
# Two forms that read the same cost far more: an EXISTS (PostgreSQL drops its ORDER BY and
# LIMIT, and before the table was analysed it chose a sequential scan of the whole table),
# and the checkpoint as start key with xmin as a filter (a relay catching up walked the index
# from its checkpoint to the end on every read: quadratic in the backlog).
_READ_ALL = f"""
SELECT h.held, e.* FROM (
    SELECT (
        SELECT true FROM events
        WHERE (tx_id, position) > (
            GREATEST($1::xid8, s.xmin),
            CASE WHEN s.xmin > $1::xid8 THEN -1 ELSE $2::bigint END
        )
        ORDER BY tx_id, position
        LIMIT 1
    ) IS NOT NULL AS held
    FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) s
) h
LEFT JOIN LATERAL (
    SELECT {_COLUMNS} FROM events
    WHERE (tx_id, position) > ($1::xid8, $2::bigint)
      AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY tx_id, position
    LIMIT $3
) e ON true
ORDER BY e.tx_id, e.position
"""

# How long read_all waits for such a transaction to end before returning what it has: its
# commit sends no notification, so without the wait those events would wait for a poll.
HELD_BACK_WAIT_S = 0.05
HELD_BACK_POLL_S = 0.002

_LOAD_CHECKPOINT = "SELECT tx_id, position FROM checkpoints WHERE name = $1"
_SAVE_CHECKPOINT = """
INSERT INTO checkpoints (name, tx_id, position) VALUES ($1, $2::xid8, $3)
ON CONFLICT (name) DO UPDATE SET tx_id = excluded.tx_id, position = excluded.position
-- A deposed leader's late save must not move the checkpoint back (that would only cost
-- republished duplicates, but they are avoidable).
WHERE (checkpoints.tx_id, checkpoints.position) < (excluded.tx_id, excluded.position)
"""


class PgEventStore:
    """EventStore on an asyncpg pool made by `create_pool` (JSON as raw bytes).

    wait_for_events holds one of the pool's connections (for LISTEN) from its first call
    until close().
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._listener = Listener(pool, "dockyard_events")

    async def append(
        self,
        job_id: str,
        expected_version: int,
        events: Sequence[Event],
        view: Job | None = None,
    ) -> int:
        if not events:
            return expected_version
        append = Append(job_id, expected_version, events, view)
        async with translated("append"):
            try:
                status = await self._pool.execute(append.sql, *append.args)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "jobs_idempotency" and view is not None:
                    key = view.spec.idempotency_key or ""
                    raise DuplicateIdempotencyKey(view.tenant, key) from None
                # Another writer got in between our check and our insert: diagnose below.
            else:
                if append.done(status):
                    return expected_version + len(events)
            row = await self._pool.fetchrow(DIAGNOSE, job_id, append.event_ids)
        assert row is not None
        current: int = row["current"]
        if row["stored"] == len(events):
            return current  # every event is in already: a retry of an append that went in
        raise ConcurrencyError(job_id, expected_version, current)

    async def load(self, job_id: str) -> list[RecordedEvent]:
        async with translated("load"):
            rows = await self._pool.fetch(_LOAD, job_id)
        return [_recorded(r) for r in rows]

    async def load_many(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        given = {canonical_id(job_id): job_id for job_id in job_ids}
        async with translated("load_many"):
            rows = await self._pool.fetch(append_many.LOAD, list(given))
        histories: dict[str, list[RecordedEvent]] = {job_id: [] for job_id in job_ids}
        for row in rows:
            histories[given[str(row["job_id"])]].append(_recorded(row))
        return histories

    async def append_many(self, appends: Sequence[PendingAppend]) -> None:
        appends = [a for a in appends if a.events]
        if not appends:
            return
        args = append_many.arguments(appends)
        async with translated("append_many"):
            try:
                await self._pool.execute(append_many.SQL, *args)
            except asyncpg.UniqueViolationError as exc:
                raise BatchConflict(str(exc)) from None

    async def read_all(self, after: Position, limit: int = 1000) -> list[RecordedEvent]:
        """Up to `limit` events after `after` in catch-up order, every one of them final.

        A short page with committed events held back behind an older transaction waits up to
        HELD_BACK_WAIT_S for it to end: its commit notifies nobody, so a reader that went
        back to sleep until the next notification would leave them for its poll.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HELD_BACK_WAIT_S
        self._listener.clear()  # what was notified so far, this read sees
        async with translated("read_all"):
            while True:
                rows = await self._pool.fetch(_READ_ALL, after.tx_id, after.position, limit)
                found = [r for r in rows if r["position"] is not None]
                held = bool(rows and rows[0]["held"])
                if len(found) == limit or not held or loop.time() >= deadline:
                    break
                await asyncio.sleep(HELD_BACK_POLL_S)
        if held and found:
            # Still held back, and no notification will say when they are free: read again
            # at once (as long as reads make progress; an empty one waits for the poll).
            self._listener.poke()
        return [_recorded(r) for r in found]

    async def load_checkpoint(self, name: str) -> Position:
        async with translated("load_checkpoint"):
            row = await self._pool.fetchrow(_LOAD_CHECKPOINT, name)
        return START if row is None else Position(int(row["tx_id"]), int(row["position"]))

    async def save_checkpoint(self, name: str, position: Position) -> None:
        async with translated("save_checkpoint"):
            await self._pool.execute(_SAVE_CHECKPOINT, name, position.tx_id, position.position)

    async def wait_for_events(self, timeout: float) -> bool:  # noqa: ASYNC109
        return await self._listener.wait(timeout)

    def events_pending(self) -> bool:
        return self._listener.pending

    async def close(self) -> None:
        """Give back the listening connection, if wait_for_events took one; the pool stays."""
        await self._listener.close()


def _recorded(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        event=join(row["data"], row["metadata"]),
        version=row["version"],
        position=row["position"],
        tx_id=int(row["tx_id"]),
        recorded_at=row["recorded_at"],
    )
