"""The scheduler's aiohttp application: routes and middleware around a Context."""

from __future__ import annotations

from functools import partial

import msgspec
from aiohttp import web

from dockyard.scheduler import jobs_api, page_routes, schedules_api
from dockyard.scheduler.context import CONTEXT, Context
from dockyard.web import health
from dockyard.web.access import access_middleware
from dockyard.web.errors import error_middleware


def build_app(ctx: Context) -> web.Application:
    # client_max_size a little over the limit so the handler can answer a precise 413.
    app = web.Application(
        middlewares=[access_middleware(ctx.metrics.auth_failures.inc), error_middleware],
        client_max_size=jobs_api.MAX_BODY + 1,
    )
    app[CONTEXT] = ctx
    app.add_routes(jobs_api.routes())
    app.add_routes(schedules_api.routes())
    app.add_routes(
        health.routes(
            {"postgresql": ctx.database_ready, "nats": ctx.nats_ready},
            partial(_metrics, ctx),
            # Read at each request: the tokens are the context's (tests swap them).
            metrics_guard=lambda request: ctx.tokens.require_admin(request),
        )
    )
    app.router.add_get("/openapi.json", _openapi)
    app.add_routes(page_routes.routes(ctx.page))
    return app


async def _metrics(ctx: Context) -> bytes:
    if ctx.refresh_gauges is not None:
        await ctx.refresh_gauges(ctx.metrics)
    return ctx.metrics.render()


async def _openapi(request: web.Request) -> web.Response:
    from dockyard.scheduler.openapi import document

    return web.Response(body=msgspec.json.encode(document()), content_type="application/json")
