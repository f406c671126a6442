"""Everything a request handler needs, wired once by the composition root."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from dockyard.handler import Clock, utc_now
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.scheduler.schedule_store import InMemoryScheduleStore, ScheduleStore
from dockyard.store.ports import EventStore, JobViews
from dockyard.web.auth import Tokens

Probe = Callable[[], Awaitable[bool]]


async def _always() -> bool:
    return True


@dataclass
class Context:
    store: EventStore
    views: JobViews
    tokens: Tokens
    schedules: ScheduleStore = field(default_factory=InMemoryScheduleStore)
    clock: Clock = utc_now
    metrics: SchedulerMetrics = field(default_factory=SchedulerMetrics)
    database_ready: Probe = _always
    nats_ready: Probe = _always
    refresh_gauges: Callable[[SchedulerMetrics], Awaitable[None]] | None = None


CONTEXT = web.AppKey("dockyard.context", Context)


def ctx_of(request: web.Request) -> Context:
    return request.app[CONTEXT]
