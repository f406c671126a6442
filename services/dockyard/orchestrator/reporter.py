"""Reports to the scheduler on the REPORTS stream: stored before `send` returns, exactly once.

Each report's id (its Nats-Msg-Id) is derived from what it says, not drawn at random, so the
same fact sent twice - retried after a timeout, or again by this orchestrator after a restart -
is stored once by JetStream, and the scheduler's fold ignores it anyway if it comes later.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus import names, protocol
from dockyard.bus.protocol import ReportCommand
from dockyard.bus.publish import publish
from dockyard.core.commands import (
    MarkOrchestratorLost,
    RecordResource,
    ReleaseResource,
    ReportExit,
    ReportStarted,
)
from dockyard.orchestrator.retrying import until_stored
from dockyard.telemetry import tracing


def utc_now() -> datetime:
    return datetime.now(UTC)


def report_id(job_id: str, command: ReportCommand) -> str:
    """One id per fact: an attempt starts once, ends once, records each resource once."""
    match command:
        case ReportStarted(attempt=attempt):
            return f"{job_id}:{attempt}:started"
        case ReportExit(attempt=attempt):
            return f"{job_id}:{attempt}:exit"
        case RecordResource(attempt=attempt, kind=kind, name=name):
            return f"{job_id}:{attempt}:intend:{kind}:{name}"
        case ReleaseResource(attempt=attempt, kind=kind, name=name):
            return f"{job_id}:{attempt}:release:{kind}:{name}"
        case MarkOrchestratorLost(attempt=attempt, orchestrator=orchestrator):
            return f"{job_id}:{attempt}:lost:{orchestrator}"


class Reporter:
    """Sends reports; each `send` returns once JetStream has stored the report."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._nc = nc
        self._js = js
        self._clock = clock
        self.sent = 0

    async def send(self, job_id: str, command: ReportCommand) -> None:
        """Store the report, waiting through NATS outages; BusRejected if JetStream refuses."""
        rid = report_id(job_id, command)
        report = protocol.Report(
            report_id=rid,
            job_id=job_id,
            command=command,
            sent_at=self._clock(),
            meta=tracing.current_metadata(),
        )
        payload = protocol.encode(report)
        subject = names.report_subject(job_id)

        async def once() -> object:
            return await publish(
                self._js, subject, payload, msg_id=rid, stream=names.REPORTS_STREAM
            )

        await until_stored(self._nc, once, f"report {rid}")
        self.sent += 1
