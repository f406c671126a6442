"""`GET /v1/jobs/{id}/logs?after=N&limit=L`, and CORS for the web page on another origin.

`complete` is true only on the last page of a finished job whose lines are all stored (see
completion.py), so a client may poll until it is true and know it has every line. While the
job runs, a page stops before a missing line (it may still be on its way), so `next_after`
never jumps over a line that is yet to be stored.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from dockyard.bus.errors import BusError, BusUnavailable
from dockyard.core.state import TERMINAL
from dockyard.job_logs.chunks import lines_page
from dockyard.log_relay.context import ctx_of
from dockyard.log_relay.ws import logs_ws, seq_param
from dockyard.store.ports import StoreUnavailable
from dockyard.web.errors import ApiError, Handler, invalid

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 10_000


async def get_logs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant = ctx.tokens.authenticate(request)
    job_id, view = await ctx.visible_job(request, tenant)
    after = seq_param(request, "after", 0)
    limit = seq_param(request, "limit", DEFAULT_LIMIT)
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    # Finished and all stored is decided before reading, so the read sees every line.
    stored = view["status"] in TERMINAL and await _all_stored(request, job_id)
    page = await ctx.store.read(job_id, after, limit, contiguous=not stored)
    complete = stored and page.gap is None and page.last >= await ctx.store.stored_max(job_id)
    return web.Response(
        body=lines_page(page.bodies, page.last, complete),
        content_type="application/json",
    )


async def _all_stored(request: web.Request, job_id: str) -> bool:
    try:
        return await ctx_of(request).completion.all_stored(job_id)
    except BusUnavailable:
        return False  # cannot tell now: not complete yet, the client asks again


@web.middleware
async def unavailable_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """PostgreSQL or NATS not answering is a 503 (try again), not a 500."""
    try:
        return await handler(request)
    except (StoreUnavailable, BusError) as error:
        raise ApiError(503, "unavailable", f"the log store cannot answer now: {error}") from None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let the web page (an allowed origin) read the log over HTTP with its token."""
    origin = request.headers.get("Origin")
    if origin is None or not ctx_of(request).origin_allowed(origin):
        return await handler(request)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET",
                "Access-Control-Allow-Headers": "Authorization",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )
    response = await handler(request)
    if not response.prepared:  # a WebSocket has sent its headers already
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/jobs/{job_id}/logs", get_logs, allow_head=False),
        web.get("/v1/jobs/{job_id}/logs/ws", logs_ws, allow_head=False),
    ]
