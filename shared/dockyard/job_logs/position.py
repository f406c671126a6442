"""Where a job's stored log ends: what a new attempt continues from (read by the scheduler
when it grants a claim; the log relay writes it as it stores lines)."""

from __future__ import annotations

from typing import NamedTuple

from dockyard.store.pool import Pool, translated

_STORED = "SELECT max_seq, bytes FROM log_jobs WHERE job_id = $1"


class StoredLog(NamedTuple):
    seq: int  # the highest seq stored, 0 if none: a new attempt numbers after it
    bytes: int  # stdout and stderr text stored over all attempts: the per-job cap counts it


NOTHING = StoredLog(0, 0)


async def stored_log(pool: Pool, job_id: str) -> StoredLog:
    """Raises StoreUnavailable."""
    async with translated("stored_log"):
        row = await pool.fetchrow(_STORED, job_id)
    return NOTHING if row is None else StoredLog(int(row["max_seq"]), int(row["bytes"]))
