"""Which jobs may hold open ledger entries on this janitor's engine, kept up incrementally.

The first sweep reads every unreleased intent on the engine (one indexed check per intent);
later sweeps read only events after a position already known to be final, so the cost follows
the new events, not the whole history. A position is taken as final once it was the last one
visible at least `overlap_s` ago: an append is one short statement, so by then every event
below it has committed (or never will). Jobs stay candidates until a fold shows nothing of
theirs is left open on this engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dockyard.janitor import queries
from dockyard.store.pool import Pool

OVERLAP_S = 60.0


class LedgerWatch:
    def __init__(
        self, *, overlap_s: float = OVERLAP_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.jobs: set[str] = set()
        self._overlap_s = overlap_s
        self._clock = clock
        self._final = 0  # every intent at or below it has been read
        self._seen: list[tuple[float, int]] = []  # (when, last position visible then)

    @property
    def final(self) -> int:
        return self._final

    def observed(self, top: int) -> None:
        """`top` was the last visible position just now; advance what is final."""
        now = self._clock()
        self._seen.append((now, top))
        settled = [pos for at, pos in self._seen if now - at >= self._overlap_s]
        if settled:
            self._final = max(self._final, max(settled))
            self._seen = [(at, pos) for at, pos in self._seen if now - at < self._overlap_s]

    def found(self, job_ids: set[str]) -> None:
        self.jobs |= job_ids

    def settled(self, job_id: str) -> None:
        """Nothing of this job is open on the engine any more (as a fold showed)."""
        self.jobs.discard(job_id)

    async def refresh(self, pool: Pool, engine: str) -> set[str]:
        """Read the intents since the last final position; returns every candidate job."""
        top = await queries.last_position(pool)
        after = self._final
        while True:
            page = await queries.open_intents(pool, engine, after)
            self.found({job_id for _, job_id in page})
            if len(page) < queries.PAGE:
                break
            after = page[-1][0]
        self.observed(top)
        return set(self.jobs)
