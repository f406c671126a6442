"""The access log: one structured record per request, and the count of refused tokens.

Each record has the tenant (once a token was checked), method, path, status, duration and
the peer's address (security review F18: who called what, and brute force made visible).
It never holds a header, a body or a token: a query parameter whose name says it carries a
credential is written as `***`. Probes of /healthz, /readyz and /metrics that succeed go
to DEBUG, so a scraper does not drown the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import parse_qsl, quote

from aiohttp import web
from aiohttp.typedefs import Middleware

from dockyard.web.errors import Handler

log = logging.getLogger("dockyard.access")

# Where the token check leaves the tenant, for the record.
TENANT: Final = web.RequestKey("dockyard.tenant", str)
_PROBES: Final = frozenset({"/healthz", "/readyz", "/metrics"})
_SECRET_WORDS: Final = ("token", "secret", "password", "passwd", "auth", "key", "bearer", "sig")
REDACTED: Final = "***"
# The status recorded for a request whose client went away before the answer (nginx's 499).
CLIENT_GONE: Final = 499


def note_tenant(request: web.Request, tenant: str) -> None:
    """Called by the token check: the access record names whom the request was for."""
    request[TENANT] = tenant


def redacted_query(query_string: str) -> str:
    """The query string with every credential-looking parameter's value replaced."""
    if not query_string:
        return ""
    pairs = parse_qsl(query_string, keep_blank_values=True)
    shown = [
        f"{quote(key, safe='')}={REDACTED if _secret(key) else quote(value, safe='')}"
        for key, value in pairs
    ]
    return "&".join(shown)


def _secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def access_middleware(
    on_auth_failure: Callable[[], None] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Middleware:
    """Outermost middleware: it sees the status the client gets, errors included."""

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as http:  # redirects and the like, raised past the errors
            status = http.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_GONE
            raise
        finally:
            if status == 401 and on_auth_failure is not None:
                on_auth_failure()
            _record(request, status, clock() - started)

    return access


def _record(request: web.Request, status: int, seconds: float) -> None:
    tenant = request.get(TENANT)
    query = redacted_query(request.query_string)
    level = logging.INFO
    if status == 401 or status == 403:
        level = logging.WARNING
    elif request.path in _PROBES and status < 400:
        level = logging.DEBUG
    log.log(
        level,
        "http.request %s %s%s %d tenant=%s %.1f ms",
        request.method,
        request.path,
        f"?{query}" if query else "",
        status,
        tenant or "-",
        seconds * 1000,
        extra={
            "event": "http.request",
            "tenant": tenant,
            "method": request.method,
            "path": request.path,
            "query": query,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "remote": request.remote,
        },
    )
