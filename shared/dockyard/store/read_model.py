"""The jobs read model: a job's contract view and its `jobs` row, derived from the folded Job,
and the queries on it.

The derivation is pure, so the store, the rebuild, the in-memory store and the HTTP API all
derive the same view from the same fold. Secret env values are masked in the view: it is
what the API shows, and only the orchestrator, reading events, needs the real values.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from dockyard.core.state import STATUSES, Job
from dockyard.core.view import JobView as ContractView
from dockyard.core.view import job_view as core_view
from dockyard.store.pool import Pool, translated
from dockyard.store.ports import InvalidCursor, JobView, ViewPage

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class JobRow(NamedTuple):
    """One `jobs` row, columns in table order (`view` and `labels` as JSON bytes)."""

    id: str
    tenant: str
    status: str
    queue: str
    attempt: int
    version: int
    idempotency_key: str | None
    labels: bytes
    created_at: datetime
    finished_at: datetime | None
    due_at: datetime | None
    orchestrator: str | None
    view: bytes


JOB_COLUMNS: tuple[str, ...] = JobRow._fields

_encoder = msgspec.json.Encoder()
_view_decoder = msgspec.json.Decoder(dict[str, Any])


def contract_view(job: Job) -> ContractView:
    return core_view(job)


def job_view(job: Job) -> JobView:
    """The contract's job view as parsed JSON: times RFC 3339 strings or None, lists not tuples.

    Made by a JSON round trip, so it is equal to what the store gives back for the job.
    """
    return decode_view(view_json(job))


def view_json(job: Job) -> bytes:
    """The job view encoded as JSON (what the `view` column holds)."""
    return _encoder.encode(contract_view(job))


def decode_view(data: bytes) -> JobView:
    return _view_decoder.decode(data)


def job_row(job: Job) -> JobRow:
    return JobRow(
        id=job.id,
        tenant=job.tenant,
        status=job.status,
        queue=job.spec.queue,
        attempt=job.attempt,
        version=job.version,
        idempotency_key=job.spec.idempotency_key,
        labels=_encoder.encode(job.spec.labels),
        created_at=job.created_at,
        finished_at=job.finished_at,
        due_at=job.due_at if job.status == "scheduled" else None,
        orchestrator=job.orchestrator,
        view=view_json(job),
    )


# The list cursor names the last job of a page by its sort key, (created_at, id). It is opaque
# to clients: base64 of JSON, so its shape may change without breaking them (old ones fail
# cleanly with InvalidCursor).


def encode_cursor(created_at: datetime, job_id: str) -> str:
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    raw = _encoder.encode([micros, job_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        micros, job_id = msgspec.json.decode(raw, type=tuple[int, str])
        return _EPOCH + timedelta(microseconds=micros), str(uuid.UUID(job_id))
    except (binascii.Error, ValueError, OverflowError, msgspec.DecodeError) as exc:
        raise InvalidCursor(f"not a cursor this server made: {cursor!r}") from exc


def sort_key(created_at: datetime, job_id: str) -> tuple[datetime, str]:
    """Newest-first order, reversed: uuids compare as their canonical lower-case text."""
    return created_at, job_id.lower()


class PgJobViews:
    """JobViews on the `jobs` table that PgEventStore.append(view=...) keeps."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def get_view(self, job_id: str) -> JobView | None:
        async with translated("get_view"):
            data = await self._pool.fetchval("SELECT view FROM jobs WHERE id = $1", job_id)
        return None if data is None else decode_view(data)

    async def find_by_idempotency_key(self, tenant: str, key: str) -> JobView | None:
        sql = "SELECT view FROM jobs WHERE tenant = $1 AND idempotency_key = $2"
        async with translated("find_by_idempotency_key"):
            data = await self._pool.fetchval(sql, tenant, key)
        return None if data is None else decode_view(data)

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
        # Only the filters given go into the SQL, so each shape gets a plan fit for it.
        where: list[str] = []
        args: list[object] = []

        def param(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if tenant is not None:
            where.append(f"tenant = {param(tenant)}")
        if status is not None:
            # A known status is a literal: after a few lists of a common status PostgreSQL
            # switched to a generic plan, which then walked every job of the tenant looking
            # for a rare one. Statuses are few, so each gets a plan of its own.
            known = status in STATUSES
            where.append(f"status = '{status}'" if known else f"status = {param(status)}")
        if queue is not None:
            where.append(f"queue = {param(queue)}")
        if labels:
            where.append(f"labels @> {param(_encoder.encode(dict(labels)))}::jsonb")
        if cursor is not None:
            created_at, job_id = decode_cursor(cursor)
            where.append(f"(created_at, id) < ({param(created_at)}, {param(job_id)}::uuid)")
        sql = (
            "SELECT created_at, id, view FROM jobs"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY created_at DESC, id DESC LIMIT {param(max(limit, 0) + 1)}"
        )
        async with translated("list_views"):
            rows = await self._pool.fetch(sql, *args)
        page = rows[: max(limit, 0)]
        next_cursor = None
        if len(rows) > len(page) and page:
            next_cursor = encode_cursor(page[-1]["created_at"], str(page[-1]["id"]))
        return ViewPage([decode_view(r["view"]) for r in page], next_cursor)
