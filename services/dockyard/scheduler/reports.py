"""Recording reports: what orchestrators and the janitor say happened becomes events.

Duplicates are no-ops (decide gives no events), stale ones are refused by the core, logged and
acknowledged, and a stale attempt that still runs a container is told to stop. Reports of one
job are handled in order; different jobs in parallel.
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
from dockyard.core import RecordResource, Rejected, ReportStarted, StaleAttempt
from dockyard.handling.batching import CommandBatcher, Request, Result
from dockyard.handling.execute import execute
from dockyard.process.cancelling import raise_if_cancelled
from dockyard.store.ports import ConcurrencyError, EventStore, StoreUnavailable

log = logging.getLogger("dockyard.scheduler.reports")

BATCH = 256
RETRY_DELAY_S = 1.0


class Verdict(Enum):
    DONE = "done"  # recorded, or nothing to record: ack
    LATER = "later"  # the store could not answer: nak with a delay
    POISON = "poison"  # can never be recorded: term


async def record(store: EventStore, nc: NatsClient | None, report: protocol.Report) -> Verdict:
    """One report on its own (the consumer records its batches through `verdict`)."""
    try:
        result: Result = await execute(store, report.job_id, report.command, meta=report.meta)
    except Exception as error:
        result = error
    return await verdict(nc, report, result)


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
    ) -> None:
        self.nc = nc
        self.js = js
        self.store = store
        self.batcher = batcher or CommandBatcher(store)
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
                decoded.append((msg, protocol.decode_reports(msg.subject, msg.data)))
            except MessageDecodeError as error:
                log.error("report.poison error=%s", error, extra={"event": "report.poison"})
                await msg.term()
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
