"""The scheduler's Prometheus metrics, in a registry of its own (tests run many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_submitted = Counter(
            "dockyard_jobs_submitted",
            "Jobs accepted by the API",
            ["queue"],
            registry=self.registry,
        )
        self.jobs_by_status = Gauge(
            "dockyard_jobs",
            "Jobs by status (from the read model)",
            ["status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "dockyard_queue_depth",
            "Jobs queued and not yet claimed",
            ["queue"],
            registry=self.registry,
        )
        self.events_appended = Counter(
            "dockyard_events_appended",
            "Events appended by this scheduler",
            ["type"],
            registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "dockyard_dispatch_latency_seconds",
            "From queued to claimed",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

    def submitted(self, queue: str) -> None:
        self.jobs_submitted.labels(queue).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
