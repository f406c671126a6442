"""After a restart under the same DOCKYARD_ORCHESTRATOR_ID: end what the previous process left.

Containers and networks carry the orchestrator's id, so the engine itself says what was left.
Each attempt found is fenced in the registry first (its offer, when redelivered, is acked and
never claimed again here), its exit is reported, then everything of it is removed.

Why stop instead of re-attaching to a container still running: its output since the crash was
read by nobody and is gone (job containers have no log driver), and the lines the dead process
held were never published, so a re-attached log would have a silent hole; its offer's
keepalive and its place in the heartbeat were lost too. Stopping and reporting
`orchestrator_lost` is one clear outcome, which the job's retry policy turns into a clean
rerun. A container that had already exited reports its real exit instead, so finished work is
not redone - if its log is whole: the attempt's final batch (which says it is final) is the
last this orchestrator published for the job. Without it, the previous process died between
the exit and the last lines being stored, those lines are gone, and a `succeeded` job with a
cut log would be a silent loss: that attempt is `orchestrator_lost` too. Report ids are per
attempt, and the scheduler ignores an exit for an attempt that has ended, so an exit the
previous process had already reported is not reported twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime

from msgspec.structs import replace

from dockyard.bus.names import (
    LABEL_ATTEMPT,
    LABEL_DEPLOYMENT,
    LABEL_JOB,
    LABEL_ORCHESTRATOR,
    LABEL_TIMEOUT,
)
from dockyard.core.commands import ReleaseResource
from dockyard.core.events import ResourceKind
from dockyard.core.log_line import LogLine
from dockyard.core.resource_names import container_name
from dockyard.orchestrator.outcome import recovered_report
from dockyard.orchestrator.ports import LastBatch, LogSinkPort, ReportSink
from dockyard.orchestrator.registry import Registry
from dockyard.orchestrator.reporter import utc_now
from dockyard.runtime.ports import ContainerRuntime, ContainerRuntimeError, NotFound, Resource

log = logging.getLogger("dockyard.orchestrator.recovery")


class Recovery:
    def __init__(
        self,
        *,
        runtime: ContainerRuntime,
        reports: ReportSink,
        registry: Registry,
        orchestrator: str,
        stop_grace_s: float,
        log_sink: Callable[[str, int], LogSinkPort],
        last_batch: Callable[[str], Awaitable[LastBatch]],
        clock: Callable[[], datetime] = utc_now,
        deployment: str | None = None,
        keep: Callable[[str, int], bool] | None = None,
    ) -> None:
        self._runtime = runtime
        # (job, attempt)s an attempt of this process still runs: after an engine outage,
        # those look after their own containers.
        self._keep = keep or (lambda job_id, attempt: False)
        # The installation's id: another installation's orchestrator of the same id, on the
        # same engine, keeps its containers (None: any, as before installations had ids).
        self._deployment = deployment
        self._reports = reports
        self._registry = registry
        self._orchestrator = orchestrator
        self._grace = stop_grace_s
        self._log_sink = log_sink
        self._last_batch = last_batch
        self._clock = clock

    async def run(self) -> list[tuple[str, int]]:
        """Recover everything labelled with this orchestrator (and installation); returns the
        (job, attempt)s. Only what the engine lists with these labels is removed, by its id:
        never anything named in a message."""
        mine: dict[str, str | None] = {LABEL_ORCHESTRATOR: self._orchestrator}
        if self._deployment is not None:
            mine[LABEL_DEPLOYMENT] = self._deployment
        found = await self._runtime.list_labelled(mine)
        attempts: dict[tuple[str, int], list[Resource]] = defaultdict(list)
        for resource in found:
            try:
                key = (resource.labels[LABEL_JOB], int(resource.labels[LABEL_ATTEMPT]))
            except (KeyError, ValueError):
                log.warning("orchestrator.recover_unlabelled name=%s", resource.name)
                continue
            if not self._keep(*key):
                attempts[key].append(resource)
        for job_id, attempt in attempts:
            self._registry.mark_done(job_id, attempt)  # before any offer is claimed again
        await asyncio.gather(
            *(self._recover(job, attempt, items) for (job, attempt), items in attempts.items())
        )
        return list(attempts)

    async def _recover(self, job_id: str, attempt: int, items: list[Resource]) -> None:
        job_name = container_name(job_id, attempt)
        job_container = next(
            (r for r in items if r.kind == "container" and r.name == job_name), None
        )
        exit_code: int | None = None
        ran_s: float | None = None
        oom_killed = was_running = False
        started_at: datetime | None = None
        if job_container is not None:
            try:
                state = await self._runtime.inspect(job_container.id)
                was_running, ran_s, started_at = state.running, state.ran_s, state.started_at
                if was_running:
                    await self._runtime.stop(job_container.id, self._grace)
                    state = await self._runtime.inspect(job_container.id)
                exit_code, oom_killed = state.exit_code, state.oom_killed
            except NotFound:
                pass  # removed meanwhile (the janitor): report what is known
        last = await self._last_batch(job_id)
        report = recovered_report(
            attempt,
            self._orchestrator,
            exit_code=exit_code,
            oom_killed=oom_killed,
            was_running=was_running,
            ran_s=ran_s,
            timeout_s=_timeout_s(job_container),
            log_whole=last.attempt == attempt and last.final,
        )
        if job_container is not None and started_at is not None:
            # Its start report may never have been stored (killed right after the start).
            report = replace(report, container_id=job_container.id, started_at=started_at)
        log.warning(
            "orchestrator.recovered job=%s attempt=%d was_running=%s exit_code=%s reason=%s",
            job_id,
            attempt,
            was_running,
            exit_code,
            report.reason,
            extra={"event": "orchestrator.recovered", "job": job_id, "attempt": attempt},
        )
        if exit_code is not None and report.reason == "orchestrator_lost" and report.error:
            await self._note(job_id, attempt, report.error, after_seq=last.seq)
        await self._reports.send(job_id, report)
        # Containers before their network (a network with endpoints cannot be removed).
        for resource in sorted(items, key=lambda r: r.kind == "network"):
            await self._remove(job_id, attempt, resource, job_name)

    async def _note(self, job_id: str, attempt: int, text: str, *, after_seq: int) -> None:
        """The log says why it ends here, numbered after the last line the stream holds."""
        sink = self._log_sink(job_id, attempt)
        line = LogLine(
            seq=after_seq + 1, stream="system", text=text, at=self._clock(), attempt=attempt
        )
        await sink.publish([line])
        await sink.flush()

    async def _remove(self, job_id: str, attempt: int, resource: Resource, job_name: str) -> None:
        try:
            if resource.kind == "network":
                how = await self._runtime.remove_network(resource.id)
            else:
                how = await self._runtime.remove(resource.id)
        except ContainerRuntimeError as exc:
            log.warning("orchestrator.recover_remove_failed name=%s error=%s", resource.name, exc)
            return
        kind: ResourceKind = "network"
        if resource.kind == "container":
            kind = "container" if resource.name == job_name else "sidecar"
        await self._reports.send(
            job_id, ReleaseResource(attempt=attempt, kind=kind, name=resource.name, how=how)
        )


def _timeout_s(container: Resource | None) -> float | None:
    """The job's timeout, from the label the container was made with (None: not known)."""
    if container is None:
        return None
    try:
        return float(container.labels[LABEL_TIMEOUT])
    except (KeyError, ValueError):
        return None
