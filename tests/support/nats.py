"""Keeping the session's NATS server free of other tests' streams."""

from __future__ import annotations

import nats


async def purge_jetstream(url: str) -> None:
    """Delete every stream, and with them every KV bucket and object store (streams too)."""
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        jsm = nc.jsm()
        # Deleting shifts the listing, so list from the start again until nothing is left.
        for _ in range(1000):
            streams = await jsm.streams_info()
            if not streams:
                return
            for info in streams:
                if info.config.name:
                    await jsm.delete_stream(info.config.name)
        raise AssertionError("streams keep appearing while the test harness deletes them")
    finally:
        await nc.close()
