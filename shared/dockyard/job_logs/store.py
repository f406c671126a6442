"""Log lines in PostgreSQL: chunks written in bulk, each line once, read back by seq.

Writes are one statement for any number of chunks (arrays through `unnest`); the table's
trigger skips a chunk that would store a line twice, and `append` then stores whatever part
of it was not stored yet, so a redelivered or re-split batch never duplicates or loses a line.
Reads return whole chunk bodies, sliced only at the edges of the asked range.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from dockyard.job_logs.chunks import Chunk, packed, slice_chunk, unpacked
from dockyard.job_logs.position import stored_log
from dockyard.store.pool import Pool, translated

_APPEND = """
WITH given AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bigint[])
        AS c(job_id, first_seq, last_seq, lines, output_bytes)
), inserted AS (
    INSERT INTO log_chunks (job_id, first_seq, last_seq, lines)
    SELECT job_id, first_seq, last_seq, lines FROM given
    ORDER BY job_id, first_seq
    ON CONFLICT DO NOTHING
    RETURNING job_id, first_seq, last_seq
), counted AS (
    INSERT INTO log_jobs AS j (job_id, max_seq, lines, bytes)
    SELECT i.job_id, max(i.last_seq), sum(i.last_seq - i.first_seq + 1), sum(g.output_bytes)
    FROM inserted i
    JOIN (SELECT DISTINCT ON (job_id, first_seq) job_id, first_seq, output_bytes FROM given) g
        USING (job_id, first_seq)
    GROUP BY i.job_id ORDER BY i.job_id
    ON CONFLICT (job_id) DO UPDATE
        SET max_seq = greatest(j.max_seq, excluded.max_seq), lines = j.lines + excluded.lines,
            bytes = j.bytes + excluded.bytes
)
SELECT job_id::text AS job_id, first_seq, last_seq FROM inserted
"""

# Both range reads bound last_seq from above by the first chunk ending at or past the range's
# end: chunks never overlap (log_chunks_once), so none after it can start inside the range.
# With `first_seq <= hi` only as a filter, every read walked the job's chunks to its end, and
# paging through a long log was quadratic in its length.
_MAX_SEQ = 9223372036854775807

_STORED_RANGES = f"""
SELECT c.job_id::text AS job_id, c.first_seq, c.last_seq
FROM log_chunks c
JOIN unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS s(job_id, lo, hi)
    ON c.job_id = s.job_id AND c.last_seq >= s.lo AND c.first_seq <= s.hi
    AND c.last_seq <= coalesce((
        SELECT n.last_seq FROM log_chunks n
        WHERE n.job_id = s.job_id AND n.last_seq >= s.hi ORDER BY n.last_seq LIMIT 1
    ), {_MAX_SEQ})
"""

_WINDOW = f"""
SELECT first_seq, last_seq, lines FROM log_chunks
WHERE job_id = $1 AND last_seq > $2 AND first_seq <= $3
  AND last_seq <= coalesce((
      SELECT last_seq FROM log_chunks
      WHERE job_id = $1 AND last_seq >= $3 ORDER BY last_seq LIMIT 1
  ), {_MAX_SEQ})
