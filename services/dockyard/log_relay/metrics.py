"""The log relay's Prometheus metrics, in a registry of its own (tests run many relays)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lines_persisted = Counter(
            "dockyard_log_lines_persisted", "Log lines written to PostgreSQL", registry=r
        )
        self.chunks_persisted = Counter(
            "dockyard_log_chunks_persisted", "Log chunks (rows) written", registry=r
        )
        self.duplicate_lines = Counter(
            "dockyard_log_duplicate_lines",
            "Lines delivered again and not written twice",
            registry=r,
        )
        self.poison = Counter(
            "dockyard_log_poison_messages", "Log messages that could not be read", registry=r
        )
        self.foreign_batches = Counter(
            "dockyard_log_batches_dropped",
            "Log batches dropped because they came on the subject of an orchestrator that "
            "does not hold their attempt (a forgery, or a bug), or late from an attempt a "
            "later one replaced",
            registry=r,
        )
        self.flush_seconds = Histogram(
            "dockyard_log_flush_seconds",
            "Time to write one flush of log chunks",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.rooms = Gauge("dockyard_log_rooms", "Jobs being followed live", registry=r)
        self.followers = Gauge(
            "dockyard_log_followers", "WebSocket clients following a log", registry=r
        )
        self.ring_bytes = Gauge(
            "dockyard_log_ring_bytes", "Recent lines held in memory for followers", registry=r
        )
        self.lines_sent = Counter(
            "dockyard_log_lines_sent", "Lines sent to WebSocket clients", registry=r
        )
        self.closed = Counter(
            "dockyard_log_ws_closed",
            "WebSocket connections closed, by close code",
            ["code"],
            registry=r,
        )
        self.auth_failures = Counter(
            "dockyard_http_auth_failures",
            "Requests refused for a missing or invalid token (401); alert on a surge",
            registry=r,
        )
        self.pending = Gauge(
            "dockyard_log_pending_batches",
            "Log batches waiting in JetStream for the relay",
            registry=r,
        )

    def persisted(self, seconds: float, *, lines: int, chunks: int, duplicate_lines: int) -> None:
        self.flush_seconds.observe(seconds)
        self.lines_persisted.inc(lines)
        self.chunks_persisted.inc(chunks)
        if duplicate_lines > 0:
            self.duplicate_lines.inc(duplicate_lines)

    def render(self) -> bytes:
        return generate_latest(self.registry)
