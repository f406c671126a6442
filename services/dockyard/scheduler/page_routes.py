"""The web page at `GET /`: one HTML file, a stylesheet and a script, no build step.

The page calls this scheduler's API on its own origin and the log relay (another origin) for
the logs; `/config.json` tells it where the relay is, and the CSP's `connect-src` allows only
that. Both come from configuration, never from the request's `Host` header, which decides
where the page sends its token (security review F17): DOCKYARD_LOGS_URL when set; else, when
the page was loaded from one of its own origins (DOCKYARD_ALLOWED_ORIGINS), that origin's
scheme and host with DOCKYARD_LOGS_LISTEN's port; else DOCKYARD_LOGS_LISTEN itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import msgspec
from aiohttp import web
from msgspec import Struct

from dockyard import config

PAGE_DIR: Final = Path(__file__).resolve().parent / "page"
_STATIC: Final = {"app.css": "text/css", "app.js": "text/javascript"}
_NO_CACHE: Final = {"Cache-Control": "no-cache"}


class RelayAddress(Struct, frozen=True, kw_only=True):
    """Where the page finds the log relay, worked out from configuration alone."""

    explicit: str | None = None  # DOCKYARD_LOGS_URL
    port: int = 8701  # DOCKYARD_LOGS_LISTEN's
    listen_host: str = "127.0.0.1"  # DOCKYARD_LOGS_LISTEN's, loopback if it is every interface
    page_origins: tuple[str, ...] = ()  # DOCKYARD_ALLOWED_ORIGINS

    @classmethod
    def from_settings(cls, settings: config.Settings, env: Mapping[str, str]) -> RelayAddress:
        host, port = settings.logs_listen
        return cls(
            explicit=(env.get("DOCKYARD_LOGS_URL") or "").rstrip("/") or None,
            port=port,
            listen_host="127.0.0.1" if host in ("0.0.0.0", "::", "") else host,
            page_origins=settings.allowed_origins,
        )

    def for_host(self, host: str | None) -> str:
        """The relay's base URL for a page loaded from `host` (the Host header's name)."""
        if self.explicit:
            return self.explicit
        wanted = (host or "").lower()
        for origin in self.page_origins:
            parts = urlsplit(origin)
            if parts.hostname and parts.hostname.lower() == wanted and parts.scheme:
                return f"{parts.scheme}://{_bracketed(parts.hostname)}:{self.port}"
        return f"http://{_bracketed(self.listen_host)}:{self.port}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def routes(relay: RelayAddress | None = None) -> list[web.RouteDef]:
    """`/`, `/static/app.css`, `/static/app.js` and `/config.json` (relay: None reads it
    from the environment now, once)."""
    where = relay or RelayAddress.from_settings(config.load(), os.environ)

    def relay_url(request: web.Request) -> str:
        return where.for_host(request.url.host)

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
