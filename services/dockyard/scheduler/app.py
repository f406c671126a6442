"""The scheduler's aiohttp application: routes and middleware around a Context."""

from __future__ import annotations

from functools import partial

import msgspec
from aiohttp import web

from dockyard.scheduler import jobs_api, page_routes, schedules_api
from dockyard.scheduler.context import CONTEXT, Context
from dockyard.web import health
from dockyard.web.errors import error_middleware


def build_app(ctx: Context) -> web.Application:
    # client_max_size a little over the limit so the handler can answer a precise 413.
    app = web.Application(middlewares=[error_middleware], client_max_size=jobs_api.MAX_BODY + 1)
    app[CONTEXT] = ctx
    app.add_routes(jobs_api.routes())
    app.add_routes(schedules_api.routes())
    app.add_routes(
        health.routes(
            {"postgresql": ctx.database_ready, "nats": ctx.nats_ready}, partial(_metrics, ctx)
        )
    )
    app.router.add_get("/openapi.json", _openapi)
    app.add_routes(page_routes.routes())
    return app


async def _metrics(ctx: Context) -> bytes:
    if ctx.refresh_gauges is not None:
        await ctx.refresh_gauges(ctx.metrics)
    return ctx.metrics.render()


async def _openapi(request: web.Request) -> web.Response:
    from dockyard.scheduler.openapi import document

    return web.Response(body=msgspec.json.encode(document()), content_type="application/json")
