"""/healthz, /readyz and /metrics, the same on every HTTP service.

/readyz answers 200 only when every dependency's probe answers within a short timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from dockyard.web.errors import ApiError, error_response

Probe = Callable[[], Awaitable[bool]]
# Why a dependency is not ready, in words (None: no more to say).
Reason = Callable[[], str | None]
PROBE_TIMEOUT_S = 2.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def routes(
    probes: Mapping[str, Probe],
    render_metrics: Callable[[], Awaitable[bytes]],
    reasons: Mapping[str, Reason] | None = None,
    *,
    metrics_guard: Callable[[web.Request], None] | None = None,
) -> list[web.RouteDef]:
    """metrics_guard raises an ApiError for a caller who may not read /metrics (the scheduler
    and the log relay: the admin token; a metrics-only listener: nobody)."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        results = await asyncio.gather(*(_probe(p) for p in probes.values()))
        checks = dict(zip(probes, results, strict=True))
        if all(checks.values()):
            return web.json_response({"status": "ready", "checks": checks})
        down = ", ".join(_named(name, reasons) for name, ok in checks.items() if not ok)
        return error_response(ApiError(503, "not_ready", f"not answering: {down}", checks))

    async def metrics(request: web.Request) -> web.Response:
        if metrics_guard is not None:
            metrics_guard(request)
        return web.Response(body=await render_metrics(), headers={"Content-Type": PROMETHEUS_TEXT})

    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
    ]


def _named(name: str, reasons: Mapping[str, Reason] | None) -> str:
    reason = reasons[name]() if reasons and name in reasons else None
    return f"{name} ({reason})" if reason else name


async def _probe(probe: Probe) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            return await probe()
    except Exception:
        return False
