"""Log retention: the lines of jobs finished long enough ago are removed (the janitor's sweep)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from dockyard.store.pool import Pool, translated

# Logs first stored before the cutoff, of jobs finished before it, oldest first: walked by
# `since`, so a sweep reads what it purges (and the logs of jobs still running from before the
# cutoff), not every job with logs. A job finishes after its first line, except when the
# relay stored its lines late; those wait until `since` passes the cutoff too.
_PURGEABLE_LOGS = """
SELECT l.job_id FROM log_jobs l JOIN jobs j ON j.id = l.job_id
WHERE l.since < $1 AND j.finished_at < $1
ORDER BY l.since LIMIT $2
FOR UPDATE OF l SKIP LOCKED
"""


class Purged(NamedTuple):
    jobs: int
    lines: int


async def purge_finished_logs(
    pool: Pool, *, older_than: timedelta, now: datetime | None = None, batch: int = 100
) -> Purged:
    """Remove the lines of jobs finished more than `older_than` ago (the janitor calls this).

    Works `batch` jobs per transaction, so it never holds locks for long; several janitors
    may run it at once (SKIP LOCKED).
    """
    cutoff = (now or datetime.now(UTC)) - older_than
    jobs = lines = 0
    while True:
        async with translated("purge_finished_logs"), pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_PURGEABLE_LOGS, cutoff, batch)
            if not rows:
                return Purged(jobs, lines)
            ids = [row["job_id"] for row in rows]
            removed = await conn.fetchval(
                "WITH d AS (DELETE FROM log_chunks WHERE job_id = ANY($1::uuid[])"
                " RETURNING last_seq - first_seq + 1 AS n) SELECT coalesce(sum(n), 0) FROM d",
                ids,
            )
            await conn.execute("DELETE FROM log_jobs WHERE job_id = ANY($1::uuid[])", ids)
        jobs += len(ids)
        lines += int(removed)
