"""Keeping the session's shared servers usable whatever a test did to them."""

from __future__ import annotations

from dockyard.embedded import EmbeddedNats, EmbeddedPostgres


async def ensure_running(server: EmbeddedNats | EmbeddedPostgres) -> None:
    """Resume a paused server, start a stopped or killed one (same port, same data)."""
    if server.paused:
        await server.resume()
    if server.pid is None:
        await server.start()
