"""The janitor service: composition root, the schedule loop, and the optional metrics port.

**Host scoping: one janitor per Docker engine host.** A janitor judges only what its own
engine shows it: it removes containers and networks that engine lists, and records a ledger
entry as gone only when the entry's `engine` (the `docker info` ID the orchestrator recorded)
is its own engine's ID; entries of other engines, or of an unknown engine, are left to their
own janitor. Lost orchestrators, stuck jobs, re-offers and retention are global (they need
only PostgreSQL and NATS) and every janitor does them: they are appends with the expected
version, so several janitors doing them double nothing, and a PostgreSQL advisory lock makes
them take turns anyway. Deploy it next to each engine's orchestrators (`dockyard up` starts
one on its machine).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import TextIO

import aiodocker
from aiohttp import web

from dockyard.bus import connection
from dockyard.bus.permissions import inbox_prefix
from dockyard.bus.topology import JANITOR_NEEDS, await_topology
from dockyard.config import Settings
from dockyard.janitor.config import JanitorConfig
from dockyard.janitor.lease import SweepLock
from dockyard.janitor.metrics import JanitorMetrics
from dockyard.janitor.observe import EngineId, Sources
from dockyard.janitor.report import SweepReport
from dockyard.janitor.schedule import Schedule, schedule_for
from dockyard.janitor.sweep import Janitor
from dockyard.process.lifecycle import supervise, wait_for_stop_signal
from dockyard.runtime.docker import DockerRuntime, required_engine_id
from dockyard.runtime.ports import ContainerRuntime
from dockyard.store.migrations import migrate
from dockyard.store.pool import create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.telemetry import tracing

log = logging.getLogger("dockyard.janitor")

# A janitor's engine calls are few and small; a hung engine should fail a step, not stall it.
DOCKER_CALL_TIMEOUT_S = 30.0


def engine_id_of(docker: aiodocker.Docker) -> EngineId:
    """The engine's `docker info` ID, which orchestrators record with each ledger entry."""
    return partial(required_engine_id, docker, DOCKER_CALL_TIMEOUT_S)


@asynccontextmanager
async def bootstrap(
    settings: Settings,
    config: JanitorConfig | None = None,
    *,
    docker: aiodocker.Docker | None = None,
    runtime: ContainerRuntime | None = None,
    engine_id: EngineId | None = None,
    own_deployment_only: bool = True,
) -> AsyncIterator[Janitor]:
    """Wire PostgreSQL, NATS and the local Docker engine; close them afterwards.

    `docker`, if given, is the caller's client (and stays open); `runtime` and `engine_id`
    replace the engine's adapter and ID, and `own_deployment_only=False` lets it judge every
    Dockyard container, not only its installation's (tests scope it with `select`)."""
    config = config or JanitorConfig.from_settings(settings)
    async with AsyncExitStack() as stack:
        await migrate(settings.database_url)
        pool = await create_pool(settings.database_url, max_size=4)
        stack.push_async_callback(pool.close)
        store = PgEventStore(pool)
        stack.push_async_callback(store.close)
        nc = await connection.connect(
            settings.nats_url,
            "janitor",
            security=connection.Security.of(settings.nats_security, inbox_prefix("janitor")),
        )
        stack.push_async_callback(connection.close, nc)
        js = connection.jetstream(nc)
        # Made by the scheduler; the janitor may only look (bus/permissions.py).
        deployment = await await_topology(js, JANITOR_NEEDS, who="janitor")
        if docker is None:
            docker = aiodocker.Docker()
            stack.push_async_callback(docker.close)
        runtime = runtime or DockerRuntime(docker, call_timeout_s=DOCKER_CALL_TIMEOUT_S)
        engine_id = engine_id or engine_id_of(docker)
        lock = SweepLock(settings.database_url)
        stack.push_async_callback(lock.close)
        sources = Sources(
            pool=pool,
            runtime=runtime,
            engine_id=engine_id,
            js=js,
            deployment=deployment if own_deployment_only else None,
        )
        yield Janitor(sources, store, config, lock=lock)


async def run_schedule(
    janitor: Janitor,
    schedule: Schedule,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Sweep on the schedule for ever, one turn at a time."""
    last: datetime | None = None
    while True:
        now = clock()
        start = schedule.next_start(last, now)
        await asyncio.sleep(max(0.0, (start - now).total_seconds()))
        last = clock()
        wait_s = janitor.config.lock_wait_s
        if wait_s is None:
            wait_s = schedule.period_s(last)
        try:
            await janitor.turn(wait_s)
        except Exception:  # a bug in one sweep must not end the service: the next one runs
            log.exception("janitor.sweep_crashed", extra={"event": "janitor.sweep_crashed"})


async def serve_metrics(metrics: JanitorMetrics, host: str, port: int) -> web.AppRunner:
    async def render(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", render)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("janitor.metrics url=http://%s:%d/metrics", host, port)
    return runner


async def run_janitor(
    settings: Settings,
    *,
    dry_run: bool = False,
    once: bool = False,
    out: TextIO | None = None,
) -> SweepReport | None:
    """`dockyard janitor`: sweep on the schedule until SIGTERM or SIGINT.

    `once`: one sweep (taking its turn), then return its report. `dry_run`: one sweep that
    changes nothing, its plan printed to `out` (stdout) one line per action."""
    config = JanitorConfig.from_settings(settings)
    async with AsyncExitStack() as stack:
        if tracing.configure_tracing(tracing.JANITOR):
            stack.push_async_callback(tracing.shutdown_tracing)
        janitor = await stack.enter_async_context(bootstrap(settings, config))
        if dry_run:
            report = await janitor.sweep(dry_run=True)
            print("\n".join(report.lines()), file=out or sys.stdout)
            return report
        schedule = schedule_for(config)
        if once:
            wait_s = config.lock_wait_s
            if wait_s is None:
                wait_s = schedule.period_s(janitor.clock())
            return await janitor.turn(wait_s)
        runner = None
        if config.metrics_listen is not None:
            runner = await serve_metrics(janitor.metrics, *config.metrics_listen)
        try:
            log.info(
                "janitor.started schedule=%s",
                config.cron or f"every {config.interval_s:g} s",
                extra={"event": "janitor.started"},
            )
            await supervise(
                {"sweeps": run_schedule(janitor, schedule)},
                until=wait_for_stop_signal(),
            )
        finally:
            if runner is not None:
                await runner.cleanup()
        log.info("janitor.stopped", extra={"event": "janitor.stopped"})
    return None
