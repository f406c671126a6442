"""When the next sweep starts: every `DOCKYARD_JANITOR_INTERVAL_S`, or on a 5-field cron.

Pure: given the last sweep's start and now, the next start. An interval counts from the start
of the previous sweep (a sweep longer than the interval is followed at once, never
overlapped); a cron fires at its next time after now, so a missed time is not made up twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from croniter import croniter

from dockyard.janitor.config import JanitorConfig, valid_cron


class Schedule(Protocol):
    def next_start(self, last_start: datetime | None, now: datetime) -> datetime:
        """When the next sweep should start (now or later)."""
        ...

    def period_s(self, now: datetime) -> float:
        """Roughly how long one turn lasts from now: how long a sweep may wait for the lock."""
        ...


class Every:
    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("the interval must be positive")
        self.interval = timedelta(seconds=interval_s)

    def next_start(self, last_start: datetime | None, now: datetime) -> datetime:
        if last_start is None:
            return now
        return max(now, last_start + self.interval)

    def period_s(self, now: datetime) -> float:
        return self.interval.total_seconds()


class Cron:
    def __init__(self, expr: str) -> None:
        if not valid_cron(expr):
            raise ValueError(f"{expr!r} is not a 5-field cron expression")
        self.expr = expr

    def next_start(self, last_start: datetime | None, now: datetime) -> datetime:
        following: datetime = croniter(self.expr, now).get_next(datetime)
        return following

    def period_s(self, now: datetime) -> float:
        first: datetime = croniter(self.expr, now).get_next(datetime)
        second: datetime = croniter(self.expr, first).get_next(datetime)
        return (second - first).total_seconds()


def schedule_for(config: JanitorConfig) -> Schedule:
    """The cron when one is set, else the interval."""
    return Cron(config.cron) if config.cron else Every(config.interval_s)
