"""One attempt of one job, from a granted claim to its stored exit report, and its cleanup.

Order, and why: every resource is in the ledger before it exists; the job container's output
is attached before it starts; its timeout runs on the monotonic clock from its start; every
log line is stored before the exit report (a reader who sees the job finished finds every
line); the offer is acked only after the report; and whatever happens - an engine error,
a stop, a cancellation of this task - everything created is removed, and its removal recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from msgspec import Struct
from msgspec.structs import replace
from opentelemetry import trace

from dockyard.core.commands import PlannedResource, ReportExit, ReportStarted
from dockyard.core.events import NO_METADATA, Metadata
from dockyard.core.spec import JobSpec
from dockyard.core.usage import Limits
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.images import Images
from dockyard.orchestrator.joblog import JobLog
from dockyard.orchestrator.outcome import (
    Ran,
    StopRequest,
    exit_report,
    failed_report,
    not_started_report,
    outcome_of,
    stopped_note,
    with_usage,
)
from dockyard.orchestrator.ports import LogSinkPort, ReportSink
from dockyard.orchestrator.reporter import utc_now
from dockyard.orchestrator.resources import AttemptResources, ContainerKind
from dockyard.orchestrator.ticket import Ticket
from dockyard.orchestrator.usage_sampler import Final, UsageSampler
from dockyard.process.cancelling import cancel_and_wait, to_completion
from dockyard.runtime.hardening import plan_job
from dockyard.runtime.ports import (
    ContainerPlan,
    ContainerRuntime,
    ContainerRuntimeError,
    ExitStatus,
    ImagePullFailed,
    NotFound,
    RuntimeUnavailable,
)
from dockyard.sealing import KeyRing, SealError, job_scope, open_spec
from dockyard.telemetry import tracing

log = logging.getLogger("dockyard.orchestrator.attempt")

# An image not there within this long is most likely being pulled: say so in the log.
PULL_NOTE_AFTER_S = 0.5
# The attach stream ends with the container; this only bounds an engine that forgets to.
READER_GRACE_S = 5.0
# After SIGKILL the engine reports the exit at once; past this it is not answering.
WAIT_AFTER_STOP_S = 30.0


class Claim(Struct, frozen=True, kw_only=True):
    """A granted claim: what to run, and the seq its log continues after; `meta` is the
    claim's trace context (the claim answer's), which the attempt's spans continue."""

    job_id: str
    attempt: int
    spec: JobSpec
    tenant: str | None = None
    log_seq: int = 0
    log_bytes: int = 0  # what earlier attempts wrote: the log cap counts the whole job
    recorded: list[PlannedResource] = []  # ledger intents the claim recorded
    meta: Metadata = NO_METADATA


def opened_spec(claim: Claim, ring: KeyRing | None) -> JobSpec | SealError:
    """The claim's spec with its secrets opened, or why they do not open (in words)."""
    try:
        return open_spec(claim.spec, ring, job_scope(claim.job_id))
    except SealError as error:
        log.warning(
            "orchestrator.secrets_unopened job=%s why=%s",
            claim.job_id,
            error,
            extra={"event": "orchestrator.secrets_unopened", "job": claim.job_id},
        )
        return error


@dataclass(frozen=True)
class AttemptContext:
    """What every attempt of one orchestrator shares."""

    config: OrchestratorConfig
    runtime: ContainerRuntime
    reports: ReportSink
    images: Images
    log_sink: Callable[[str, int], LogSinkPort]
    clock: Callable[[], datetime] = utc_now
    engine: str | None = None  # the Docker engine's ID, named in every ledger intent
    deployment: str | None = None  # the installation's id, a label on all it creates
    usage: UsageSampler | None = None  # follows each job container while it runs
    # Whether `egress` jobs may run here (the deny list is enforced, or turned off).
    egress_ok: Callable[[], bool] | None = None


