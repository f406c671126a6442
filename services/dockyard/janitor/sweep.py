"""One sweep: observe, plan, then carry out each step on its own, and say what happened.

A step that fails (its source unreachable, an unexpected error) is reported and the sweep
goes on with the next; an action that fails is reported and its step goes on, except when
the source itself is unreachable (the rest of the step would only wait for it too): what is
not done now is planned again by the next sweep. Every action is an event appended with the
expected version, or an idempotent removal, so a sweep repeated, overlapped or cut short
doubles nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from dockyard.bus.errors import BusUnavailable
from dockyard.core.errors import Rejected
from dockyard.janitor.act import Executor
from dockyard.janitor.config import JanitorConfig
from dockyard.janitor.lease import LockLost, SweepLock
from dockyard.janitor.metrics import JanitorMetrics
from dockyard.janitor.observe import Observer, Sources
from dockyard.janitor.plan import STEPS, Action, Policy, RemoveResource, Step, plan
from dockyard.janitor.report import StepFailure, SweepReport, result_of
from dockyard.process.cancelling import to_completion
from dockyard.runtime.ports import RuntimeUnavailable
from dockyard.store.ports import EventStore, StoreUnavailable

log = logging.getLogger("dockyard.janitor")

Clock = Callable[[], datetime]

# Errors that mean "this source is down": the rest of the step is left to the next sweep.
_SOURCE_DOWN = (RuntimeUnavailable, StoreUnavailable, BusUnavailable)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Janitor:
    """Sweeps with the given sources; `turn` takes the lock first, `sweep` assumes it is held."""

    def __init__(
        self,
        sources: Sources,
        store: EventStore,
        config: JanitorConfig,
        *,
        metrics: JanitorMetrics | None = None,
        lock: SweepLock | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.sources = sources
        self.store = store
        self.config = config
        self.metrics = metrics or JanitorMetrics()
        self.lock = lock
        self.clock = clock
        self.policy = Policy(
            grace_s=config.grace_s,
            stuck_margin_s=config.stuck_margin_s,
            starting_timeout_s=config.starting_timeout_s,
            reoffer_after_s=config.reoffer_after_s,
        )
        self.observer = Observer(sources, config, self.policy)
        self.executor = Executor(sources, store, config, self.metrics, clock)

    async def turn(self, wait_s: float) -> SweepReport:
        """Wait up to `wait_s` for the lock, sweep, give the lock back."""
        started = self.clock()
        if self.lock is None:
            return await self.sweep()
        try:
            acquired = await self.lock.acquire(wait_s)
        except StoreUnavailable as exc:
            report = SweepReport(started_at=started, ended_at=self.clock())
            report.failures.append(StepFailure("lock", str(exc)))
            self._account(report)
            return report
        if not acquired:
            report = SweepReport(
                started_at=started,
                ended_at=self.clock(),
                skipped=f"another janitor was still sweeping after {wait_s:g} s",
            )
            self._account(report)
            return report
        try:
            return await self.sweep()
        finally:
            await to_completion(self.lock.release())  # bounded: its unlock has a timeout

    async def sweep(self, *, dry_run: bool = False) -> SweepReport:
        report = SweepReport(started_at=self.clock(), dry_run=dry_run)
        clock = time.monotonic()
        try:
            await self._sweep(report)
        finally:
            report.ended_at = self.clock()
            if not dry_run:
                self.metrics.sweep_duration.observe(time.monotonic() - clock)
            self._account(report)
        return report

    async def _sweep(self, report: SweepReport) -> None:
        try:
            world = await self.observer.observe(report.started_at, report.failures)
        except StoreUnavailable as exc:
            report.failures.append(StepFailure("observe.database", str(exc)))
            return
        actions = plan(world, self.policy)
        if report.dry_run:
            report.actions += [result_of(a, "planned") for a in actions]
            await self._step(report, "retention", self.executor.retention(report, dry_run=True))
            return
        for step in STEPS:
            if not await self._still_ours(report):
                return
            todo = [a for a in actions if a.step == step]
            if todo:
                await self._step(report, step, self._run_step(report, step, todo))
        if await self._still_ours(report):
            await self._step(report, "retention", self.executor.retention(report, dry_run=False))
        self.observer.forget_settled(world)

    async def _still_ours(self, report: SweepReport) -> bool:
        if self.lock is None:
            return True
        try:
            await self.lock.check()
        except LockLost as exc:
            report.failures.append(StepFailure("lock", str(exc)))
            return False
        return True

    async def _step(self, report: SweepReport, step: str, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:  # one step's failure must not stop the others
            report.failures.append(StepFailure(step, f"{type(exc).__name__}: {exc}"))
            log.warning(
                "janitor.step_failed step=%s error=%s",
                step,
                exc,
                exc_info=not isinstance(exc, _SOURCE_DOWN),
                extra={"event": "janitor.step_failed", "step": step},
            )

    async def _run_step(self, report: SweepReport, step: Step, todo: Sequence[Action]) -> None:
        if step == "docker":
            # Containers first, then networks (whose containers must be gone).
            for kind in ("container", "network"):
                batch = [a for a in todo if isinstance(a, RemoveResource) and a.kind == kind]
                await self._concurrently(report, batch)
            return
        if step == "ledger":
            await self._concurrently(report, todo)
            return
        for action in todo:
            await self._act(report, action)

    async def _concurrently(self, report: SweepReport, todo: Sequence[Action]) -> None:
        slots = asyncio.Semaphore(self.config.docker_concurrency)

        async def one(action: Action) -> None:
            async with slots:
                await self._act(report, action)

        await asyncio.gather(*(one(a) for a in todo))

    async def _act(self, report: SweepReport, action: Action) -> None:
        down = next((f for f in report.failures if f.step == action.step), None)
        if down is not None:
            report.actions.append(result_of(action, "failed", "left for the next sweep"))
            return
        try:
            outcome = await self.executor.do(action)
        except Rejected as exc:  # the job moved on meanwhile: nothing left to do
            report.actions.append(result_of(action, "noop", exc.message))
        except _SOURCE_DOWN as exc:
            report.actions.append(result_of(action, "failed", str(exc)))
            report.failures.append(StepFailure(action.step, str(exc)))
        except Exception as exc:
            log.exception("janitor.action_failed %s", action.describe())
            report.actions.append(result_of(action, "failed", f"{type(exc).__name__}: {exc}"))
        else:
            report.actions.append(result_of(action, outcome))
        result = report.actions[-1]
        self.metrics.actions.labels(result.action, result.outcome).inc()
        log.info(
            "janitor.%s %s%s",
            result.outcome,
            result.what,
            f" error={result.error}" if result.error else "",
            extra={
                "event": f"janitor.{result.action}",
                "outcome": result.outcome,
                "job": result.job_id,
                "step": result.step,
            },
        )

    def _account(self, report: SweepReport) -> None:
        if report.dry_run:
            return
        for failure in report.failures:
            self.metrics.step_failures.labels(failure.step).inc()
        outcome = "skipped" if report.skipped else "ok" if report.ok else "partial"
        self.metrics.sweeps.labels(outcome).inc()
        if report.skipped is None:
            self.metrics.last_sweep.set((report.ended_at or report.started_at).timestamp())
        log.log(
            logging.INFO if report.ok or report.skipped else logging.WARNING,
            "janitor.swept outcome=%s duration_s=%.3f done=%d noop=%d failed=%d failures=%d",
            outcome,
            report.duration_s,
            report.count("done"),
            report.count("noop"),
            report.count("failed"),
            len(report.failures),
            extra={
                "event": "janitor.swept",
                "outcome": outcome,
                "duration_s": report.duration_s,
                "retention": report.retention,
                "failures": [f.step for f in report.failures],
            },
        )
