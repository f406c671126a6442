"""Waiting out a NATS outage: an orchestrator's reports and log lines must arrive, late if need be.

While the client is reconnecting a publish would only pile another copy into its buffer, so
callers first wait for the connection, then publish with the same Nats-Msg-Id until JetStream
acks it; a copy that did get through the first time is dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from nats.aio.client import Client as NatsClient

from dockyard.bus.errors import BusUnavailable
from dockyard.process.backoff import Backoff

log = logging.getLogger("dockyard.orchestrator")

T = TypeVar("T")

# NATS binds, fetches and publishes: quick at first (a blip), every 2 s at most (an outage).
RETRY: Final = Backoff(base_s=0.05, cap_s=2.0)
# The Docker engine: it restarts in seconds, so ask again within 5 s however long it was away.
ENGINE_RETRY: Final = Backoff(base_s=0.2, cap_s=5.0)
CONNECTED_POLL_S: Final = 0.05


def backoff(failures: int) -> float:
    """The wait after the `failures`-th failure in a row (RETRY's schedule, with jitter)."""
    return RETRY.delay(failures)


async def wait_connected(nc: NatsClient) -> None:
    """Return once the client is connected; BusUnavailable if it was closed for good."""
    while not nc.is_connected:
        if nc.is_closed:
            raise BusUnavailable("the NATS connection is closed")
        await asyncio.sleep(CONNECTED_POLL_S)


async def until_stored(nc: NatsClient, call: Callable[[], Awaitable[T]], what: str) -> T:
    """Run `call` (an idempotent publish) until it succeeds, through any NATS outage.

    BusRejected propagates: waiting would not change the answer. Cancellation stops it.
    """
    failures = 0
    while True:
        await wait_connected(nc)
        try:
            return await call()
        except BusUnavailable as exc:
            if nc.is_closed:
                raise
            failures += 1
            if failures == 1 or failures % 20 == 0:
                log.warning(
                    "orchestrator.publish_retry what=%s failures=%d error=%s",
                    what,
                    failures,
                    exc,
                    extra={"event": "orchestrator.publish_retry", "what": what},
                )
            await asyncio.sleep(backoff(failures))