class Attempt:
    def __init__(
        self,
        ctx: AttemptContext,
        claim: Claim,
        ticket: Ticket,
        *,
        on_engine_clean: Callable[[], None] | None = None,
    ) -> None:
        """`on_engine_clean` is called once every removal from the engine was done or tried
        (what failed stays in the ledger for the janitor; the removals may still be on their
        way to the ledger): a slot can be given out again."""
        self._ctx = ctx
        self.claim = claim
        self._ticket = ticket
        self._on_engine_clean = on_engine_clean
        self._stop: asyncio.Future[StopRequest] = asyncio.get_running_loop().create_future()
        self._log = JobLog(
            ctx.config,
            claim.spec,
            attempt=claim.attempt,
            after_seq=claim.log_seq,
            used_bytes=claim.log_bytes,
            clock=ctx.clock,
        )
        self.container_id: str | None = None
        self.report: ReportExit | None = None

    @property
    def job_id(self) -> str:
        return self.claim.job_id

    @property
    def attempt(self) -> int:
        return self.claim.attempt

    @property
    def ticket(self) -> Ticket:
        return self._ticket

    @property
    def log_seq(self) -> int:
        return self._log.last_seq

    @property
    def dropped_bytes(self) -> int:
        """Output of this attempt dropped past the log limit or while the bus was away."""
        return self._log.dropped_bytes

    def request_stop(self, stop: StopRequest) -> None:
        if not self._stop.done():
            self._stop.set_result(stop)

    async def run(self) -> ReportExit:
        """Run to the stored exit report; the engine is clean afterwards, even if cancelled."""
        claim = self.claim
        with tracing.job_span(
            tracing.ORCHESTRATOR,
            "dockyard.attempt",
            parent=claim.meta,
            attributes={
                tracing.JOB: claim.job_id,
                tracing.ATTEMPT: claim.attempt,
                tracing.ORCHESTRATOR_ID: self._ctx.config.orchestrator_id,
            },
        ) as span:
            report = await self._run()
            if span.is_recording():
                span.set_attributes(_report_attributes(report))
            return report

    async def _run(self) -> ReportExit:
        ctx, claim = self._ctx, self.claim
        # Made inside the attempt's span: its batches carry the span's trace context.
        sink = ctx.log_sink(claim.job_id, claim.attempt)
        resources = AttemptResources(
            ctx.runtime,
            ctx.reports,
            job_id=claim.job_id,
            attempt=claim.attempt,
            orchestrator=ctx.config.orchestrator_id,
            engine=ctx.engine,
            recorded=claim.recorded,
        )
        keepalive = asyncio.create_task(self._ticket.keep_alive())
        publisher = asyncio.create_task(self._log.publish(sink))
        acked: asyncio.Task[None] | None = None
        try:
            try:
                report = await self._execute(resources)
            except Exception as exc:  # a bug of ours must still end in a report and cleanup
                log.exception("orchestrator.attempt_failed job=%s", claim.job_id)
                self._log.note(f"Dockyard could not run this attempt: {exc}")
                report = failed_report(claim.attempt, exc)
            await self._log.end()
            await publisher
            with tracing.job_span(tracing.ORCHESTRATOR, "dockyard.report_exit"):
                await ctx.reports.send(claim.job_id, report)
            self.report = report
            # The offer's ack gates nothing: it overlaps the cleanup.
            acked = asyncio.create_task(self._ticket.ack())
            return report
        finally:
            if not publisher.done():
                sink.abandon()
            # All of it, even if this task is cancelled meanwhile (raised again after).
            await to_completion(self._clean_up([keepalive, publisher], resources, acked))

    async def _clean_up(
        self,
        helpers: list[asyncio.Task[None]],
        resources: AttemptResources,
        acked: asyncio.Task[None] | None,
    ) -> None:
        await cancel_and_wait(helpers)
        try:
            with tracing.job_span(tracing.ORCHESTRATOR, "dockyard.cleanup"):
                await resources.release(self._on_engine_clean)
        finally:
            if acked is not None:
                await acked

    def _egress_allowed(self) -> bool:
        return self._ctx.egress_ok is None or self._ctx.egress_ok()

    async def _execute(self, resources: AttemptResources) -> ReportExit:
        claim = self.claim
        # The secrets are opened here only, for this attempt's containers and its log's masking.
        spec = opened_spec(claim, self._ctx.config.secrets)
        if isinstance(spec, SealError):
            self._log.note(f"container error: {spec}")
            return failed_report(claim.attempt, ContainerRuntimeError(str(spec)))
        if spec.effective_network == "egress" and not self._egress_allowed():
            # Claimed from an offer that did not say egress (an earlier version's): never run
            # it unprotected; its retry is offered as egress and goes to one that enforces.
            why = "this orchestrator cannot enforce the egress deny list, so it did not run the job"
            self._log.note(f"container error: {why}")
            return failed_report(claim.attempt, ContainerRuntimeError(why))
        self._log.mask(spec)
        plan = plan_job(
            spec,
            job_id=claim.job_id,
            attempt=claim.attempt,
            orchestrator=self._ctx.config.orchestrator_id,
            deployment=self._ctx.deployment,
        )
        if claim.attempt > 1:
            self._log.note(f"attempt {claim.attempt} of {spec.retry.max_attempts}")
        try:
            images = [spec.image, *(sidecar.image for sidecar in spec.sidecars)]
            for ref in dict.fromkeys(images):
                if self._ctx.images.fresh(ref, spec.pull):
                    continue
                if not await self._or_stop(self._ensure_image(ref)):
                    return self._not_started()
            if self._stop.done():
                return self._not_started()
            if plan.network is not None:
                await resources.network(plan.network)
            for sidecar in plan.sidecars:
                sidecar_id = await self._create(resources, sidecar)
                await self._ctx.runtime.start(sidecar_id)
            if self._stop.done():
                return self._not_started()
            self.container_id = await self._create(resources, plan.job)
            return await self._run_container(self.container_id)
        except ContainerRuntimeError as exc:
            if isinstance(exc, ImagePullFailed):
                self._log.note(f"image pull failed: {exc.message}")
            else:
                self._log.note(f"container error: {exc.message}")
            return failed_report(claim.attempt, exc)

    def _not_started(self) -> ReportExit:
        stop = self._stop.result()
        self._log.note(f"{stop.detail} before the container started")
        return not_started_report(self.claim.attempt, stop)

    async def _ensure_image(self, ref: str) -> None:
        pull = self.claim.spec.pull
        with tracing.job_span(
            tracing.ORCHESTRATOR, "dockyard.image", attributes={"dockyard.image": ref}
        ):
            task = asyncio.create_task(self._ctx.images.ensure(ref, pull, job=self.claim.job_id))
            try:
                done, _ = await asyncio.wait({task}, timeout=PULL_NOTE_AFTER_S)
                if not done:
                    self._log.note(f"pulling image {ref}")
                await task
            finally:
                await cancel_and_wait([task])

    async def _create(self, resources: AttemptResources, plan: ContainerPlan) -> str:
        image = str(plan.config["Image"])
        kind: ContainerKind = "container" if plan.role == "job" else "sidecar"

        async def pull_again() -> None:
            # The image was removed since it was last seen: pull per policy, once.
            self._ctx.images.forget(image)
            await self._ctx.images.ensure(image, self.claim.spec.pull, job=self.claim.job_id)

        with tracing.job_span(
            tracing.ORCHESTRATOR,
            "dockyard.container.create",
            attributes={"dockyard.container.role": plan.role, "dockyard.container": plan.name},
        ):
            return await resources.container(plan, kind, on_missing_image=pull_again)

    async def _run_container(self, container_id: str) -> ReportExit:
        with tracing.job_span(
            tracing.ORCHESTRATOR,
            "dockyard.container.run",
            attributes={"dockyard.container.id": container_id},
        ) as span:
            report = await self._run_started(container_id)
            if report.started_at is not None:  # it ran: the exit vouches for its start
                report = replace(report, container_id=container_id)
            if span.is_recording():
                span.set_attributes(_report_attributes(report))
            return report

    async def _run_started(self, container_id: str) -> ReportExit:
        ctx, claim = self._ctx, self.claim
        loop = asyncio.get_running_loop()
        runtime = ctx.runtime
        reader: asyncio.Task[None] | None = None
        started: asyncio.Task[None] | None = None
        wait: asyncio.Task[ExitStatus] | None = None
        ran: Ran | None = None
        try:
            async with runtime.stream_output(container_id) as chunks:
                reader = asyncio.create_task(self._log.read(chunks))
                await runtime.start(container_id)
                began, started_at = loop.time(), ctx.clock()
                if ctx.usage is not None:
                    ctx.usage.watch(claim.job_id, claim.attempt, container_id, claim.spec)
                trace.get_current_span().add_event("started")
                started = asyncio.create_task(
                    ctx.reports.send(
                        claim.job_id,
                        ReportStarted(
                            attempt=claim.attempt,
                            container_id=container_id,
                            orchestrator=ctx.config.orchestrator_id,
                        ),
                    )
                )
                wait = asyncio.create_task(runtime.wait(container_id))
                stop = await self._supervise(wait, container_id, began + claim.spec.timeout_s)
                status = await wait
                final = self._final_usage(status.oom_killed)
                trace.get_current_span().add_event("exited")
                # To the microsecond: uvloop's clock counts whole milliseconds, and their
                # difference in floats can fall just short (0.15 read 0.1499999999942).
                duration_s = round(loop.time() - began, 6)
                ran = Ran(status=status, duration_s=duration_s, started_at=started_at)
                await started
                await self._finish_reading(reader)
            report = exit_report(claim.attempt, ran, stop, memory_mb=claim.spec.resources.memory_mb)
            if final is None:
                return report
            return with_usage(
                report,
                Limits.of_job(claim.spec),
                usage=final.usage,
                hits=final.limits_hit,
                disk_mb=final.disk_mb,
            )
        except ContainerRuntimeError as exc:
            self._log.note(f"container error: {exc.message}")
            if started is not None:
                await started  # the exit report must come after it
            return failed_report(claim.attempt, exc, ran)
        finally:
            self._final_usage(False)  # an error path: stop following it all the same
            await cancel_and_wait([reader, wait, started])

    def _final_usage(self, oom_killed: bool) -> Final | None:
        usage = self._ctx.usage
        return usage.finish(self.claim.job_id, oom_killed=oom_killed) if usage else None

    async def _supervise(
        self, wait: asyncio.Task[ExitStatus], container_id: str, deadline: float
    ) -> StopRequest | None:
        """Wait for the exit, the deadline or a stop request; on the latter two, stop it."""
        loop = asyncio.get_running_loop()
        remaining = max(0.0, deadline - loop.time())
        waits: set[asyncio.Future[Any]] = {wait, self._stop}
        done, _ = await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if wait in done:
            return None
        if self._stop.done():
            stop = self._stop.result()
        else:
            stop = StopRequest("timeout", f"timed out after {self.claim.spec.timeout_s:g} s")
        grace = self._ctx.config.stop_grace_s
        self._log.note(stopped_note(stop, grace))
        try:
            await self._ctx.runtime.stop(container_id, grace)
        except NotFound:
            pass  # it exited meanwhile
        except ContainerRuntimeError as exc:
            log.warning("orchestrator.stop_failed container=%s error=%s", container_id, exc)
        try:
            async with asyncio.timeout(grace + WAIT_AFTER_STOP_S):
                await asyncio.shield(wait)
        except TimeoutError:
            raise RuntimeUnavailable(
                f"container {container_id} did not exit after being stopped"
            ) from None
        return stop

    async def _finish_reading(self, reader: asyncio.Task[None]) -> None:
        try:
            async with asyncio.timeout(READER_GRACE_S):
                await asyncio.shield(reader)
        except TimeoutError:
            log.warning("orchestrator.output_not_closed job=%s", self.claim.job_id)

    async def _or_stop(self, aw: Coroutine[Any, Any, None]) -> bool:
        """Run `aw` unless a stop request comes first; False if it did (and `aw` is cancelled)."""
        task = asyncio.create_task(aw)
        try:
            waits: set[asyncio.Future[Any]] = {task, self._stop}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
                return True
            return False
        finally:
            await cancel_and_wait([task])


def _report_attributes(report: ReportExit) -> dict[str, str | int | float]:
    attributes: dict[str, str | int | float] = {"dockyard.outcome": outcome_of(report)}
    if report.exit_code is not None:
        attributes["dockyard.exit_code"] = report.exit_code
    return attributes
