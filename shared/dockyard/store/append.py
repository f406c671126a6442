"""The append statement: check, insert and read-model upsert in one autocommit statement.

The insert happens only if the job is at the expected version, so in the common case an
append is one round trip. When it inserts nothing, or loses a race on the unique key
(job_id, version), a second query (`DIAGNOSE`) tells a conflict from a retry of an append
that went in already.
"""

from __future__ import annotations

from collections.abc import Sequence

from dockyard.core.events import Event, type_name
from dockyard.core.state import Job
from dockyard.store.read_model import job_row
from dockyard.store.records import Batch, check_job, check_view, split

_COLUMNS = "job_id, version, event_id, type, schema_version, data, metadata"
_AT_EXPECTED = "(SELECT coalesce(max(version), 0) FROM events WHERE job_id = $1) = $2::int"

# One event, the most common append: plain parameters cost less than arrays to send and read.
_INSERT_ONE = f"""
INSERT INTO events ({_COLUMNS})
SELECT $1, $2::int + 1, $3::uuid, $4::text, $5::int2, $6::jsonb, $7::jsonb
WHERE {_AT_EXPECTED}
"""

_INSERT_MANY = f"""
INSERT INTO events ({_COLUMNS})
SELECT $1, $2::int + e.n, e.event_id, e.type, e.schema_version, e.data, e.metadata
FROM unnest($3::uuid[], $4::text[], $5::int2[], $6::jsonb[], $7::jsonb[])
    WITH ORDINALITY AS e(event_id, type, schema_version, data, metadata, n)
WHERE {_AT_EXPECTED}
"""

# The read-model row is upserted by the same statement, and only if the events went in: the
# row can never be ahead of or behind the log.
_WITH_VIEW = """
WITH appended AS ({insert} RETURNING 1)
INSERT INTO jobs (id, tenant, status, queue, attempt, version, idempotency_key, labels,
                  created_at, finished_at, due_at, orchestrator, view)
SELECT $1, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19
WHERE EXISTS (SELECT FROM appended)
ON CONFLICT (id) DO UPDATE SET
    tenant = excluded.tenant, status = excluded.status, queue = excluded.queue,
    attempt = excluded.attempt, version = excluded.version,
    idempotency_key = excluded.idempotency_key, labels = excluded.labels,
    created_at = excluded.created_at, finished_at = excluded.finished_at,
    due_at = excluded.due_at, orchestrator = excluded.orchestrator, view = excluded.view
WHERE jobs.version < excluded.version
"""

_SQL = {
    (False, False): _INSERT_MANY,
    (False, True): _INSERT_ONE,
    (True, False): _WITH_VIEW.format(insert=_INSERT_MANY),
    (True, True): _WITH_VIEW.format(insert=_INSERT_ONE),
}

# After an append that inserted nothing: where is the job, and are these events in it?
DIAGNOSE = """
SELECT coalesce(max(version), 0) AS current,
       count(*) FILTER (WHERE event_id = ANY($2::uuid[])) AS stored
FROM events WHERE job_id = $1
"""


class Append:
    """One append, as SQL and arguments; `done(status)` says if the statement did it all."""

    __slots__ = ("args", "event_ids", "sql", "want")

    def __init__(
        self, job_id: str, expected_version: int, events: Sequence[Event], view: Job | None
    ) -> None:
        one = len(events) == 1
        if one:
            event = events[0]
            check_job(job_id, event)
            data, metadata = split(event)
            self.event_ids = [event.event_id]
            args: list[object] = [
                job_id,
                expected_version,
                event.event_id,
                type_name(type(event)),
                event.v,
                data,
                metadata,
            ]
        else:
            batch = Batch(job_id, events)
            self.event_ids = batch.event_ids
            args = [job_id, expected_version, *batch.columns()]
        if view is not None:
            check_view(job_id, expected_version + len(events), view)
            args.extend(job_row(view)[1:])
        self.sql = _SQL[(view is not None, one)]
        self.args = args
        # Rows the statement reports: each event, or the one jobs row written after them.
        self.want = 1 if view is not None else len(events)

    def done(self, status: str) -> bool:
        """Did the statement (status "INSERT 0 <rows>") append everything?"""
        return int(status.rpartition(" ")[2]) == self.want
