"""Keeping the session's NATS server free of other tests' streams."""

from __future__ import annotations

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dockyard.bus import names


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


async def fetch_all(
    js: JetStreamContext, stream: str, subject: str, durable: str | None = None
) -> list[Msg]:
    """Every message of `stream` on `subject`, through `durable` or an ephemeral consumer."""
    sub = await js.pull_subscribe(subject, durable=durable, stream=stream)
    try:
        msgs: list[Msg] = []
        while True:
            try:
                batch = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                return msgs
            for msg in batch:
                await msg.ack()
            msgs.extend(batch)
    finally:
        await sub.unsubscribe()


async def events_stored(js: JetStreamContext) -> int:
    """Messages on EVENTS that are events: the stream carries the work offers too."""
    info = await js.stream_info(names.EVENTS_STREAM, subjects_filter=names.EVENTS_SUBJECTS)
    return sum((info.state.subjects or {}).values())
