"""The scheduler's Prometheus metrics, in a registry of its own (tests run many apps).

Queue labels are the queues the operator named (DOCKYARD_QUEUES) and `other` for the rest:
a tenant may submit to any queue name, and each new one must not add series for the life of
the process (security review F15).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dockyard.core.events import Event, type_name
from dockyard.core.state import Job
from dockyard.store.ports import EventStore, PendingAppend, Position, RecordedEvent

OTHER_QUEUE: Final = "other"


class SchedulerMetrics:
    def __init__(self, queues: Iterable[str] = ("default",)) -> None:
        self.queues = frozenset(queues)
        self.registry = CollectorRegistry()
        self.jobs_submitted = Counter(
            "dockyard_jobs_submitted",
            "Jobs accepted by the API, by queue (a queue not in DOCKYARD_QUEUES: other)",
            ["queue"],
            registry=self.registry,
        )
        self.jobs_by_status = Gauge(
            "dockyard_jobs",
            "Jobs by status (from the read model; finished ones counted every 5 minutes at most)",
            ["status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "dockyard_queue_depth",
            "Jobs queued and not yet claimed, by queue (a queue not in DOCKYARD_QUEUES: other)",
            ["queue"],
            registry=self.registry,
        )
        self.events_appended = Counter(
            "dockyard_events_appended",
            "Events appended by this scheduler",
            ["type"],
            registry=self.registry,
        )
        self.outbox_set_aside = Counter(
            "dockyard_outbox_set_aside",
            "Events the outbox relay could not deliver and set aside (alert on any increase)",
            ["type"],
            registry=self.registry,
        )
        self.senders_refused = Counter(
            "dockyard_senders_refused",
            "Claims and reports refused because they came on another orchestrator's subject "
            "than the one they name (a forgery, or a bug): by kind, claim or report",
            ["kind"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "dockyard_http_auth_failures",
            "Requests refused for a missing or invalid token (401); alert on a surge",
            registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "dockyard_dispatch_latency_seconds",
            "From queued to claimed",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

    def queue_label(self, queue: str) -> str:
        return queue if queue in self.queues else OTHER_QUEUE

    def submitted(self, queue: str) -> None:
        self.jobs_submitted.labels(self.queue_label(queue)).inc()

    def set_queue_depths(self, depths: Iterable[tuple[str, int]]) -> None:
        """Queued jobs per queue, those of unnamed queues summed under `other`."""
        summed: dict[str, int] = {}
        for queue, count in depths:
            label = self.queue_label(queue)
            summed[label] = summed.get(label, 0) + count
        self.queue_depth.clear()
        for label, count in summed.items():
            self.queue_depth.labels(label).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountingStore:
    """An EventStore that counts what it appends, by event type, for /metrics."""

    def __init__(self, inner: EventStore, metrics: SchedulerMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def append(
        self, job_id: str, expected_version: int, events: Sequence[Event], view: Job | None = None
    ) -> int:
        version = await self.inner.append(job_id, expected_version, events, view)
        for event in events:
            self.metrics.events_appended.labels(type_name(type(event))).inc()
        return version

    async def load(self, job_id: str) -> list[RecordedEvent]:
        return await self.inner.load(job_id)

    async def append_many(self, appends: Sequence[PendingAppend]) -> None:
        await self.inner.append_many(appends)
        for append in appends:
            for event in append.events:
                self.metrics.events_appended.labels(type_name(type(event))).inc()

    async def load_many(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        return await self.inner.load_many(job_ids)

    async def read_all(self, after: Position, limit: int = 1000) -> list[RecordedEvent]:
        return await self.inner.read_all(after, limit)

    async def load_checkpoint(self, name: str) -> Position:
        return await self.inner.load_checkpoint(name)

    async def save_checkpoint(self, name: str, position: Position) -> None:
        await self.inner.save_checkpoint(name, position)

    async def wait_for_events(self, timeout: float) -> bool:  # noqa: ASYNC109
        return await self.inner.wait_for_events(timeout)

    def events_pending(self) -> bool:
        return self.inner.events_pending()
