"""The web page at `GET /`: one HTML file, a stylesheet and a script, no build step.

The page calls this scheduler's API on its own origin and the log relay (another origin) for
the logs; `/config.json` tells it where the relay is: DOCKYARD_LOGS_URL when set, otherwise
the host the browser used for the page with DOCKYARD_LOGS_LISTEN's port.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import msgspec
from aiohttp import web

from dockyard import config

PAGE_DIR: Final = Path(__file__).resolve().parent / "page"
_STATIC: Final = {"app.css": "text/css", "app.js": "text/javascript"}
_NO_CACHE: Final = {"Cache-Control": "no-cache"}


def routes(logs_url: str | None = None) -> list[web.RouteDef]:
    """`/`, `/static/app.css`, `/static/app.js` and `/config.json` (logs_url: the relay's
    base URL as the browser reaches it; None: worked out per request, see above)."""

    def relay_url(request: web.Request) -> str:
        if logs_url:
            return logs_url.rstrip("/")
        return _relay_url_for(request)

    async def index(request: web.Request) -> web.FileResponse:
        relay = relay_url(request)
        ws_relay = "ws" + relay.removeprefix("http")
        csp = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self' {relay} {ws_relay}; frame-ancestors 'none'; base-uri 'none'"
        )
        headers = {
            **_NO_CACHE,
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        return web.FileResponse(PAGE_DIR / "index.html", headers=headers)

    async def static(request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        content_type = _STATIC.get(name)
        if content_type is None:
            raise web.HTTPNotFound(text=f"no static file {name!r}")
        headers = {**_NO_CACHE, "Content-Type": content_type, "X-Content-Type-Options": "nosniff"}
        return web.FileResponse(PAGE_DIR / name, headers=headers)

    async def page_config(request: web.Request) -> web.Response:
        body = msgspec.json.encode({"logs_url": relay_url(request)})
        return web.Response(body=body, content_type="application/json", headers=_NO_CACHE)

    return [
        web.get("/", index, allow_head=False),
        web.get("/static/{name}", static, allow_head=False),
        web.get("/config.json", page_config, allow_head=False),
    ]


def _relay_url_for(request: web.Request) -> str:
    explicit = os.environ.get("DOCKYARD_LOGS_URL")
    if explicit:
        return explicit.rstrip("/")
    _, port = config.load().logs_listen
    host = request.url.host or "127.0.0.1"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{request.scheme}://{host}:{port}"
