"""The orchestrator's Prometheus metrics, and the optional port that serves them.

Off by default (DOCKYARD_METRICS_LISTEN unset): several orchestrators may share a host, and
each would need a port of its own. The registry is the orchestrator's own (tests run many).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dockyard.core.log_line import LogLine
from dockyard.core.usage import DISK_PREFIX, Usage
from dockyard.orchestrator.ports import LogSinkPort
from dockyard.web import health

log = logging.getLogger("dockyard.orchestrator.metrics")


class OrchestratorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("dockyard_orchestrator_jobs_running", "Attempts running", registry=r)
        self.started = Counter(
            "dockyard_orchestrator_jobs_started", "Attempts started (claims granted)", registry=r
        )
        self.finished = Counter(
            "dockyard_orchestrator_jobs_finished",
            "Attempts reported, by outcome: succeeded, or the failure's reason",
            ["outcome"],
            registry=r,
        )
        self.claim_seconds = Histogram(
            "dockyard_orchestrator_claim_seconds",
            "From a claim request to the scheduler's answer, by answer: granted, refused, "
            "unanswered",
            ["answer"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.claim_answers_rejected = Counter(
            "dockyard_orchestrator_claim_answers_rejected",
            "Claim answers not run, by why: unsigned, unknown_signer, bad_signature (not the "
            "scheduler's, or altered), mismatch (another claim's), invalid_spec",
            ["why"],
            registry=r,
        )
        self.log_lines = Counter(
            "dockyard_orchestrator_log_lines_published",
            "Log lines handed to the LOGS stream",
            registry=r,
        )
        self.log_dropped = Counter(
            "dockyard_orchestrator_log_dropped_bytes",
            "Job output dropped: past the log limit, or while NATS was away too long",
            registry=r,
        )
        self.nats_connected = Gauge(
            "dockyard_orchestrator_nats_connected", "1 while connected to NATS", registry=r
        )
        self.engine_up = Gauge(
            "dockyard_orchestrator_engine_up",
            "1 while its Docker engine answers; 0 while it does not (and nothing is claimed)",
            registry=r,
        )
        self.egress_enforced = Gauge(
            "dockyard_orchestrator_egress_enforced",
            "1 while its egress rules are in place (or DOCKYARD_EGRESS_DENY is none); 0 while "
            "they cannot be, and egress jobs are left for other orchestrators",
            registry=r,
        )

        self.job_cpu_seconds = Histogram(
            "dockyard_orchestrator_job_cpu_seconds",
            "CPU time one attempt used, by queue",
            ["queue"],
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
            registry=r,
        )
        self.job_memory_peak = Histogram(
            "dockyard_orchestrator_job_memory_peak_bytes",
            "Peak memory of one attempt (its tmpfs included), by queue",
            ["queue"],
            buckets=tuple(mb * 1024 * 1024 for mb in (8, 32, 64, 128, 256, 512, 1024, 4096)),
            registry=r,
        )
        self.limits_hit = Counter(
            "dockyard_orchestrator_limits_hit",
            "Attempts that reached a limit, by kind: memory, pids, cpu (throttled), disk",
            ["kind"],
            registry=r,
        )

    def observe_usage(self, queue: str, usage: Usage | None, hits: tuple[str, ...]) -> None:
        """An attempt's final usage, where one was read."""
        if usage is not None:
            self.job_cpu_seconds.labels(queue).observe(usage.cpu_s)
            self.job_memory_peak.labels(queue).observe(usage.memory_peak_mb * 1024 * 1024)
        for hit in hits:
            self.limits_hit.labels("disk" if hit.startswith(DISK_PREFIX) else hit).inc()

    def watch(self, *, running: Callable[[], int], nats_connected: Callable[[], bool]) -> None:
        """Read the gauges from the orchestrator at each scrape."""
        self.running.set_function(lambda: float(running()))
        self.nats_connected.set_function(lambda: 1.0 if nats_connected() else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountingLogSink:
    """A LogSinkPort that counts the lines it passes on."""

    def __init__(self, inner: LogSinkPort, lines: Counter) -> None:
        self._inner = inner
        self._lines = lines

    async def publish(self, lines: list[LogLine], *, last_seq: int | None = None) -> None:
        await self._inner.publish(lines, last_seq=last_seq)
        self._lines.inc(len(lines))

    async def flush(self) -> None:
        await self._inner.flush()

    def abandon(self) -> None:
        self._inner.abandon()


async def serve_metrics(
    metrics: OrchestratorMetrics,
    probes: Mapping[str, health.Probe],
    host: str,
    port: int,
    *,
    reasons: Mapping[str, health.Reason] | None = None,
) -> web.AppRunner:
    """`/metrics`, `/healthz` and `/readyz` (200 once every probe answers true) on host:port;
    a failing probe's `reasons` entry says why in the 503."""

    async def render() -> bytes:
        return metrics.render()

    app = web.Application()
    app.add_routes(health.routes(probes, render, reasons))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info(
        "orchestrator.metrics url=http://%s:%d/metrics",
        host,
        port,
        extra={"event": "orchestrator.metrics"},
    )
    return runner
