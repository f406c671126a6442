"""The log relay's composition root: real adapters wired around the persister and the API."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from aiohttp import web
from nats.js import JetStreamContext

from dockyard.bus import connection, names
from dockyard.bus.permissions import inbox_prefix
from dockyard.bus.topology import LOG_RELAY_NEEDS, await_topology
from dockyard.config import Settings
from dockyard.job_logs.store import LogStore
from dockyard.log_relay.app import build_app
from dockyard.log_relay.completion import Completion
from dockyard.log_relay.context import RelayContext, normal_origins
from dockyard.log_relay.holders import AttemptHolders
from dockyard.log_relay.metrics import RelayMetrics
from dockyard.log_relay.persister import LogPersister
from dockyard.log_relay.room import Sources
from dockyard.log_relay.rooms import Rooms
from dockyard.process.lifecycle import supervise, wait_for_stop_signal
from dockyard.store.migrations import migrate
from dockyard.store.pool import create_pool
from dockyard.store.read_model import PgJobViews
from dockyard.telemetry import tracing
from dockyard.web.auth import Tokens

log = logging.getLogger("dockyard.log_relay")


async def run_log_relay(settings: Settings) -> None:
    """Persist log batches and serve logs until SIGTERM/SIGINT."""
    async with AsyncExitStack() as stack:
        if tracing.configure_tracing(tracing.LOG_RELAY):
            stack.push_async_callback(tracing.shutdown_tracing)  # last: flushes every span
        await migrate(settings.database_url)
        pool = await create_pool(settings.database_url, max_size=8)
        stack.push_async_callback(pool.close)
        # Two connections: a burst of live lines must not delay the persister, nor the reverse.
        security = connection.Security.of(settings.nats_security, inbox_prefix("log-relay"))
        persist_nc = await connection.connect(
            settings.nats_url, "log-relay-persist", security=security
        )
        stack.push_async_callback(connection.close, persist_nc)
        js = connection.jetstream(persist_nc)
        # Made by the scheduler; the relay may only look (bus/permissions.py).
        await await_topology(js, LOG_RELAY_NEEDS, who="log-relay")
        live_nc = await connection.connect(settings.nats_url, "log-relay-live", security=security)
        stack.push_async_callback(connection.close, live_nc)

        store = LogStore(pool)
        metrics = RelayMetrics()
        views = PgJobViews(pool)
        completion = Completion(connection.jetstream(live_nc))
        # Who holds each attempt, shared: a batch is stored and shown only from its holder.
        holders = AttemptHolders(pool)
        rooms = Rooms(Sources(live_nc, store, views, completion, metrics, holders=holders))
        stack.push_async_callback(rooms.close_all)

        async def database_ready() -> bool:
            await pool.fetchval("SELECT 1")
            return True

        async def nats_ready() -> bool:
            return persist_nc.is_connected and live_nc.is_connected

        ctx = RelayContext(
            store=store,
            views=views,
            tokens=Tokens(settings.tokens),
            completion=completion,
            rooms=rooms,
            metrics=metrics,
            allowed_origins=normal_origins(settings.allowed_origins),
            database_ready=database_ready,
            nats_ready=nats_ready,
            refresh_gauges=lambda m: _refresh(js, m),
        )
        runner = web.AppRunner(build_app(ctx), access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        host, port = settings.logs_listen
        await web.TCPSite(runner, host, port).start()
        log.info(
            "log_relay.listening url=http://%s:%d",
            host,
            port,
            extra={"event": "log_relay.listening"},
        )
        await supervise(
            {"persister": LogPersister(js, store, metrics, holders=holders).run()},
            until=wait_for_stop_signal(),
        )
        log.info("log_relay.stopping", extra={"event": "log_relay.stopping"})


async def _refresh(js: JetStreamContext, metrics: RelayMetrics) -> None:
    try:
        info = await js.consumer_info(names.LOGS_STREAM, names.LOGS_DURABLE, timeout=1.0)
    except Exception:  # a gauge left as it was is better than a failed scrape
        return
    metrics.pending.set((info.num_pending or 0) + (info.num_ack_pending or 0))
