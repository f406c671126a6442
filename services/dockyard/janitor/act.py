"""Carrying out one planned action, and retention: each change an append with the expected
version (through `execute`) or an idempotent removal, so doing it twice doubles nothing."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from nats.js import JetStreamContext
from nats.js.api import PubAck

from dockyard.bus import names
from dockyard.bus.errors import BusError, BusUnavailable
from dockyard.bus.messages import WorkOffer, encode_work_offer
from dockyard.bus.publish import publish
from dockyard.bus.topology import restore_offer_subjects
from dockyard.core.commands import Command, MarkOrchestratorLost, ReleaseResource, ReportExit
from dockyard.core.events import Metadata, ReleaseHow
from dockyard.handling.execute import execute
from dockyard.janitor import queries
from dockyard.janitor.config import JanitorConfig
from dockyard.janitor.metrics import JanitorMetrics
from dockyard.janitor.observe import Sources, engine_scope
from dockyard.janitor.plan import (
    Action,
    EndStuck,
    MarkLost,
    Release,
    RemoveResource,
    Reoffer,
    SettleEntry,
    proves_ours,
)
from dockyard.janitor.report import Outcome, SweepReport
from dockyard.job_logs.retention import purge_finished_logs
from dockyard.runtime.ports import ContainerRuntime, NotFound, Resource, RuntimeUnavailable
from dockyard.runtime.ports import ResourceKind as EngineKind
from dockyard.store.ports import EventStore

log = logging.getLogger("dockyard.janitor.act")

# Events the janitor appends say so, for whoever reads a job's history.
JANITOR_META = Metadata(producer="janitor")


class Executor:
    def __init__(
        self,
        sources: Sources,
        store: EventStore,
        config: JanitorConfig,
        metrics: JanitorMetrics,
        clock: Callable[[], datetime],
    ) -> None:
        self.sources = sources
        self.store = store
        self.config = config
        self.metrics = metrics
        self.clock = clock
        # What an object must carry besides its job and attempt to be removed for the ledger.
        self.scope = engine_scope(config, sources.deployment)

    async def do(self, action: Action) -> Outcome:
        if isinstance(action, MarkLost):
            command: Command = MarkOrchestratorLost(
                attempt=action.attempt, orchestrator=action.orchestrator, silent_s=action.silent_s
            )
            return await self._command(action.job_id, command)
        if isinstance(action, EndStuck):
            command = ReportExit(
                attempt=action.attempt, exit_code=None, reason=action.reason, error=action.error
            )
            return await self._command(action.job_id, command)
        if isinstance(action, RemoveResource):
            return await self._remove(action)
        if isinstance(action, SettleEntry):
            return await self._settle(action)
        return await self._reoffer(action)

    async def _command(self, job_id: str, command: Command) -> Outcome:
        outcome = await execute(self.store, job_id, command, meta=JANITOR_META, clock=self.clock)
        return "done" if outcome.events else "noop"

    def _runtime(self) -> ContainerRuntime:
        runtime = self.sources.runtime
        if runtime is None:
            raise RuntimeUnavailable("this janitor has no Docker engine")
        return runtime

    async def _remove(self, action: RemoveResource) -> Outcome:
        runtime = self._runtime()
        if action.kind == "network":
            how = await runtime.remove_network(action.id)
        else:
            if action.running:
                with contextlib.suppress(NotFound):  # exited and removed meanwhile
                    await runtime.stop(action.id, self.config.stop_grace_s)
            how = await runtime.remove(action.id)
        if how == "removed":
            self.metrics.removed.labels(action.kind).inc()
        if action.release is not None:
            await self._release(action.job_id, action.release, how)
        return "done" if how == "removed" else "noop"

    async def _settle(self, action: SettleEntry) -> Outcome:
        """What carries the entry's name is removed, by its id, only if its labels prove it
        the attempt's: the name came over NATS, and may be anyone's."""
        runtime = self._runtime()
        entry = action.entry
        kind: EngineKind = "network" if entry.kind == "network" else "container"
        found = await runtime.inspect_named(kind, entry.name)
        how: ReleaseHow = "gone"
        if found is not None and proves_ours(
            found.labels, action.job_id, entry.attempt, self.scope
        ):
            how = await self._remove_found(runtime, found)
            if how == "removed":  # it was there after all (the listing missed it): removed now
                self.metrics.removed.labels(kind).inc()
        elif found is not None:
            self._not_ours(action, found)
        recorded = await self._release(action.job_id, entry, how)
        if recorded:
            self.metrics.removed.labels("ledger_entry").inc()
        return "done" if recorded else "noop"

    async def _remove_found(self, runtime: ContainerRuntime, found: Resource) -> ReleaseHow:
        """By id: if the name was taken again since it was inspected, the newcomer stays."""
        if found.kind == "network":
            return await runtime.remove_network(found.id)
        if found.running:
            with contextlib.suppress(NotFound):  # exited and removed meanwhile
                await runtime.stop(found.id, self.config.stop_grace_s)
        return await runtime.remove(found.id)

    def _not_ours(self, action: SettleEntry, found: Resource) -> None:
        """Left alone: the entry is settled as gone (nothing of the attempt's is there)."""
        entry = action.entry
        self.metrics.foreign.labels(found.kind).inc()
        log.warning(
            "janitor.ledger_not_ours the ledger of job %s names %s %r for attempt %d, but the "
            "%s of that name is not that attempt's (labels job=%r attempt=%r deployment=%r): "
            "left alone, the entry settled as gone",
            action.job_id,
            entry.kind,
            entry.name,
            entry.attempt,
            found.kind,
            found.labels.get(names.LABEL_JOB),
            found.labels.get(names.LABEL_ATTEMPT),
            found.labels.get(names.LABEL_DEPLOYMENT),
            extra={
                "event": "janitor.ledger_not_ours",
                "job": action.job_id,
                "resource": entry.name,
                "kind": entry.kind,
                "attempt": entry.attempt,
            },
        )

    async def _release(self, job_id: str, entry: Release, how: ReleaseHow) -> bool:
        command = ReleaseResource(attempt=entry.attempt, kind=entry.kind, name=entry.name, how=how)
        return await self._command(job_id, command) == "done"

    async def _reoffer(self, action: Reoffer) -> Outcome:
        js = self.sources.js
        if js is None:
            raise BusUnavailable("this janitor has no NATS connection")
        offer = WorkOffer(
            job_id=action.job_id,
            attempt=action.attempt,
            queue=action.queue,
            event_id=action.event_id,
            egress=action.egress,
        )

        async def offered() -> PubAck:
            return await publish(
                js,
                names.offer_subject(action.queue),
                encode_work_offer(offer),
                msg_id=names.offer_msg_id(action.job_id, action.attempt),
                stream=names.OFFERS_STREAM,
            )

        try:
            ack = await offered()
        except BusError:
            if not await self._offer_subjects_restored(js):
                raise
            ack = await offered()  # a service of an earlier version had taken them out
        return "noop" if ack.duplicate else "done"

    @staticmethod
    async def _offer_subjects_restored(js: JetStreamContext) -> bool:
        try:
            return await restore_offer_subjects(js)
        except BusError as exc:
            log.warning("janitor.offer_subjects_unchecked error=%s", exc)
            return False

    async def retention(self, report: SweepReport, *, dry_run: bool) -> None:
        """Past-retention log lines, then read-model rows (found through them) are removed."""
        pool = self.sources.pool
        now = report.started_at
        if self.config.log_retention_s > 0:
            before = now - timedelta(seconds=self.config.log_retention_s)
            if dry_run:
                report.retention["jobs' log lines"] = await queries.count_log_jobs(pool, before)
            else:
                purged = await purge_finished_logs(
                    pool, older_than=timedelta(seconds=self.config.log_retention_s), now=now
                )
                report.retention["log lines"] = purged.lines
                self.metrics.removed.labels("log_lines").inc(purged.lines)
        if self.config.job_retention_s > 0:
            before = now - timedelta(seconds=self.config.job_retention_s)
            if dry_run:
                report.retention["job rows"] = await queries.count_job_rows(pool, before)
            else:
                rows = await queries.purge_job_rows(pool, before)
                report.retention["job rows"] = rows
                self.metrics.removed.labels("job_row").inc(rows)
