"""The janitor's Prometheus metrics, in a registry of its own (tests run several janitors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class JanitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.removed = Counter(
            "dockyard_janitor_removed",
            "What the janitor removed: container, network, ledger_entry (settled), "
            "log_lines, job_row",
            ["kind"],
            registry=self.registry,
        )
        self.foreign = Counter(
            "dockyard_janitor_foreign",
            "Ledger entries whose name the engine gave to something not theirs (other labels, "
            "or none): left alone, the entry settled as gone. Someone forged them, or reused "
            "a name",
            ["kind"],
            registry=self.registry,
        )
        self.actions = Counter(
            "dockyard_janitor_actions",
            "Planned actions by outcome (done, noop: someone else got there first, failed)",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.step_failures = Counter(
            "dockyard_janitor_step_failures",
            "Sweep steps that failed (the sweep went on with the others)",
            ["step"],
            registry=self.registry,
        )
        self.sweeps = Counter(
            "dockyard_janitor_sweeps",
            "Sweeps by outcome: ok, partial (a step failed), skipped (another janitor's turn)",
            ["outcome"],
            registry=self.registry,
        )
        self.sweep_duration = Histogram(
            "dockyard_janitor_sweep_duration_seconds",
            "How long a sweep took (lock held)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.last_sweep = Gauge(
            "dockyard_janitor_last_sweep_timestamp_seconds",
            "When the last sweep that ran ended (Unix time): alert when it stops moving",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
