"""The attempts this orchestrator runs now, and those it has finished: its local fence.

The scheduler grants a claim again to the orchestrator that holds it (so a lost claim reply
costs nothing), which means only this registry stops a second delivery of the same offer from
starting a second container: a running attempt adopts the delivery, a finished one acks it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Final, Protocol

from dockyard.orchestrator.outcome import StopRequest
from dockyard.orchestrator.ticket import Ticket

# Finished attempts remembered: far more than could be redelivered within an ack wait.
REMEMBERED: Final = 10_000


class RunningAttempt(Protocol):
    @property
    def job_id(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def ticket(self) -> Ticket: ...

    @property
    def log_seq(self) -> int:
        """The last seq numbered so far (for the heartbeat)."""
        ...

    def request_stop(self, stop: StopRequest) -> None:
        """Stop the container as the contract says; the first request wins."""
        ...


class Registry:
    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._running: dict[str, RunningAttempt] = {}
        self._done: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._remembered = remembered

    def __len__(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[RunningAttempt]:
        return iter(list(self._running.values()))

    def get(self, job_id: str) -> RunningAttempt | None:
        return self._running.get(job_id)

    def add(self, attempt: RunningAttempt) -> None:
        if attempt.job_id in self._running:
            raise RuntimeError(f"job {attempt.job_id} already runs here")
        self._running[attempt.job_id] = attempt

    def finish(self, attempt: RunningAttempt) -> None:
        if self._running.get(attempt.job_id) is attempt:
            del self._running[attempt.job_id]
        self.mark_done(attempt.job_id, attempt.attempt)

    def mark_done(self, job_id: str, attempt: int) -> None:
        self._done[(job_id, attempt)] = None
        self._done.move_to_end((job_id, attempt))
        while len(self._done) > self._remembered:
            self._done.popitem(last=False)

    def is_done(self, job_id: str, attempt: int) -> bool:
        return (job_id, attempt) in self._done

    def stop_all(self, stop: StopRequest) -> None:
        for attempt in self:
            attempt.request_stop(stop)
