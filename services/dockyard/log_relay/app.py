"""The log relay's aiohttp application: routes and middleware around a RelayContext."""

from __future__ import annotations

import weakref
from functools import partial

from aiohttp import web

from dockyard.log_relay import http_api
from dockyard.log_relay.context import CONTEXT, RelayContext
from dockyard.log_relay.ws import SOCKETS, close_sockets
from dockyard.web import health
from dockyard.web.access import access_middleware
from dockyard.web.errors import error_middleware


def build_app(ctx: RelayContext) -> web.Application:
    # CORS outside the error middleware, so that error answers reach the page too.
    app = web.Application(
        middlewares=[
            access_middleware(ctx.metrics.auth_failures.inc),
            http_api.cors_middleware,
            error_middleware,
            http_api.unavailable_middleware,
        ],
        client_max_size=64 * 1024,
    )
    app[CONTEXT] = ctx
    app[SOCKETS] = weakref.WeakSet()
    app.add_routes(http_api.routes())
    app.add_routes(
        health.routes(
            {"postgresql": ctx.database_ready, "nats": ctx.nats_ready},
            partial(_metrics, ctx),
            # Read at each request: the tokens are the context's (tests swap them).
            metrics_guard=lambda request: ctx.tokens.require_admin(request),
        )
    )
    app.on_shutdown.append(close_sockets)
    return app


async def _metrics(ctx: RelayContext) -> bytes:
    if ctx.refresh_gauges is not None:
        await ctx.refresh_gauges(ctx.metrics)
    return ctx.metrics.render()
