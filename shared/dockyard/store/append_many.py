"""Group commit: the appends of many jobs as one statement, so one commit (one WAL flush)
carries them all.

No expected-version check per job is needed in SQL: each job's first new event takes version
`expected + 1`, which the unique key (job_id, version) refuses if any writer got there first,
and a caller's expected version is never ahead of the job (it read the history). Any refusal
aborts the whole statement; the caller then appends one job at a time to learn which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dockyard.store.ports import PendingAppend
from dockyard.store.read_model import job_row
from dockyard.store.records import Batch, check_view

SQL = """
WITH appended AS (
    INSERT INTO events (job_id, version, event_id, type, schema_version, data, metadata)
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::int2[],
                         $6::jsonb[], $7::jsonb[])
    RETURNING 1
)
INSERT INTO jobs (id, tenant, status, queue, attempt, version, idempotency_key, labels,
                  created_at, finished_at, due_at, orchestrator, view)
SELECT * FROM unnest($8::uuid[], $9::text[], $10::text[], $11::text[], $12::int[], $13::int[],
                     $14::text[], $15::jsonb[], $16::timestamptz[], $17::timestamptz[],
                     $18::timestamptz[], $19::text[], $20::jsonb[])
ON CONFLICT (id) DO UPDATE SET
    tenant = excluded.tenant, status = excluded.status, queue = excluded.queue,
    attempt = excluded.attempt, version = excluded.version,
    idempotency_key = excluded.idempotency_key, labels = excluded.labels,
    created_at = excluded.created_at, finished_at = excluded.finished_at,
    due_at = excluded.due_at, orchestrator = excluded.orchestrator, view = excluded.view
WHERE jobs.version < excluded.version
"""

LOAD = """
SELECT job_id, version, position, tx_id, recorded_at, data, metadata FROM events
WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, version
"""


def arguments(appends: Sequence[PendingAppend]) -> list[Any]:
    """The statement's 20 column arrays: 7 for the events, 13 for the jobs rows."""
    events: list[list[Any]] = [[] for _ in range(7)]
    rows: list[list[Any]] = [[] for _ in range(13)]
    seen: set[str] = set()
    for append in appends:
        if append.job_id in seen:
            raise ValueError(f"job {append.job_id} appears twice in one append_many")
        seen.add(append.job_id)
        batch = Batch(append.job_id, append.events)
        check_view(append.job_id, append.expected_version + len(append.events), append.view)
        for n, column in enumerate(batch.columns()):
            events[2 + n].extend(column)
        events[0].extend([append.job_id] * len(append.events))
        events[1].extend(
            range(append.expected_version + 1, append.expected_version + 1 + len(append.events))
        )
        for column, value in zip(rows, job_row(append.view), strict=True):
            column.append(value)
    return [*events, *rows]
