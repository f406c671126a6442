"""What each running job uses: one task samples every job container, and reports coalesced.

Every `sample_s` the sampler reads each job container's cgroup files (runtime.cgroups: a few
small reads, no engine call) and the free space of its tmpfs mounts; every `report_s` at
most, a job whose figures changed gets one `ReportUsage`, sent without waiting (the reporter
batches it with whatever else goes), and never a second while its first is on its way. The
engine removes a container's cgroup as soon as it stops, so the final figures an exit
report carries are those of the last reading while it ran (and the kernel's peaks).
Where the cgroup files are not reachable, the engine's stats API stands in (slow: one call
in flight per job).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from msgspec.structs import replace

from dockyard.core.commands import ReportUsage
from dockyard.core.spec import JobSpec
from dockyard.core.usage import Counters, Limits, Usage, disk_hit, limits_hit, merged, usage_of
from dockyard.orchestrator.ports import ReportSink
from dockyard.process.cancelling import cancel_and_wait
from dockyard.runtime import cgroups
from dockyard.runtime.mount_space import space
from dockyard.runtime.ports import ContainerRuntime, ContainerRuntimeError

log = logging.getLogger("dockyard.orchestrator.usage")


@dataclass(frozen=True)
class Final:
    """An attempt's last figures, for its exit report."""

    usage: Usage
    limits_hit: tuple[str, ...]
    disk_mb: dict[str, int]


@dataclass
class _Watch:
    job_id: str
    attempt: int
    container_id: str
    limits: Limits
    mounts: tuple[str, ...]
    cgroup: cgroups.Cgroup | None = None
    located: bool = False  # looked for its cgroup once (found or not)
    usage: Usage = field(default_factory=Usage)
    hits: tuple[str, ...] = ()
    disk_mb: dict[str, int] = field(default_factory=dict)
    reported: tuple[Usage, tuple[str, ...]] | None = None
    reported_at: float = 0.0
    sending: asyncio.Task[None] | None = None
    asking: asyncio.Task[None] | None = None  # an engine stats call (no cgroup files)


class UsageSampler:
    def __init__(
        self,
        reports: ReportSink,
        runtime: ContainerRuntime,
        *,
        orchestrator: str,
        sample_s: float,
        report_s: float,
        clock: Callable[[], float] = time.monotonic,
        cgroup_root: Path = cgroups.ROOT,
    ) -> None:
        self._reports = reports
        self._runtime = runtime
        self._orchestrator = orchestrator
        self.sample_s = sample_s
        self.report_s = report_s
        self._clock = clock
        self._root = cgroup_root
        self._watches: dict[str, _Watch] = {}
        # Where the cgroup files show, a container without one has already stopped (a
        # trivial job often has by now): asking the engine would cost more than it tells.
        self._files_here = cgroups.reachable(cgroup_root)
        self.samples = 0  # readings taken, and the CPU they cost (for the benchmark)
        self.sample_cpu_s = 0.0

    @property
    def enabled(self) -> bool:
        return self.sample_s > 0

    def watch(self, job_id: str, attempt: int, container_id: str, spec: JobSpec) -> None:
        """Follow a job container that has just started."""
        if not self.enabled:
            return
        limits = Limits.of_job(spec)
        # Located and read at the next tick, not now: most trivial jobs are gone by then, and
        # a reading at their start would say nothing (this keeps the per-job cost down).
        self._watches[job_id] = _Watch(
            job_id=job_id,
            attempt=attempt,
            container_id=container_id,
            limits=limits,
            mounts=tuple(dict.fromkeys(("/tmp", spec.workdir))),
            reported_at=self._clock(),
        )

    def finish(self, job_id: str, *, oom_killed: bool = False) -> Final | None:
        """Stop following the job: its final figures (one more reading if the cgroup is
        still there), or None if it was never followed."""
        watch = self._watches.pop(job_id, None)
        if watch is None:
            return None
        self._sample(watch)
        for task in (watch.sending, watch.asking):
            if task is not None and not task.done():
                task.cancel()  # the exit report carries what it would have said
        usage, hits = watch.usage, watch.hits
        if oom_killed:
            # The kernel kills only at the limit: the peak was there, whatever the last
            # reading (a second before) saw.
            peak = max(usage.memory_peak_mb, float(watch.limits.memory_mb))
            usage, hits = replace(usage, memory_peak_mb=peak), merged(hits, ("memory",))
        return Final(usage=usage, limits_hit=hits, disk_mb=dict(watch.disk_mb))

    async def run(self) -> None:
        """Sample every job container every `sample_s` until cancelled."""
        if not self.enabled:
            return
        try:
            while True:
                await asyncio.sleep(self.sample_s)
                try:
                    self.tick()
                except Exception:  # a bug here must not end sampling for every job
                    log.exception("orchestrator.usage_tick_failed")
        finally:
            tasks = [t for w in self._watches.values() for t in (w.sending, w.asking)]
            await cancel_and_wait([t for t in tasks if t is not None])

    def tick(self) -> None:
        """One round: read every job container, and report those due."""
        now = self._clock()
        for watch in list(self._watches.values()):
            self._sample(watch)
            if now - watch.reported_at >= self.report_s:
                self._report(watch, now)

    def _sample(self, watch: _Watch) -> None:
        if not watch.located:
            watch.cgroup, watch.located = cgroups.locate(watch.container_id, self._root), True
        if watch.cgroup is None:
            if not self._files_here:
                self._ask_engine(watch)
            return
        began = time.process_time()
        counters = cgroups.read(watch.cgroup)
        if counters is not None:
            self._apply(watch, counters)
            self._check_disk(watch)
        self.samples += 1
        self.sample_cpu_s += time.process_time() - began

    def _apply(self, watch: _Watch, counters: Counters) -> None:
        watch.usage = usage_of(counters, watch.usage)
        watch.hits = merged(watch.hits, limits_hit(counters, watch.usage, watch.limits))

    def _check_disk(self, watch: _Watch) -> None:
        pid = cgroups.any_pid(watch.cgroup) if watch.cgroup is not None else None
        if pid is None:
            return
        for path in watch.mounts:
            found = space(pid, path)
            if found is not None and found.full:
                watch.hits = merged(watch.hits, (disk_hit(path),))
                watch.disk_mb[path] = found.size_mb

    def _ask_engine(self, watch: _Watch) -> None:
        if watch.asking is not None and not watch.asking.done():
            return

        async def ask() -> None:
            try:
                counters = await self._runtime.usage_stats(watch.container_id)
            except ContainerRuntimeError as exc:
                log.debug("orchestrator.usage_unread job=%s error=%s", watch.job_id, exc)
                return
            if counters is not None:
                self._apply(watch, counters)

        watch.asking = asyncio.create_task(ask(), name=f"usage {watch.job_id}")

    def _report(self, watch: _Watch, now: float) -> None:
        figures = (watch.usage, watch.hits)
        if figures == watch.reported or (watch.sending is not None and not watch.sending.done()):
            return
        watch.reported, watch.reported_at = figures, now
        command = ReportUsage(
            attempt=watch.attempt,
            orchestrator=self._orchestrator,
            usage=watch.usage,
            limits_hit=watch.hits,
        )
        watch.sending = asyncio.create_task(self._send(watch.job_id, command))

    async def _send(self, job_id: str, command: ReportUsage) -> None:
        try:
            await self._reports.send(job_id, command)
        except Exception as exc:  # a sample is not a fact worth retrying: the next one is
            log.warning("orchestrator.usage_not_sent job=%s error=%s", job_id, exc)
