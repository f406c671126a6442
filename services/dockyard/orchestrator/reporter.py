"""Reports to the scheduler on the REPORTS stream: stored before `send` returns, exactly once,
batched under load.

Each report's id is derived from what it says, not drawn at random, and its Nats-Msg-Id is that
id under this reporter's nonce (`protocol.msg_id_of`: nobody else can send a message under it
first and have the real one dropped), so the same fact retried after a timeout is stored once
by JetStream; sent again after a restart it is stored again, and the scheduler's fold ignores
it.

Every report names this orchestrator and goes on its own subject: the scheduler takes a
report only from the orchestrator it names, and a start or exit only from the one holding
the attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import msgspec
from msgspec.structs import replace
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
    ReportUsage,
)
from dockyard.orchestrator.retrying import until_stored
from dockyard.telemetry import tracing

# Reports in one message at most: a few hundred bytes each, far below the payload limit.
MAX_BATCH: Final = 256


def utc_now() -> datetime:
    return datetime.now(UTC)


def report_id(job_id: str, command: ReportCommand) -> str:
    """One id per fact: an attempt starts once, ends once, records each resource once."""
    match command:
        case ReportStarted(attempt=attempt):
            return f"{job_id}:{attempt}:started"
        case ReportExit(attempt=attempt):
            return f"{job_id}:{attempt}:exit"
        case ReportUsage(attempt=attempt):
            # The same figures are the same fact; each new sample a new one.
            figures = hashlib.blake2b(msgspec.json.encode(command), digest_size=8).hexdigest()
            return f"{job_id}:{attempt}:usage:{figures}"
        case RecordResource(attempt=attempt, kind=kind, name=name):
            return f"{job_id}:{attempt}:intend:{kind}:{name}"
        case ReleaseResource(attempt=attempt, kind=kind, name=name):
            return f"{job_id}:{attempt}:release:{kind}:{name}"
        case MarkOrchestratorLost(attempt=attempt, orchestrator=orchestrator):
            return f"{job_id}:{attempt}:lost:{orchestrator}"


class Reporter:
    """Sends reports; each `send` returns once JetStream has stored the report.

    Reports sent while an earlier publish waits for its ack go together in the next message
    (a ReportBatch on this orchestrator's batch subject): idle, one report is one message at
    once; busy, one fsync stores many. One publish at a time keeps them in the order sent.
    """

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        *,
        orchestrator: str,
        clock: Callable[[], datetime] = utc_now,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._nc = nc
        self._js = js
        self._orchestrator = orchestrator
        self._subject = names.report_batch_subject(orchestrator)
        self._nonce = protocol.new_nonce()
        self._clock = clock
        self._max_batch = max_batch
        self._waiting: list[tuple[protocol.Report, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.messages = 0

    async def send(self, job_id: str, command: ReportCommand) -> None:
        """Store the report, waiting through NATS outages; BusRejected if JetStream refuses."""
        if isinstance(command, ReportExit | ReleaseResource) and command.orchestrator is None:
            command = replace(command, orchestrator=self._orchestrator)
        report = protocol.Report(
            report_id=report_id(job_id, command),
            job_id=job_id,
            command=command,
            sent_at=self._clock(),
            meta=tracing.current_metadata(),
        )
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stored.add_done_callback(_retrieved)  # its sender may have been cancelled meanwhile
        self._waiting.append((report, stored))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._publish_waiting(), name="reporter")
        # Shielded: a cancelled sender's report still goes (it is a fact), and must not
        # cancel the publish the others in its batch wait for.
        await asyncio.shield(stored)
        self.sent += 1

    async def _publish_waiting(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: len(batch)]
            try:
                await self._publish([report for report, _ in batch])
            except asyncio.CancelledError:
                for _, stored in [*batch, *self._waiting]:
                    stored.cancel()
                self._waiting.clear()
                raise
            except Exception as exc:  # BusRejected, or the connection closed for good
                for _, stored in batch:
                    if not stored.done():
                        stored.set_exception(exc)
                continue
            for _, stored in batch:
                if not stored.done():
                    stored.set_result(None)

    async def _publish(self, reports: list[protocol.Report]) -> None:
        payload = protocol.encode_report_batch(protocol.ReportBatch(reports=reports))
        msg_id = protocol.msg_id_of(self._nonce, batch_id(reports))

        async def once() -> object:
            return await publish(
                self._js, self._subject, payload, msg_id=msg_id, stream=names.REPORTS_STREAM
            )

        await until_stored(self._nc, once, f"reports {msg_id}")
        self.messages += 1


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def batch_id(reports: list[protocol.Report]) -> str:
    """The batch's Nats-Msg-Id, from its reports' ids: the same batch retried is stored once
    (a fact sent again in another batch is stored again, and the scheduler ignores it)."""
    if len(reports) == 1:
        return reports[0].report_id
    digest = hashlib.blake2b(digest_size=16)
    for report in reports:
        digest.update(report.report_id.encode())
        digest.update(b"\n")
    return f"batch:{digest.hexdigest()}"
