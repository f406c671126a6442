"""The jobs a command batcher wrote last: their state, so the next command needs no read.

Each entry is what the batcher itself committed, so it is right unless another writer (a
second scheduler, the janitor, a one-off `execute`) has appended since. That is safe to
miss only where the store would notice it:
- a command that writes events: its insert at `version + 1` collides with the other writer's
  row, the batch fails with BatchConflict, and the slow path reads the job afresh;
- a command that writes nothing (a duplicate, a refusal): nothing collides, so such an answer
  from a cached state is never trusted; the batch reads those jobs and decides again.
Finished jobs are not kept: only late duplicates still come for them, and retention may
delete their events, which must then read as an unknown job, not as the cached state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, NamedTuple

from dockyard.core import Job

CAPACITY: Final = 4096


class Known(NamedTuple):
    """A job as of its `version`th event (None: no such job)."""

    version: int
    job: Job | None


class JobCache:
    """Least recently used first out, at most `capacity` jobs."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._jobs: OrderedDict[str, Known] = OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str) -> Known | None:
        known = self._jobs.get(job_id)
        if known is not None:
            self._jobs.move_to_end(job_id)
        return known

    def put(self, job_id: str, known: Known) -> None:
        if known.job is None or known.job.finished:
            self._jobs.pop(job_id, None)
            return
        self._jobs[job_id] = known
        self._jobs.move_to_end(job_id)
        while len(self._jobs) > self._capacity:
            self._jobs.popitem(last=False)

    def forget(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._jobs.pop(job_id, None)