ORDER BY last_seq
"""

_NEXT = """
SELECT first_seq FROM log_chunks
WHERE job_id = $1 AND last_seq > $2
ORDER BY last_seq LIMIT 1
"""


class Appended(NamedTuple):
    chunks: int  # rows written
    lines: int  # lines written; lines already stored are not counted


class Page(NamedTuple):
    chunks: list[Chunk]  # in seq order; without gaps unless read with contiguous=False
    last: int  # the last seq in `chunks`, or the `after` asked for
    gap: int | None  # a contiguous read stopped at missing lines: the next seq stored

    @property
    def bodies(self) -> list[bytes]:
        return [chunk.body for chunk in self.chunks]

    @property
    def line_count(self) -> int:
        return sum(chunk.count for chunk in self.chunks)


class LogStore:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def append(self, chunks: Sequence[Chunk]) -> Appended:
        """Store the chunks' lines that are not stored yet. Raises StoreUnavailable."""
        if not chunks:
            return Appended(0, 0)
        async with translated("append log chunks"):
            rows = await self._pool.fetch(
                _APPEND,
                [c.job_id for c in chunks],
                [c.first for c in chunks],
                [c.last for c in chunks],
                [packed(c.body) for c in chunks],
                [c.output_bytes for c in chunks],
            )
        inserted = {(r["job_id"], r["first_seq"]) for r in rows}
        written = Appended(len(rows), sum(r["last_seq"] - r["first_seq"] + 1 for r in rows))
        skipped = [c for c in chunks if (c.job_id, c.first) not in inserted]
        if not skipped:
            return written
        # Some lines were stored already: a redelivery (the usual case, nothing left to do) or
        # a chunk overlapping stored ones, whose other lines are stored now.
        holes = await self._unstored_parts(skipped)
        more = await self.append(holes) if holes else Appended(0, 0)
        return Appended(written.chunks + more.chunks, written.lines + more.lines)

    async def _unstored_parts(self, chunks: list[Chunk]) -> list[Chunk]:
        async with translated("read stored log ranges"):
            rows = await self._pool.fetch(
                _STORED_RANGES,
                [c.job_id for c in chunks],
                [c.first for c in chunks],
                [c.last for c in chunks],
            )
        stored: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for row in rows:
            stored[row["job_id"]].append((row["first_seq"], row["last_seq"]))
        parts: list[Chunk] = []
        seen: set[tuple[str, int]] = set()
        for chunk in chunks:
            if (chunk.job_id, chunk.first) in seen:
                continue  # the same chunk twice in one append
            seen.add((chunk.job_id, chunk.first))
            for lo, hi in holes_in(chunk.first, chunk.last, stored[chunk.job_id]):
                parts.append(slice_chunk(chunk, lo, hi))
        return parts

    async def read(
        self, job_id: str, after: int, limit: int, *, contiguous: bool = True, exact: bool = True
    ) -> Page:
        """Lines after `after`, about `limit` of them, in seq order.

        `contiguous`: stop at the first missing line (it may still be on its way) and say
        where the stored lines resume. `exact`: at most `limit` lines; otherwise the last
        chunk is returned whole, which spares slicing it.
        """
        chunks: list[Chunk] = []
        last = after
        async with translated("read log lines"):
            while limit > 0:
                rows = await self._pool.fetch(_WINDOW, job_id, last, last + limit)
                if not rows:
                    break
                for row in rows:
                    first = row["first_seq"]
                    if contiguous and first > last + 1:
                        return Page(chunks, last, first)
                    chunk = Chunk(job_id, first, row["last_seq"], unpacked(row["lines"]))
                    hi = chunk.last if not exact else min(chunk.last, last + limit)
                    chunk = slice_chunk(chunk, last + 1, hi)
                    chunks.append(chunk)
                    limit -= chunk.count
                    last = chunk.last
                    if limit <= 0:
                        break
                if contiguous:
                    break  # the window held every line up to a gap: nothing follows at once
            if contiguous and limit > 0:
                following = await self._pool.fetchval(_NEXT, job_id, last)
                if following is not None:
                    return Page(chunks, last, int(following))
        return Page(chunks, last, None)

    async def stored_max(self, job_id: str) -> int:
        """The highest seq stored for the job (0 if none)."""
        return await last_stored_seq(self._pool, job_id)


def holes_in(first: int, last: int, stored: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges of first..last that no stored (lo, hi) range covers."""
    holes: list[tuple[int, int]] = []
    at = first
    for lo, hi in sorted(stored):
        if hi < at or lo > last:
            continue
        if lo > at:
            holes.append((at, lo - 1))
        at = max(at, hi + 1)
        if at > last:
            break
    if at <= last:
        holes.append((at, last))
    return holes


async def last_stored_seq(pool: Pool, job_id: str) -> int:
    """The highest log seq stored for a job, 0 if none: a new attempt numbers after it."""
    return (await stored_log(pool, job_id)).seq
