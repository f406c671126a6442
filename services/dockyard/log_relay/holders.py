"""Which orchestrator holds each attempt: the relay keeps a log batch only from that one.

A batch arrives on `log_subject(orchestrator, job)`, a subject NATS lets only that
orchestrator publish on; it is stored only if that orchestrator claimed the batch's attempt
(the attempt's JobClaimed event). A claim is appended before its answer is sent, so the
event is always there before the first genuine batch of its attempt: an attempt without one
is nobody's, and a batch for it is dropped. An attempt's holder never changes, so it is
remembered (per job and attempt, the most recent 100 000); what is not found is asked again
the next time (a claim may come later), one query for every batch of a fetch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

from dockyard.core.events import JobClaimed, type_name
from dockyard.store.pool import Pool, translated

REMEMBERED: Final = 100_000

Attempt = tuple[str, int]  # (job id, attempt)

_CLAIMS: Final = """
SELECT job_id::text AS job_id, (data->>'attempt')::int AS attempt,
       data->>'orchestrator' AS orchestrator
FROM events WHERE job_id = ANY($1::uuid[]) AND type = $2
"""


class AttemptHolders:
    def __init__(self, pool: Pool, *, remembered: int = REMEMBERED) -> None:
        self._pool = pool
        self._known: OrderedDict[Attempt, str] = OrderedDict()
        self._remembered = remembered
        self.queries = 0  # round trips made (for tests: the hot path makes none)

    def known(self, attempt: Attempt) -> str | None:
        """The holder if it is remembered (no query: for callbacks that must not wait)."""
        return self._known.get(attempt)

    async def of(self, attempts: Iterable[Attempt]) -> dict[Attempt, str]:
        """The holder of each of `attempts` that has one; StoreUnavailable if the database
        cannot say."""
        found: dict[Attempt, str] = {}
        missing: set[Attempt] = set()
        for attempt in attempts:
            holder = self._known.get(attempt)
            if holder is None:
                missing.add(attempt)
            else:
                found[attempt] = holder
        if missing:
            found.update(await self._claimed(missing))
        return found

    async def _claimed(self, missing: set[Attempt]) -> dict[Attempt, str]:
        jobs = sorted({job_id for job_id, _ in missing})
        self.queries += 1
        async with translated("read the claims of log batches' jobs"):
            rows = await self._pool.fetch(_CLAIMS, jobs, type_name(JobClaimed))
        found: dict[Attempt, str] = {}
        for row in rows:
            key = (str(row["job_id"]), int(row["attempt"]))
            self._remember(key, str(row["orchestrator"]))
            if key in missing:
                found[key] = str(row["orchestrator"])
        return found

    def _remember(self, key: Attempt, holder: str) -> None:
        self._known[key] = holder
        self._known.move_to_end(key)
        while len(self._known) > self._remembered:
            self._known.popitem(last=False)
