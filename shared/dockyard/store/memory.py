"""EventStore and JobViews in memory: for unit tests and the control-plane benchmark.

It behaves as PgEventStore does, checked by the same contract tests: events are stored
encoded and decoded on every read (so what cannot round-trip fails here too), ids must be
UUIDs, versions are contiguous, and the job's view is written with its events or not at all.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from dockyard.core.events import Event
from dockyard.core.state import Job
from dockyard.store import append_many
from dockyard.store.ports import (
    START,
    BatchConflict,
    ConcurrencyError,
    DuplicateIdempotencyKey,
    JobView,
    PendingAppend,
    Position,
    RecordedEvent,
    ViewPage,
)
from dockyard.store.read_model import (
    JobRow,
    decode_cursor,
    decode_view,
    encode_cursor,
    job_row,
    sort_key,
)
from dockyard.store.records import Batch, canonical_id, check_view, join


class _Stored(NamedTuple):
    data: bytes
    metadata: bytes
    version: int
    position: int
    tx_id: int
    recorded_at: datetime

    def recorded(self) -> RecordedEvent:
        return RecordedEvent(
            join(self.data, self.metadata),
            self.version,
            self.position,
            self.tx_id,
            self.recorded_at,
        )


class _ViewRow(NamedTuple):
    row: JobRow
    labels: Mapping[str, str]


class InMemoryEventStore:
    """Both ports (EventStore and JobViews) over dicts; safe for one event loop."""

    def __init__(self) -> None:
        self._histories: dict[str, list[_Stored]] = {}
        self._log: list[_Stored] = []
        self._log_keys: list[Position] = []  # (tx_id, position) of each, for bisect
        self._owners: dict[str, str] = {}  # event id -> job id
        self._checkpoints: dict[str, Position] = {}
        self._views: dict[str, _ViewRow] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._positions = itertools.count(1)
        self._tx_ids = itertools.count(1000)
        self._appended = asyncio.Event()
        self._appended.set()  # the first wait returns at once, as a fresh listener's does

    # -- EventStore

    async def append(
        self,
        job_id: str,
        expected_version: int,
        events: Sequence[Event],
        view: Job | None = None,
    ) -> int:
        if not events:
            return expected_version
        batch = Batch(job_id, events)
        job_id = canonical_id(job_id)
        event_ids = [canonical_id(e) for e in batch.event_ids]  # as PostgreSQL's uuid does
        history = self._histories.get(job_id, [])
        current = len(history)
        row = None
        if view is not None:
            check_view(job_id, expected_version + len(events), view)
            row = job_row(view)
        owners = [self._owners.get(e) for e in event_ids]
        if current != expected_version or any(owners):
            if all(owner == job_id for owner in owners):
                return current  # every event is in already: a retry of an append that went in
            raise ConcurrencyError(job_id, expected_version, current)
        if row is not None:
            self._check_idempotency(row)
        tx_id = next(self._tx_ids)
        now = datetime.now(UTC)
        for i, event_id in enumerate(event_ids):
            stored = _Stored(
                batch.data[i],
                batch.metadata[i],
                expected_version + i + 1,
                next(self._positions),
                tx_id,
                now,
            )
            history.append(stored)
            self._log.append(stored)
            self._log_keys.append(Position(tx_id, stored.position))
            self._owners[event_id] = job_id
        self._histories[job_id] = history
        if row is not None:
            self._write_view(row, view)
        self._appended.set()
        return expected_version + len(events)

    async def load(self, job_id: str) -> list[RecordedEvent]:
        return [s.recorded() for s in self._histories.get(canonical_id(job_id), [])]

    async def load_many(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        return {job_id: await self.load(job_id) for job_id in job_ids}

    async def append_many(self, appends: Sequence[PendingAppend]) -> None:
        appends = [a for a in appends if a.events]
        append_many.arguments(appends)  # the same ValueErrors as PostgreSQL's
        if self._conflicts(appends):
            raise BatchConflict("an append of the batch conflicts")
        for job_id, expected_version, events, view in appends:
            await self.append(job_id, expected_version, events, view)

    def _conflicts(self, appends: Sequence[PendingAppend]) -> bool:
        keys: set[tuple[str, str]] = set()
        for append in appends:
            job_id = canonical_id(append.job_id)
            if len(self._histories.get(job_id, [])) != append.expected_version:
                return True
            if any(canonical_id(e.event_id) in self._owners for e in append.events):
                return True
            key = append.view.spec.idempotency_key
            if key is not None:
                holder = self._idempotency.get((append.view.tenant, key))
                if (holder is not None and holder != job_id) or (append.view.tenant, key) in keys:
                    return True
                keys.add((append.view.tenant, key))
        return False

    async def read_all(self, after: Position, limit: int = 1000) -> list[RecordedEvent]:
        self._appended.clear()  # this read sees every append so far
        start = bisect.bisect_right(self._log_keys, after)
        return [s.recorded() for s in self._log[start : start + limit]]

    async def load_checkpoint(self, name: str) -> Position:
        return self._checkpoints.get(name, START)

    async def save_checkpoint(self, name: str, position: Position) -> None:
        self._checkpoints[name] = Position(position.tx_id, position.position)

    async def wait_for_events(self, timeout: float) -> bool:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                await self._appended.wait()
        except TimeoutError:
            return False
        self._appended.clear()
        return True

    def events_pending(self) -> bool:
        return self._appended.is_set()

    async def close(self) -> None:
        """Nothing to give back; here for symmetry with PgEventStore."""

    # -- JobViews

    async def get_view(self, job_id: str) -> JobView | None:
        entry = self._views.get(canonical_id(job_id))
        return None if entry is None else decode_view(entry.row.view)

    async def list_views(
        self,
        tenant: str | None,
        *,
        status: str | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ViewPage:
        after = decode_cursor(cursor) if cursor is not None else None
        wanted = labels or {}
        rows = [
            e.row
            for e in self._views.values()
            if (tenant is None or e.row.tenant == tenant)
            and (status is None or e.row.status == status)
            and (queue is None or e.row.queue == queue)
            and all(e.labels.get(k) == v for k, v in wanted.items())
            and (after is None or sort_key(e.row.created_at, e.row.id) < after)
        ]
        rows.sort(key=lambda r: sort_key(r.created_at, r.id), reverse=True)
        page = rows[: max(limit, 0)]
        next_cursor = None
        if len(rows) > len(page) and page:
            next_cursor = encode_cursor(page[-1].created_at, page[-1].id)
        return ViewPage([decode_view(r.view) for r in page], next_cursor)

    async def find_by_idempotency_key(self, tenant: str, key: str) -> JobView | None:
        job_id = self._idempotency.get((tenant, key))
        return None if job_id is None else await self.get_view(job_id)

    # -- helpers

    def _check_idempotency(self, row: JobRow) -> None:
        if row.idempotency_key is None:
            return
        holder = self._idempotency.get((row.tenant, row.idempotency_key))
        if holder is not None and holder != canonical_id(row.id):
            raise DuplicateIdempotencyKey(row.tenant, row.idempotency_key)

    def _write_view(self, row: JobRow, view: Job | None) -> None:
        assert view is not None
        job_id = canonical_id(row.id)
        existing = self._views.get(job_id)
        if existing is not None and existing.row.version >= row.version:
            return
        self._views[job_id] = _ViewRow(row._replace(id=job_id), view.spec.labels)
        if row.idempotency_key is not None:
            self._idempotency[(row.tenant, row.idempotency_key)] = job_id
