"""The scheduler's composition root: real adapters wired around the API and its loops."""

from __future__ import annotations

import logging
import os
from contextlib import AsyncExitStack
from functools import partial

from aiohttp import web
from nats.aio.client import Client as NatsClient

from dockyard.bus import connection
from dockyard.bus.event_batches import EventBatchPublisher
from dockyard.bus.leader import PgLeader
from dockyard.bus.outbox import OutboxRelay
from dockyard.bus.permissions import inbox_prefix
from dockyard.bus.signing import ClaimKeyError, ClaimSigner
from dockyard.bus.topology import ensure_topology_when_up
from dockyard.config import ConfigError, Settings
from dockyard.core.registries import RegistryPolicy
from dockyard.handling.batching import CommandBatcher
from dockyard.job_logs.position import stored_log
from dockyard.process import gc_policy
from dockyard.process.lifecycle import supervise, wait_for_stop_signal
from dockyard.scheduler.app import build_app
from dockyard.scheduler.claims import ClaimResponder
from dockyard.scheduler.context import Context
from dockyard.scheduler.due import PgDueJobs, run_due_ticker
from dockyard.scheduler.firing import run_firing
from dockyard.scheduler.gauges import pg_gauges
from dockyard.scheduler.metrics import CountingStore, SchedulerMetrics
from dockyard.scheduler.page_routes import RelayAddress
from dockyard.scheduler.reports import ReportConsumer
from dockyard.scheduler.schedule_store import PgScheduleStore
from dockyard.scheduler.secret_sealing import secrets_ring
from dockyard.scheduler.undeliverable import FailUndeliverableJobs
from dockyard.store.migrations import migrate
from dockyard.store.pool import Pool, create_pool
from dockyard.store.ports import EventStore
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews
from dockyard.store.set_aside import PgSetAsideLog
from dockyard.telemetry import tracing
from dockyard.web.auth import Tokens

log = logging.getLogger("dockyard.scheduler")


async def run_scheduler(settings: Settings) -> None:
    """Serve the API and record events until SIGTERM/SIGINT."""
    gc_policy.apply()
    signer = claim_signer(settings)
    secrets = secrets_ring(settings)
    async with AsyncExitStack() as stack:
        if tracing.configure_tracing(tracing.SCHEDULER):
            stack.push_async_callback(tracing.shutdown_tracing)  # last: flushes every span
        await migrate(settings.database_url)
        pool = await create_pool(settings.database_url, max_size=16)
        stack.push_async_callback(pool.close)
        pg_store = PgEventStore(pool)
        stack.push_async_callback(pg_store.close)
        metrics = SchedulerMetrics(settings.queues)
        store = CountingStore(pg_store, metrics)
        nc = await connection.connect(
            settings.nats_url,
            "scheduler",
            security=connection.Security.of(settings.nats_security, inbox_prefix("scheduler")),
        )
        stack.push_async_callback(connection.close, nc)
        js = connection.jetstream(nc)
        # The one service that creates the streams, consumers and buckets (permissions.py).
        await ensure_topology_when_up(
            js, lease_s=settings.lease_s, queues=settings.queues, replicas=settings.nats_replicas
        )

        # One batcher for the API, claims and reports: what arrives together is committed
        # together.
        batcher = CommandBatcher(store)
        stack.push_async_callback(batcher.close)
        ctx = _context(settings, pool, store, nc, metrics, batcher)
        ctx.secrets = secrets
        claims = ClaimResponder(
            nc, store, ctx.metrics, partial(stored_log, pool), batcher=batcher, signer=signer
        )
        await claims.start()
        stack.push_async_callback(claims.stop)

        runner = web.AppRunner(build_app(ctx), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        host, port = settings.api_listen
        await web.TCPSite(runner, host, port).start()
        log.info(
            "scheduler.listening url=http://%s:%d",
            host,
            port,
            extra={"event": "scheduler.listening"},
        )

        relay = OutboxRelay(
            store,
            EventBatchPublisher(nc, js),
            leader=PgLeader(settings.database_url),
            set_aside=FailUndeliverableJobs(PgSetAsideLog(pool), batcher.execute, metrics),
        )
        await supervise(
            {
                "outbox": relay.run(),
                "reports": ReportConsumer(nc, js, store, batcher, metrics).run(),
                "due": run_due_ticker(store, PgDueJobs(pool)),
                "schedules": run_firing(
                    store,
                    ctx.schedules,
                    bounds=ctx.bounds,
                    secrets=ctx.secrets,
                    tenants=ctx.tenants,
                ),
            },
            until=wait_for_stop_signal(),
        )
        log.info("scheduler.stopping", extra={"event": "scheduler.stopping"})


def claim_signer(settings: Settings) -> ClaimSigner | None:
    """The claim key (ConfigError naming the variable if it cannot be read); without one,
    one warning: claim answers go unsigned."""
    if settings.claim_key is None:
        log.warning(
            "scheduler.claims_unsigned: DOCKYARD_CLAIM_KEY is not set, so claim answers are "
            "not signed and orchestrators cannot tell them from a forgery: whoever can publish "
            "on NATS can make them run any container (development only)",
            extra={"event": "scheduler.claims_unsigned"},
        )
        return None
    try:
        return ClaimSigner.from_file(settings.claim_key)
    except ClaimKeyError as exc:
        raise ConfigError(str(exc)) from None


def _context(
    settings: Settings,
    pool: Pool,
    store: EventStore,
    nc: NatsClient,
    metrics: SchedulerMetrics,
    batcher: CommandBatcher,
) -> Context:
    async def database_ready() -> bool:
        await pool.fetchval("SELECT 1")
        return True

    async def nats_ready() -> bool:
        return nc.is_connected

    return Context(
        store=store,
        views=PgJobViews(pool),
        schedules=PgScheduleStore(pool),
        refresh_gauges=pg_gauges(pool),
        metrics=metrics,
        tokens=Tokens(settings.tokens),
        database_ready=database_ready,
        nats_ready=nats_ready,
        batcher=batcher,
        bounds=settings.spec_bounds,
        registries=RegistryPolicy.of(settings.allowed_registries),
        tenants=settings.tenant_limits,
        page=RelayAddress.from_settings(settings, os.environ),
    )
