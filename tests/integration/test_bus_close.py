"""Closing a NATS connection at shutdown: prompt, and nothing printed at the user."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from dockyard.bus import close, connect


async def test_close_with_unread_messages_is_prompt_and_leaves_no_unretrieved_error(
    nats_url: str,
) -> None:
    """A subscription whose reader has stopped still holds a message (as a pull subscription
    does once its fetch loop is cancelled): nats-py's drain waited for it until its timeout,
    then logged a cancelled gather with a traceback at every service's stop."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        nc = await connect(nats_url, "test close")
        sub = await nc.subscribe("test.close.unread")  # no callback, never read
        await nc.publish("test.close.unread", b"left unread")
        await nc.flush()
        for _ in range(100):
            if sub.pending_msgs:
                break
            await asyncio.sleep(0.01)
        assert sub.pending_msgs == 1
        started = time.monotonic()
        await close(nc, timeout_s=5.0)
        took = time.monotonic() - started
        gc.collect()
        await asyncio.sleep(0.1)
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert nc.is_closed
    assert took < 2.0, f"close took {took:.1f} s"
    assert reported == []
