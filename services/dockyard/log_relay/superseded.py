"""Lines of an attempt that a later attempt has replaced: never kept, never shown.

An orchestrator cut off from NATS past its lease still holds its attempt (holders.py), and
when its link comes back, the batches it had already written to its socket reach the LOGS
stream: no check of its own can take them back. By then the job was claimed again, and the
new attempt numbers its lines after the last one the stream held at its claim; the late
batches carry the old attempt's next seqs, the same ones. Whichever came first would take
those seqs, so the new attempt's own lines could be dropped as repeats.

Batches of a job reach the stream in order, and the old attempt's genuine batches were on it
before the claim, so before the new attempt's first batch: once a batch of a later attempt is
seen, a batch of an earlier one is kept only if all of it lies before the later attempt's
first seq (a redelivery of one already stored). This is decided in stream order, by the
persister and by each room, from what they have seen (the most recent 100 000 jobs).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from dockyard.job_logs.chunks import Chunk

REMEMBERED: Final = 100_000


class LaterAttempts:
    def __init__(self, *, remembered: int = REMEMBERED) -> None:
        # Per job: each attempt seen and the seq of its first line (every earlier attempt's
        # genuine lines come before it).
        self._starts: OrderedDict[str, dict[int, int]] = OrderedDict()
        self._remembered = remembered

    def admit(self, chunks: list[Chunk]) -> bool:
        """Whether a batch (its chunks, of one job and attempt, in the order the stream holds
        them) is kept; False for an attempt's lines at or past a later attempt's start."""
        if not chunks or chunks[0].attempt <= 0:
            return True  # no lines, or an earlier version's batch that names no attempt
        job_id, attempt = chunks[0].job_id, chunks[0].attempt
        starts = self._starts.get(job_id)
        if starts is None:
            starts = self._starts[job_id] = {}
            while len(self._starts) > self._remembered:
                self._starts.popitem(last=False)
        self._starts.move_to_end(job_id)
        later = [first for a, first in starts.items() if a > attempt]
        if later and max(c.last for c in chunks) >= min(later):
            return False
        starts.setdefault(attempt, min(c.first for c in chunks))
        return True

    def started(self, job_id: str) -> dict[int, int]:
        """The attempts seen of `job_id` and where each starts."""
        return dict(self._starts.get(job_id, {}))
