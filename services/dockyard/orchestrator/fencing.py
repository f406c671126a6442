"""Stopping an attempt that was given away while this orchestrator was cut off.

An orchestrator silent for a lease is declared lost by the janitor and its jobs go to others
as the next attempt, while its own containers may still run (a partition, not a crash).
Nothing tells it so when the network comes back: a stop order follows only a report the
scheduler finds stale, and a running container sends none. So every attempt running here
when a heartbeat failed is a suspect, checked at each later heartbeat while it runs: once a
later attempt of its job is claimed, its container is stopped (its report is then refused
as stale, as any report of a fenced attempt is).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from dockyard.bus.errors import BusError
from dockyard.orchestrator.outcome import StopRequest
from dockyard.orchestrator.registry import Registry

log = logging.getLogger("dockyard.orchestrator.fencing")

Superseded = Callable[[str, int], Awaitable[bool]]


class StaleWatch:
    def __init__(self, registry: Registry, superseded: Superseded) -> None:
        self._registry = registry
        self._superseded = superseded
        self._suspects: set[tuple[str, int]] = set()

    @property
    def suspects(self) -> set[tuple[str, int]]:
        return set(self._suspects)

    def heartbeat_missed(self) -> None:
        """A heartbeat failed: the lease may lapse, so every attempt running now is suspect."""
        self._suspects |= {(a.job_id, a.attempt) for a in self._registry}

    async def check(self) -> None:
        """Stop each suspect whose job has a later attempt claimed; forget those that ended."""
        for job_id, attempt in sorted(self._suspects):
            running = self._registry.get(job_id)
            if running is None or running.attempt != attempt:
                self._suspects.discard((job_id, attempt))
                continue
            try:
                later = await self._superseded(job_id, attempt)
            except BusError as exc:  # still cut off: the next heartbeat asks again
                log.info("orchestrator.fence_check_failed job=%s error=%s", job_id, exc)
                return
            if later:
                self._suspects.discard((job_id, attempt))
                log.warning(
                    "orchestrator.attempt_superseded job=%s attempt=%d: a later attempt was "
                    "claimed while this orchestrator was cut off; stopping its container",
                    job_id,
                    attempt,
                    extra={"event": "orchestrator.attempt_superseded", "job": job_id},
                )
                detail = f"attempt {attempt} was given to another orchestrator while this one "
                running.request_stop(StopRequest("stop_order", detail + "was cut off"))
