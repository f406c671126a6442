"""Recording reports: what orchestrators and the janitor say happened becomes events.

Duplicates are no-ops (decide gives no events), stale ones are refused by the core, logged and
acknowledged, and a stale attempt that still runs a container is told to stop. Reports of one
job are handled in order; different jobs in parallel.

The sender of a report is the subject it came on (`report_batch_subject(orchestrator)`, which
NATS lets only that orchestrator publish): a report naming anyone else, or no one, is dropped
before it is recorded, and decide refuses a start or exit from another orchestrator than the
one holding the attempt. An orchestrator never declares another lost: only the janitor does,
and it appends that verdict to the event store itself.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError

from dockyard.bus import names, protocol
from dockyard.bus.errors import BusUnavailable, MessageDecodeError
from dockyard.core import (
    MarkOrchestratorLost,
    RecordResource,
    Rejected,
    ReportStarted,
    StaleAttempt,
)
from dockyard.handling.batching import CommandBatcher, Request, Result
from dockyard.process.cancelling import raise_if_cancelled
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.store.ports import ConcurrencyError, EventStore, StoreUnavailable

log = logging.getLogger("dockyard.scheduler.reports")

BATCH = 256
RETRY_DELAY_S = 1.0


class Verdict(Enum):
    DONE = "done"  # recorded, or nothing to record: ack
    LATER = "later"  # the store could not answer: nak with a delay
    POISON = "poison"  # can never be recorded: term


def unbound(subject: str, report: protocol.Report) -> str | None:
    """Why `report` cannot be taken as its sender's word; None if it can."""
    sender = names.report_sender(subject)
    if sender is None:
        return f"it came on {subject}, which names no orchestrator"
    command = report.command
    if isinstance(command, MarkOrchestratorLost):
        return "only the janitor declares an orchestrator lost"
    if command.orchestrator is None:
        return "it names no orchestrator (an earlier version's report)"
    if names.subject_token(command.orchestrator) != sender:
        return f"it names orchestrator {command.orchestrator} but came on {subject}"
    return None


async def verdict(nc: NatsClient | None, report: protocol.Report, result: Result) -> Verdict:
    """What the outcome of recording `report` means for its message."""
    match result:
        case StaleAttempt() as stale:
            log.warning("report.stale %s", stale.message, extra={"event": "report.stale"})
            await _stop_stale(nc, report, stale)
            return Verdict.DONE
        case Rejected() as refused:
            log.warning("report.refused %s", refused.message, extra={"event": "report.refused"})
            return Verdict.DONE
        case StoreUnavailable() | ConcurrencyError():
            log.warning("report.retry error=%s", result, extra={"event": "report.retry"})
            return Verdict.LATER
        case Exception():
            log.error(
                "report.failed job=%s error=%r",
                report.job_id,
                result,
                exc_info=result,
                extra={"event": "report.failed"},
            )
            return Verdict.LATER
    return Verdict.DONE


async def _stop_stale(nc: NatsClient | None, report: protocol.Report, stale: StaleAttempt) -> None:
    """A container of an attempt that lost must not run on: ask its orchestrator to stop it."""
    command = report.command
    if nc is None or not isinstance(command, ReportStarted | RecordResource):
        return
    order = protocol.StopOrder(
        job_id=report.job_id,
        attempt=command.attempt,
        reason=f"attempt {command.attempt} is stale (the job is at attempt {stale.current})",
    )
    try:
        await nc.publish(names.control_subject(command.orchestrator), protocol.encode(order))
    except Exception as error:  # best effort: the janitor removes what is left
        log.warning("report.stop_order_failed error=%s", error)


class ReportConsumer:
    """Pulls the REPORTS durable consumer and records each report."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        store: EventStore,
        batcher: CommandBatcher | None = None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.store = store
        self.batcher = batcher or CommandBatcher(store)
        self.metrics = metrics
        self._sub: JetStreamContext.PullSubscription | None = None

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            self._sub = await self.js.pull_subscribe_bind(
                names.REPORTS_DURABLE, stream=names.REPORTS_STREAM
            )
        return self._sub

    async def run(self) -> None:
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
            try:
                await self.run_once(timeout_s=5.0)
            except BusUnavailable:
                await asyncio.sleep(RETRY_DELAY_S)
            except Exception:  # unacked reports come back: the loop must live on
                log.exception("reports.fetch_failed", extra={"event": "reports.fetch_failed"})
                self._sub = None  # re-bind: the subscription may be what broke
                await asyncio.sleep(RETRY_DELAY_S)

    async def run_until_idle(self, idle_s: float = 0.2) -> int:
        """Record every report waiting now (for tests); returns how many were handled."""
        total = 0
        while handled := await self.run_once(timeout_s=idle_s):
            total += handled
        return total

    async def run_once(self, timeout_s: float) -> int:
        sub = await self._subscription()
        try:
            msgs = await sub.fetch(BATCH, timeout=timeout_s)
        except (FetchTimeoutError, TimeoutError):
            return 0
        decoded: list[tuple[Msg, list[protocol.Report]]] = []
        for msg in msgs:
            try:
                batch = protocol.decode_reports(msg.subject, msg.data)
            except MessageDecodeError as error:
                log.error("report.poison error=%s", error, extra={"event": "report.poison"})
                await msg.term()
                continue
            decoded.append((msg, [r for r in batch if self._from_its_sender(msg.subject, r)]))
        # In fetch order, so one job's reports are recorded in the order they were sent.
        reports = [r for _, batch in decoded for r in batch]
        results = iter(
            await self.batcher.execute_all([Request(r.job_id, r.command, r.meta) for r in reports])
        )
        for msg, batch in decoded:
            verdicts = [await verdict(self.nc, r, next(results)) for r in batch]
            if Verdict.LATER in verdicts:  # all again later: those recorded are no-ops then
                await msg.nak(delay=RETRY_DELAY_S)
            else:
                await msg.ack()
        return len(msgs)

    def _from_its_sender(self, subject: str, report: protocol.Report) -> bool:
        why = unbound(subject, report)
        if why is None:
            return True
        log.warning(
            "report.wrong_sender job=%s report=%s: dropped, %s",
            report.job_id,
            report.report_id,
            why,
            extra={"event": "report.wrong_sender", "job": report.job_id},
        )
        if self.metrics is not None:
            self.metrics.senders_refused.labels("report").inc()
        return False
