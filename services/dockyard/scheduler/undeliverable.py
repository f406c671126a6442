"""What the scheduler does with an event its outbox relay cannot deliver (bus.outbox.SetAside).

It records the event in `outbox_set_aside`, ends the job as `failed` (never retried: a retry
would make the same message again) with an error its owner can read, counts it in
`dockyard_outbox_set_aside` (the alert) and logs a line naming the job. Doing it all again for
the same event changes nothing, so a relay that crashed half-way simply repeats it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from dockyard.core import Command, FailUndeliverable
from dockyard.core.events import type_name
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.store.ports import Position, RecordedEvent
from dockyard.store.set_aside import SetAsideLog

# Runs a command against a job: the scheduler's CommandBatcher.execute, or handler.execute.
Execute = Callable[[str, Command], Awaitable[object]]

log = logging.getLogger("dockyard.scheduler.undeliverable")


class FailUndeliverableJobs:
    """bus.outbox.SetAside for the scheduler (see the module's text)."""

    def __init__(self, records: SetAsideLog, execute: Execute, metrics: SchedulerMetrics):
        self._records = records
        self._execute = execute
        self._metrics = metrics

    async def set_aside(self, record: RecordedEvent, why: str) -> None:
        event = record.event
        kind = type_name(type(event))
        if await self._records.record(record, why):
            self._metrics.outbox_set_aside.labels(kind).inc()
            log.error(
                "outbox.set_aside job=%s event=%s type=%s why=%s",
                event.job_id,
                event.event_id,
                kind,
                why,
                extra={"event": "outbox.set_aside", "job": event.job_id, "type": kind},
            )
        await self._execute(event.job_id, FailUndeliverable(error=owner_error(kind, why)))

    async def ahead_of(self, position: Position) -> set[str]:
        return await self._records.ahead_of(position)


def owner_error(kind: str, why: str) -> str:
    """The job's `error`: what happened, in words for whoever submitted it."""
    return (
        f"Dockyard could not deliver this job's {kind} message ({why}); "
        "the job was stopped and will not be retried"
    )
