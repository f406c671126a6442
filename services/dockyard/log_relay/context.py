"""Everything the log relay's handlers need, wired once by the composition root."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

from dockyard.job_logs.store import LogStore
from dockyard.log_relay.completion import Completion
from dockyard.log_relay.follow import FollowLimits
from dockyard.log_relay.metrics import RelayMetrics
from dockyard.log_relay.room import Views
from dockyard.log_relay.rooms import Rooms
from dockyard.store.ports import JobView
from dockyard.web.auth import Tokens, can_see
from dockyard.web.errors import not_found

Probe = Callable[[], Awaitable[bool]]


async def _always() -> bool:
    return True


@dataclass(frozen=True)
class WsSettings:
    heartbeat_s: float = 20.0  # a ping this often; no pong within half of it: the peer is dead
    close_timeout_s: float = 5.0  # for the peer's close reply
    abort_after_s: float = 15.0  # a peer that reads nothing more is cut off after this
    max_incoming_bytes: int = 4096  # clients send nothing but control frames
    follow: FollowLimits = field(default_factory=FollowLimits)


def normal_origins(origins: Iterable[str]) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/").lower() for o in origins if o.strip())


@dataclass
class RelayContext:
    store: LogStore
    views: Views
    tokens: Tokens
    completion: Completion
    rooms: Rooms
    metrics: RelayMetrics
    allowed_origins: frozenset[str]  # normalised: see normal_origins; "*" allows any
    ws: WsSettings = field(default_factory=WsSettings)
    database_ready: Probe = _always
    nats_ready: Probe = _always
    refresh_gauges: Callable[[RelayMetrics], Awaitable[None]] | None = None

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allowed_origins or origin.rstrip("/").lower() in self.allowed_origins

    async def visible_job(self, request: web.Request, tenant: str) -> tuple[str, JobView]:
        """The job named in the path and its view; 404 also when it is another tenant's."""
        raw = request.match_info["job_id"]
        try:
            job_id = str(uuid.UUID(raw))
        except ValueError:
            raise not_found("job", raw) from None
        view = await self.views.get_view(job_id)
        if view is None or not can_see(tenant, view["tenant"]):
            raise not_found("job", job_id)
        return job_id, view


CONTEXT = web.AppKey("dockyard.log_relay", RelayContext)


def ctx_of(request: web.Request) -> RelayContext:
    return request.app[CONTEXT]
