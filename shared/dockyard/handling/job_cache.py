"""The jobs a command batcher wrote last: their state, so the next command needs no read.

Each entry is what the batcher itself committed, so it is right unless another writer (a
second scheduler, the janitor, a one-off `execute`) has appended since. That is safe to
miss only where the store would notice it:
- a command that writes events: its insert at `version + 1` collides with the other writer's
  row, the batch fails with BatchConflict, and the slow path reads the job afresh;
- a command that writes nothing (a duplicate, a refusal): nothing collides, so such an answer
  from a cached state is never trusted; the batch reads those jobs and decides again.
Finished jobs are kept only briefly (FINISHED_TTL_S): what still comes for them is the
orchestrator's last removal reports, within moments, then only rare duplicates, which can
afford a read.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

from dockyard.core import Job

CAPACITY: Final = 4096
FINISHED_TTL_S: Final = 60.0


class Known(NamedTuple):
    """A job as of its `version`th event (None: no such job)."""

    version: int
    job: Job | None


class JobCache:
    """Least recently used first out, at most `capacity` jobs."""

    def __init__(
        self, capacity: int = CAPACITY, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = capacity
        self._clock = clock
        self._jobs: OrderedDict[str, tuple[Known, float]] = OrderedDict()  # and until when

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str) -> Known | None:
        entry = self._jobs.get(job_id)
        if entry is None:
            return None
        known, until = entry
        if self._clock() >= until:
            del self._jobs[job_id]
            return None
        self._jobs.move_to_end(job_id)
        return known

    def put(self, job_id: str, known: Known) -> None:
        if known.job is None or self._capacity < 1:
            self._jobs.pop(job_id, None)
            return
        until = self._clock() + FINISHED_TTL_S if known.job.finished else math.inf
        self._jobs[job_id] = (known, until)
        self._jobs.move_to_end(job_id)
        while len(self._jobs) > self._capacity:
            self._jobs.popitem(last=False)

    def forget(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._jobs.pop(job_id, None)
