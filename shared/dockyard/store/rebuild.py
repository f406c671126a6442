"""Rebuild the jobs read model from the events: fold every job again, swap the table in.

Every job but those purged by retention (`purged_jobs`): a rebuild does not bring them back.

The new table is filled while the old one still answers reads; the swap is a rename inside a
transaction, so readers see either the old rows or the new ones, never a mix. Appends that
write a view wait while it runs, so no view is lost between the read and the swap; their
events and views go in right after it, on the new table.

Two connections make a pipeline on a two-core machine: while Python decodes and folds one
batch, PostgreSQL produces the next histories on one connection and ingests the previous
rows on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable
from typing import Any

import msgspec

from dockyard.core.codec import CURRENT_VERSION, decode
from dockyard.core.events import EVENT_TYPES, Event, EventBase, type_name
from dockyard.core.state import Job, fold
from dockyard.store.pool import Connection, Pool, translated
from dockyard.store.read_model import JOB_COLUMNS, JobRow, job_row

_NEW = "jobs_rebuild"

# One row per job, its payloads as one JSON array in version order: one msgspec call decodes
# a whole history, and the (job_id, version) index delivers the rows already sorted. Jobs the
# janitor's retention purged from the read model stay out of it (their events stay too),
# unless an event came after the purge (the append put the row back, so does the rebuild).
_HISTORIES = """
SELECT json_agg(data ORDER BY version) AS history, count(*) AS n
FROM events e
GROUP BY job_id
HAVING NOT EXISTS (
    SELECT FROM purged_jobs p WHERE p.id = e.job_id AND p.purged_at >= max(e.recorded_at)
)
ORDER BY job_id
"""

_INDEXES = """
SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1::regclass
"""

# Fold this many jobs between turns of the event loop, so both connections keep streaming.
_YIELD_EVERY = 64


class HistoryDecoder:
    """Decodes a JSON array of stored payloads; old schema versions go through the codec."""

    _fast = msgspec.json.Decoder(list[Event])
    _raw = msgspec.json.Decoder(list[msgspec.Raw])

    def __init__(self) -> None:
        # Taken when the rebuild starts, after every upcaster module has been imported.
        self._current: dict[type[EventBase], int] = {
            cls: CURRENT_VERSION[type_name(cls)] for cls in EVENT_TYPES
        }

    def __call__(self, data: bytes) -> list[Event]:
        current = self._current
        try:
            events = self._fast.decode(data)
        except msgspec.ValidationError:
            return self._slow(data)
        for event in events:
            if event.v != current[type(event)]:
                return self._slow(data)
        return events

    def _slow(self, data: bytes) -> list[Event]:
        return [decode(raw) for raw in self._raw.decode(data)]


async def rebuild(pool: Pool, *, batch_size: int = 2000) -> int:
    """Rebuild `jobs` from `events` (takes two pool connections); return the events folded."""
    async with (
        translated("rebuild"),
        pool.acquire() as reader,
        pool.acquire() as writer,
        reader.transaction(),
    ):
        # Self-exclusive, and holds off every writer of `jobs` (appends with a view) until
        # the swap, while reads go on. Appends without a view still go in, and the catch-up
        # reader is not held back: the long work runs in short autocommit steps.
        # Not a lock on `events`: an append waiting for it may hold its lock on `jobs`
        # already (the order depends on whether its plan is cached), and the swap would
        # then wait for it in a cycle.
        await reader.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
        await writer.execute(f"DROP TABLE IF EXISTS {_NEW}")
        await writer.execute(f"CREATE TABLE {_NEW} (LIKE jobs INCLUDING ALL)")
        try:
            folded = await _fold_all(reader, writer, batch_size)
            await _swap(reader)
        except BaseException:
            with contextlib.suppress(Exception):  # the next rebuild drops it anyway
                await writer.execute(f"DROP TABLE IF EXISTS {_NEW}")
            raise
    return folded


async def _fold_all(reader: Connection, writer: Connection, batch_size: int) -> int:
    decode_history = HistoryDecoder()
    cursor = await reader.cursor(_HISTORIES)
    fetching = asyncio.ensure_future(cursor.fetch(batch_size))
    copying: asyncio.Future[str] | None = None
    folded = 0
    try:
        while records := await fetching:
            fetching = asyncio.ensure_future(cursor.fetch(batch_size))
            rows: list[JobRow] = []
            for i, record in enumerate(records):
                rows.append(job_row(_fold_one(decode_history(record["history"]))))
                folded += record["n"]
                if i % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            if copying is not None:
                await copying
            copying = asyncio.ensure_future(_copy(writer, rows))
        if copying is not None:
            await copying
    finally:
        for task in (fetching, copying):
            await _cancel(task)
    return folded


def _fold_one(history: list[Event]) -> Job:
    job = fold(history)
    if job is None:  # pragma: no cover - every stored history starts with its submission
        raise ValueError("a job with an empty history")
    return job


def _copy(conn: Connection, rows: list[JobRow]) -> Awaitable[str]:
    return conn.copy_records_to_table(_NEW, records=rows, columns=JOB_COLUMNS)


async def _cancel(task: asyncio.Future[Any] | None) -> None:
    if task is None:
        return
    if task.done():
        if not task.cancelled():
            task.exception()  # already raised, or about to be: only mark it retrieved
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _swap(conn: Connection) -> None:
    """Replace `jobs` by the new table, giving its indexes the old names."""
    old = await _index_names(conn, "jobs")
    new = await _index_names(conn, _NEW)
    # The services' role keeps what it was granted on `jobs` (a new table has no grants).
    for grant in await conn.fetch(_GRANTS, "jobs"):
        await conn.execute(
            f"GRANT {grant['privilege']} ON {_NEW} TO "
            + ("PUBLIC" if grant["grantee"] is None else grant["grantee"])
        )
    await conn.execute(f"DROP TABLE jobs; ALTER TABLE {_NEW} RENAME TO jobs")
    for shape, name in new.items():
        if shape in old:
            await conn.execute(f'ALTER INDEX "{name}" RENAME TO "{old[shape]}"')


async def _index_names(conn: Connection, table: str) -> dict[str, str]:
    """Index shape (its definition without its name and table) -> index name."""
    rows = await conn.fetch(_INDEXES, table)
    return {_shape(r["definition"]): r["name"] for r in rows}


# Who was granted what on a table, its owner aside; grantee as a quoted name, NULL for PUBLIC.
_GRANTS = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE a.grantee::regrole::text END AS grantee,
       a.privilege_type AS privilege
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = $1::regclass AND a.grantee <> c.relowner
"""

_DEFINITION = re.compile(r"^CREATE (UNIQUE )?INDEX \S+ ON \S+ ")


def _shape(definition: str) -> str:
    return _DEFINITION.sub(r"CREATE \1INDEX ON ", definition)
