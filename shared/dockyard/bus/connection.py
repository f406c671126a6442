"""Connecting to NATS: reconnect forever with bounded backoff, and say so in the logs.

A service must survive a NATS restart without restarting itself: the client reconnects with
exponential backoff capped at a few seconds, replays its subscriptions, and buffers publishes
meanwhile (they time out and are retried by their callers, deduplicated by Nats-Msg-Id).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.client import Server
from nats.js import JetStreamContext

from dockyard.bus.errors import BusUnavailable

log = logging.getLogger("dockyard.bus")

# A dead TCP connection (a host gone without a FIN) is noticed after ping_interval times
# max_outstanding_pings: 20 s here, against nats-py's default of 4 minutes, which is longer
# than an orchestrator's lease.
PING_INTERVAL_S: Final = 10
MAX_OUTSTANDING_PINGS: Final = 2

# Reconnect delays: 0.1 s, 0.2 s, ... doubling up to 5 s, each with ±20 % jitter so a fleet
# of services does not reconnect in lockstep after a NATS restart.
RECONNECT_BASE_S: Final = 0.1
RECONNECT_CAP_S: Final = 5.0

# Publishes issued while reconnecting wait in a buffer this large, then fail fast.
PENDING_BYTES: Final = 8 * 1024 * 1024


def reconnect_delay(attempt: int) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 for the first)."""
    delay = min(RECONNECT_CAP_S, RECONNECT_BASE_S * 2.0 ** min(attempt, 16))
    return delay * random.uniform(0.8, 1.2)


def _choose_server(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
    # The pool is one URL (or a cluster's); pick the least-retried server, back off on its count.
    server = min(servers, key=lambda s: s.reconnects)
    return server, reconnect_delay(server.reconnects)


def server_urls(url: str) -> list[str]:
    """The servers of DOCKYARD_NATS_URL: one URL, or a comma-separated list (a cluster's
    nodes, so the first connection does not hang on one node being down)."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise ValueError("no NATS server URL given")
    return urls


def redact(url: str) -> str:
    """The URL (or comma-separated URLs) without credentials, for logs."""
    if "," in url:
        return ",".join(redact(u) for u in server_urls(url))
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=f"***@{netloc}"))


async def connect(url: str, name: str, *, timeout_s: float | None = None) -> NatsClient:
    """A connected client that reconnects forever.

    The first connection is retried too (a service may start before NATS), for up to
    `timeout_s` (None: forever); then BusUnavailable is raised. Close it with `close`.
    """
    safe_url = redact(url)
    fields = {"connection": name, "url": safe_url}

    async def on_error(exc: Exception) -> None:
        log.warning(
            "nats.error connection=%s url=%s error=%s: %s",
            name,
            safe_url,
            type(exc).__name__,
            exc,
            extra={"event": "nats.error", **fields, "error": repr(exc)},
        )

    async def on_disconnected() -> None:
        if nc.is_closed:
            return  # our own close(): on_closed says so
        log.warning(
            "nats.disconnected connection=%s url=%s",
            name,
            safe_url,
            extra={"event": "nats.disconnected", **fields},
        )

    async def on_reconnected() -> None:
        log.info(
            "nats.reconnected connection=%s url=%s server=%s",
            name,
            safe_url,
            redact(nc.connected_url.geturl()) if nc.connected_url else "",
            extra={"event": "nats.reconnected", **fields},
        )

    async def on_closed() -> None:
        log.info("nats.closed connection=%s", name, extra={"event": "nats.closed", **fields})

    nc = NatsClient()
    try:
        async with asyncio.timeout(timeout_s):
            await nc.connect(
                server_urls(url),
                name=name,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,  # between attempts of the first connection only
                reconnect_to_server_handler=_choose_server,
                ping_interval=PING_INTERVAL_S,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                pending_size=PENDING_BYTES,
            )
    except TimeoutError:
        await nc.close()
        raise BusUnavailable(f"could not connect to NATS at {safe_url} in {timeout_s}s") from None
    log.info(
        "nats.connected connection=%s url=%s",
        name,
        safe_url,
        extra={"event": "nats.connected", **fields},
    )
    return nc


def jetstream(
    nc: NatsClient, *, timeout_s: float = 5.0, max_pending_acks: int = 4096
) -> JetStreamContext:
    """The JetStream context of `nc`: API calls time out after `timeout_s`.

    `max_pending_acks` bounds asynchronous publishes awaiting their ack (publish_async).
    """
    return JetStreamContext(nc, timeout=timeout_s, publish_async_max_pending=max_pending_acks)


async def close(nc: NatsClient, *, timeout_s: float = 5.0) -> None:
    """Send what is buffered, then close.

    Not nats-py's `drain`: it waits for every subscription's queue to be consumed, which a pull
    subscription whose fetch loop has stopped never is, so it ran into its timeout and then
    logged a cancelled future with a traceback at every shutdown. Nothing here needs the
    messages a subscription still holds: JetStream redelivers what was not acked, and request
    senders retry.
    """
    if nc.is_closed:
        return
    try:
        if nc.is_connected:
            await nc.flush(timeout=max(1, round(timeout_s)))
    except (nats.errors.Error, OSError, TimeoutError):  # not connected, or it did not answer
        log.info("nats.flush_failed connection=%s", nc.options.get("name"))
    finally:
        await nc.close()
