"""The janitor's SQL: which jobs to look at, their histories in one query, and retention.

Candidates come from the `jobs` read model (its `status` index); every judgement is made on
the events themselves, folded, so a read-model row that is behind, or purged, misleads nothing.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

from dockyard.core.events import Event
from dockyard.core.state import TERMINAL
from dockyard.store.pool import Pool, translated
from dockyard.store.records import join

_ACTIVE = "SELECT id::text AS id FROM jobs WHERE status IN ('starting', 'running')"

_QUEUED_SINCE = """
SELECT id::text AS id FROM jobs
WHERE status = 'queued' AND (view->>'queued_at')::timestamptz < $1
ORDER BY created_at LIMIT $2
"""

_HISTORIES = """
SELECT job_id::text AS job_id, data, metadata FROM events
WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, version
"""

# Intents on one engine after a position that were never released: the jobs whose ledger may
# hold something the engine no longer has. Each intent's check is an index lookup of its job:
# a scalar subquery, not NOT EXISTS, which PostgreSQL may turn into an anti join; before the
# table was analysed it chose one over a materialised scan of all events (minutes a sweep).
_OPEN_INTENTS = """
SELECT i.position, i.job_id::text AS job_id FROM events i
WHERE i.position > $1 AND i.type = 'resource_intended' AND i.data->>'engine' = $2
  AND (
    SELECT true FROM events r
    WHERE r.job_id = i.job_id AND r.type = 'resource_released'
      AND r.data->>'kind' = i.data->>'kind' AND r.data->>'name' = i.data->>'name'
      AND r.data->'attempt' = i.data->'attempt'
    LIMIT 1
  ) IS NULL
ORDER BY i.position LIMIT $3
"""

_LAST_POSITION = "SELECT coalesce(max(position), 0) FROM events"

# A finished job's row goes once its log lines are gone (they are found through it), and
# is remembered as purged in the same statement, so a rebuild of the read model leaves it out.
_PURGE_JOBS = """
WITH doomed AS (
    SELECT id FROM jobs j
    WHERE status = ANY($1::text[]) AND finished_at < $2
      AND NOT EXISTS (SELECT FROM log_jobs l WHERE l.job_id = j.id)
    ORDER BY finished_at LIMIT $3
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM jobs USING doomed WHERE jobs.id = doomed.id RETURNING jobs.id
)
INSERT INTO purged_jobs (id) SELECT id FROM gone
ON CONFLICT (id) DO UPDATE SET purged_at = excluded.purged_at
"""

PAGE: Final = 1000


async def active_job_ids(pool: Pool) -> list[str]:
    async with translated("janitor active jobs"):
        rows = await pool.fetch(_ACTIVE)
    return [row["id"] for row in rows]


async def queued_since(pool: Pool, before: datetime, limit: int = PAGE) -> list[str]:
    """Jobs queued before `before`, oldest first."""
    async with translated("janitor queued jobs"):
        rows = await pool.fetch(_QUEUED_SINCE, before, limit)
    return [row["id"] for row in rows]


def split_ids(ids: Iterable[str]) -> tuple[list[str], set[str]]:
    """(canonical job ids, labels that are not job ids at all)."""
    good: list[str] = []
    bad: set[str] = set()
    for text in ids:
        try:
            good.append(str(uuid.UUID(text)))
        except ValueError:
            bad.add(text)
    return good, bad


def canonical(text: str) -> str:
    """A job id as the database spells it (lower-case, hyphenated); other text as it is."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text


async def histories(pool: Pool, job_ids: Sequence[str]) -> dict[str, list[Event]]:
    """Each job's events in version order; a job without any is absent from the answer."""
    found: dict[str, list[Event]] = defaultdict(list)
    for start in range(0, len(job_ids), PAGE):
        page = list(job_ids[start : start + PAGE])
        async with translated("janitor histories"):
            rows = await pool.fetch(_HISTORIES, page)
        for row in rows:
            found[row["job_id"]].append(join(row["data"], row["metadata"]))
    return dict(found)


async def open_intents(
    pool: Pool, engine: str, after: int, limit: int = PAGE
) -> list[tuple[int, str]]:
    """(position, job id) of unreleased intents on `engine` after position `after`."""
    async with translated("janitor open intents"):
        rows = await pool.fetch(_OPEN_INTENTS, after, engine, limit)
    return [(int(row["position"]), row["job_id"]) for row in rows]


async def last_position(pool: Pool) -> int:
    async with translated("janitor last position"):
        value = await pool.fetchval(_LAST_POSITION)
    return int(value)


async def purge_job_rows(pool: Pool, before: datetime, batch: int = PAGE) -> int:
    """Remove finished jobs' read-model rows finished before `before`; their events stay."""
    removed = 0
    while True:
        async with translated("janitor purge jobs"):
            status = await pool.execute(_PURGE_JOBS, sorted(TERMINAL), before, batch)
        count = int(status.split()[-1])
        removed += count
        if count < batch:
            return removed


async def count_log_jobs(pool: Pool, before: datetime) -> int:
    """How many finished jobs' log lines retention would remove now (for a dry run)."""
    sql = (
        "SELECT count(*) FROM log_jobs l JOIN jobs j ON j.id = l.job_id"
        " WHERE l.since < $1 AND j.finished_at < $1"  # as purge_finished_logs selects
    )
    async with translated("janitor count logs"):
        return int(await pool.fetchval(sql, before))


async def count_job_rows(pool: Pool, before: datetime) -> int:
    """How many finished jobs' rows are past retention (removed once their lines are gone)."""
    sql = "SELECT count(*) FROM jobs WHERE status = ANY($1::text[]) AND finished_at < $2"
    async with translated("janitor count jobs"):
        return int(await pool.fetchval(sql, sorted(TERMINAL), before))
