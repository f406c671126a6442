"""Given/when/then helpers for the pure core: deterministic ids and clock, no I/O."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from dockyard.core import Command, Context, Event, Job, decide, fold
from dockyard.core.spec import JobSpec, RetryPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOB = "0190f0c2-0000-7000-8000-000000000001"


class Ids:
    def __init__(self, prefix: str = "e") -> None:
        self._n: Iterator[int] = itertools.count(1)
        self.prefix = prefix

    def __call__(self) -> str:
        return f"{self.prefix}{next(self._n)}"


def spec(**kw: object) -> JobSpec:
    retry = kw.pop("retry", None)
    s = JobSpec(image="busybox", **kw)  # type: ignore[arg-type]
    if isinstance(retry, RetryPolicy):
        from msgspec.structs import replace

        s = replace(s, retry=retry)
    return s


class Scenario:
    """A job's history built by running commands through decide, as the services will."""

    def __init__(self, job_id: str = JOB) -> None:
        self.job_id = job_id
        self.ids = Ids()
        self.now = T0
        self.events: list[Event] = []

    @property
    def job(self) -> Job | None:
        return fold(self.events)

    def at(self, seconds: float) -> Scenario:
        self.now = T0 + timedelta(seconds=seconds)
        return self

    def when(self, command: Command) -> list[Event]:
        ctx = Context(job_id=self.job_id, now=self.now)
        new = decide(self.job, command, ctx, self.ids)
        self.events.extend(new)
        return new

    def given(self, *commands: Command) -> Scenario:
        for command in commands:
            self.when(command)
        return self


def types(events: list[Event]) -> list[str]:
    return [type(e).__struct_config__.tag for e in events]  # type: ignore[misc]
