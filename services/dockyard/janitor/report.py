"""What a sweep did (or, in a dry run, would do): for people, logs and tests."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from msgspec import Struct, field

from dockyard.janitor.plan import Action, Step

Outcome = Literal["done", "noop", "failed", "planned"]


class StepFailure(Struct, frozen=True):
    step: str
    error: str


class ActionResult(Struct, frozen=True, kw_only=True):
    step: Step
    action: str  # the action's tag
    job_id: str
    what: str  # for a person
    outcome: Outcome
    error: str | None = None


class SweepReport(Struct, kw_only=True):
    started_at: datetime
    ended_at: datetime | None = None
    dry_run: bool = False
    skipped: str | None = None  # why no sweep ran (another janitor's turn)
    actions: list[ActionResult] = field(default_factory=list)
    failures: list[StepFailure] = field(default_factory=list)
    # What retention removed (or, in a dry run, would remove).
    retention: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.skipped is None and not self.failures

    @property
    def duration_s(self) -> float:
        end = self.ended_at or self.started_at
        return (end - self.started_at).total_seconds()

    def count(self, outcome: Outcome, step: Step | None = None) -> int:
        return sum(1 for a in self.actions if a.outcome == outcome and step in (None, a.step))

    def lines(self) -> list[str]:
        """The report for a person: one line per action, failure and retention count."""
        if self.skipped:
            return [f"skipped: {self.skipped}"]
        verb = {"planned": "would", "done": "did", "noop": "no need to", "failed": "FAILED to"}
        out = [
            f"{verb[a.outcome]} {a.what}" + (f": {a.error}" if a.error else "")
            for a in self.actions
        ]
        prefix = "would remove" if self.dry_run else "removed"
        out += [f"{prefix} {n} {what}" for what, n in sorted(self.retention.items())]
        out += [f"step {f.step} failed: {f.error}" for f in self.failures]
        return out or ["nothing to do"]


def result_of(action: Action, outcome: Outcome, error: str | None = None) -> ActionResult:
    tag = type(action).__struct_config__.tag
    return ActionResult(
        step=action.step,
        action=str(tag),
        job_id=action.job_id,
        what=action.describe(),
        outcome=outcome,
        error=error,
    )
