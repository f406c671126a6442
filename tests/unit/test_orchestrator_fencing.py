"""StaleWatch: an attempt given away while its orchestrator was cut off is stopped once a
later attempt of its job is claimed, and only then; the fault injected is a failed heartbeat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pytest

from dockyard.bus.errors import BusUnavailable
from dockyard.orchestrator.fencing import StaleWatch
from dockyard.orchestrator.outcome import StopRequest
from dockyard.orchestrator.registry import Registry
from dockyard.orchestrator.ticket import Ticket


@dataclass
class Running:
    job_id: str
    attempt: int
    ticket: Ticket = field(default_factory=lambda: cast(Ticket, None))
    log_seq: int = 0
    stops: list[StopRequest] = field(default_factory=list)

    def request_stop(self, stop: StopRequest) -> None:
        self.stops.append(stop)


def watch(claimed: dict[str, int], *, down: bool = False) -> tuple[Registry, StaleWatch]:
    registry = Registry()

    async def superseded(job_id: str, attempt: int) -> bool:
        if down:
            raise BusUnavailable("no answer")
        return claimed.get(job_id, 0) > attempt

    return registry, StaleWatch(registry, superseded)


async def test_attempt_superseded_after_a_missed_heartbeat_is_stopped() -> None:
    claimed: dict[str, int] = {}
    registry, stale = watch(claimed)
    given_away, kept = Running("j1", 1), Running("j2", 1)
    registry.add(given_away)
    registry.add(kept)
    stale.heartbeat_missed()
    await stale.check()  # nobody claimed a later attempt yet: nothing stopped
    assert given_away.stops == [] and stale.suspects == {("j1", 1), ("j2", 1)}
    claimed["j1"] = 2  # the janitor's verdict requeued it and another orchestrator took it
    await stale.check()
    [stop] = given_away.stops
    assert stop.kind == "stop_order" and "another orchestrator" in stop.detail
    assert kept.stops == [] and stale.suspects == {("j2", 1)}


async def test_no_missed_heartbeat_means_no_check() -> None:
    registry, stale = watch({"j1": 2})
    running = Running("j1", 1)
    registry.add(running)
    await stale.check()
    assert running.stops == []


async def test_check_while_still_cut_off_keeps_the_suspects() -> None:
    registry, stale = watch({"j1": 2}, down=True)
    running = Running("j1", 1)
    registry.add(running)
    stale.heartbeat_missed()
    await stale.check()
    assert running.stops == [] and stale.suspects == {("j1", 1)}


async def test_ended_attempts_are_forgotten() -> None:
    registry, stale = watch({})
    running = Running("j1", 1)
    registry.add(running)
    stale.heartbeat_missed()
    registry.finish(running)
    await stale.check()
    assert stale.suspects == set()


pytestmark = pytest.mark.timeout(10)
