"""Everything a request handler needs, wired once by the composition root."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from dockyard.core import Command, Metadata
from dockyard.core.registries import RegistryPolicy
from dockyard.core.spec_bounds import SpecBounds
from dockyard.core.tenant_limits import TenantPolicies
from dockyard.handling.batching import CommandBatcher
from dockyard.handling.execute import Clock, Outcome, execute, utc_now
from dockyard.scheduler.metrics import SchedulerMetrics
from dockyard.scheduler.page_routes import RelayAddress
from dockyard.scheduler.schedule_store import InMemoryScheduleStore, ScheduleStore
from dockyard.sealing import KeyRing
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
    # The service's: submits and cancels that arrive together are committed together.
    batcher: CommandBatcher | None = None
    # The operator's defaults and maxima for resources and timeout (DOCKYARD_DEFAULT_*, _MAX_*).
    bounds: SpecBounds = field(default_factory=SpecBounds)
    # DOCKYARD_ALLOWED_REGISTRIES: the registries a job's images may come from.
    registries: RegistryPolicy = field(default_factory=RegistryPolicy)
    # DOCKYARD_TENANT_LIMITS: what each tenant's specs may ask for (egress, uid 0).
    tenants: TenantPolicies = field(default_factory=TenantPolicies)
    # Where the web page finds the log relay; None: from the environment when the app is built.
    page: RelayAddress | None = None
    # DOCKYARD_SECRETS_KEY: seals secret values at submit; None: specs with secrets are 422.
    secrets: KeyRing | None = None

    async def execute(
        self, job_id: str, command: Command, *, meta: Metadata | None = None
    ) -> Outcome:
        """Run a command on a job: through the batcher when there is one, else on its own."""
        if self.batcher is not None:
            return await self.batcher.execute(job_id, command, meta=meta)
        return await execute(self.store, job_id, command, meta=meta, clock=self.clock)


CONTEXT = web.AppKey("dockyard.context", Context)


def ctx_of(request: web.Request) -> Context:
    return request.app[CONTEXT]
