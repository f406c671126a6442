"""The orchestrator service: composition root, run loop, and the SIGTERM drain.

Needs NATS and a Docker engine only: claims, reports, logs and heartbeats all travel over
NATS to the services that store them, so an orchestrator runs on any host.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiodocker
import aiohttp
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus.connection import (
    Security,
    close,
    connect,
    jetstream,
    move_to_another_server,
)
from dockyard.bus.permissions import inbox_prefix
from dockyard.bus.signing import ClaimVerifier
from dockyard.bus.topology import await_topology, orchestrator_needs
from dockyard.config import Settings
from dockyard.orchestrator.attempt import Attempt, AttemptContext, Claim
from dockyard.orchestrator.claimer import Ask, Claimer, claim_asker
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.control import Control
from dockyard.orchestrator.egress import EgressGuard
from dockyard.orchestrator.egress_rules import EgressChains
from dockyard.orchestrator.engine_health import PING_TIMEOUT_S, EngineHealth
from dockyard.orchestrator.fencing import StaleWatch
from dockyard.orchestrator.heartbeat import Heartbeats
from dockyard.orchestrator.images import Images
from dockyard.orchestrator.logsink import LogSink, last_batch, later_attempt_claimed
from dockyard.orchestrator.metrics import CountingLogSink, OrchestratorMetrics, serve_metrics
from dockyard.orchestrator.observed import observed_ask
from dockyard.orchestrator.outcome import StopRequest, outcome_of
from dockyard.orchestrator.ports import LastBatch, LogSinkPort
from dockyard.orchestrator.recovery import Recovery
from dockyard.orchestrator.registry import Registry
from dockyard.orchestrator.reporter import Reporter
from dockyard.orchestrator.retrying import ENGINE_RETRY, until_stored
from dockyard.orchestrator.ticket import Ticket
from dockyard.orchestrator.usage_sampler import UsageSampler
from dockyard.process import gc_policy
from dockyard.process.cancelling import cancel_and_wait
from dockyard.runtime.docker import DockerRuntime, required_engine_id
from dockyard.runtime.ports import ContainerRuntime, RuntimeUnavailable
from dockyard.telemetry import tracing

log = logging.getLogger("dockyard.orchestrator")

# After the drain and the stop grace, attempts get this long to report and clean up before
# they are cancelled (their cleanup still runs; only reports that cannot be sent are lost,
# and the janitor settles those).
FINAL_WAIT_S = 30.0


class Orchestrator:
    """One orchestrator: `run(stop)` serves its queues until `stop` is set, then drains."""

    def __init__(
        self,
        config: OrchestratorConfig,
        nc: NatsClient,
        js: JetStreamContext,
        runtime: ContainerRuntime,
        *,
        ask: Ask | None = None,
        engine: str | None = None,
        deployment: str | None = None,
    ) -> None:
        self.config = config
        self.nc = nc
        self.js = js
        self.runtime = runtime
        self.registry = Registry()
        self.reporter = Reporter(nc, js, orchestrator=config.orchestrator_id)
        self.images = Images(runtime, registries=config.registries, fresh_s=config.image_cache_s)
        self.control = Control(nc, js, config.orchestrator_id, self.registry)
        self.stale = StaleWatch(self.registry, functools.partial(later_attempt_claimed, js))
        self.engine = EngineHealth(runtime, on_back=self._reconcile)
        self.egress = EgressGuard(
            EgressChains.of(config.orchestrator_id),
            config.egress_deny,
            servers=config.egress_servers,
            iptables=config.iptables,
        )
        self.heartbeats = Heartbeats(
            js,
            self.registry,
            orchestrator=config.orchestrator_id,
            queues=config.queues,
            max_jobs=config.max_jobs,
            lease_s=config.lease_s,
            period_s=config.heartbeat_s,
            on_beat=self._after_beat,
            on_missed=self.stale.heartbeat_missed,
            engine_error=lambda: self.engine.error,
            move_server=functools.partial(move_to_another_server, nc),
        )
        self.metrics = OrchestratorMetrics()
        self.metrics.watch(running=lambda: self.running, nats_connected=lambda: nc.is_connected)
        self.metrics.engine_up.set_function(lambda: 1.0 if self.engine.up else 0.0)
        self.metrics.egress_enforced.set_function(lambda: 1.0 if self.egress.allows_egress else 0.0)
        self._ask = observed_ask(ask or self._claim_asker(), self.metrics)
        self._slots = asyncio.Semaphore(config.max_jobs)
        self._attempts: set[asyncio.Task[None]] = set()
        self.usage = UsageSampler(
            self.reporter,
            runtime,
            orchestrator=config.orchestrator_id,
            sample_s=config.usage_sample_s,
            report_s=config.usage_report_s,
        )
        self._context = AttemptContext(
            config=config,
            runtime=runtime,
            reports=self.reporter,
            images=self.images,
            log_sink=self._log_sink,
            engine=engine,
            deployment=deployment,
            usage=self.usage if self.usage.enabled else None,
            egress_ok=lambda: self.egress.allows_egress,
        )
        self.finished = 0
        self.recovered: list[tuple[str, int]] = []
        self.ready = asyncio.Event()  # recovery done, claiming

    async def _after_beat(self) -> None:
        await self.control.sweep()
        await self.stale.check()

    @property
    def running(self) -> int:
        return len(self._attempts)

    async def run(self, stop: asyncio.Event) -> None:
        """Recover, claim and run until `stop`; then drain. Returns with nothing running."""
        config = self.config
        stopping = asyncio.Event()
        await self.heartbeats.beat()
        await self.control.start()
        heartbeat = asyncio.create_task(self.heartbeats.run())
        sampler = asyncio.create_task(self.usage.run(), name="usage sampler")
        claimers: list[asyncio.Task[None]] = []
        engine: list[asyncio.Task[None]] = []
        try:
            # Before any claim: an egress job starts only behind the rules (or is left).
            await self.egress.install()
            self.recovered = await self._recover(stop)
            if stop.is_set():
                return  # stopped while waiting for the engine: nothing was claimed
            engine.append(asyncio.create_task(self.engine.run(), name="engine health"))
            engine.append(asyncio.create_task(self.egress.run(), name="egress rules"))
            claimers = [
                asyncio.create_task(self._claimer(queue).run(stopping), name=f"claimer {queue}")
                for queue in config.queues
            ]
            self.ready.set()
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([stopped, *claimers], return_when=asyncio.FIRST_COMPLETED)
            await cancel_and_wait([stopped])
            for claimer in claimers:
                if claimer.done() and (error := claimer.exception()) is not None:
                    # A bug, not an outage (those are retried): drain, then fail loudly, so
                    # that a supervisor restarts the process.
                    log.error("orchestrator.claimer_failed", exc_info=error)
                    raise error
        finally:
            log.info("orchestrator.draining running=%d", self.running)
            self.heartbeats.draining = True
            stopping.set()
            await asyncio.gather(*claimers, return_exceptions=True)
            await self._drain()
            await self.control.stop()
            await cancel_and_wait([heartbeat, sampler, *engine])
            await self.egress.remove()  # nothing of ours runs any more
            await self.heartbeats.withdraw()
            log.info("orchestrator.stopped finished=%d", self.finished)

    def launch(self, claim: Claim, ticket: Ticket) -> None:
        """Run a granted claim; the slot the claimer took is released once the attempt's
        engine cleanup is done (or, failing that, when its task ends)."""
        slot_held = True

        def free_slot() -> None:
            nonlocal slot_held
            if slot_held:
                slot_held = False
                self._slots.release()

        attempt = Attempt(self._context, claim, ticket, on_engine_clean=free_slot)
        self.registry.add(attempt)
        self.metrics.started.inc()
        early = self.control.early_cancel(claim.job_id)
        if early is not None:
            attempt.request_stop(early)
        task = asyncio.create_task(self._run_attempt(attempt), name=f"attempt {claim.job_id}")
        self._attempts.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._attempts.discard(task)
            self.registry.finish(attempt)
            free_slot()  # if the attempt ended before its cleanup could

        task.add_done_callback(done)

    async def _run_attempt(self, attempt: Attempt) -> None:
        try:
            report = await attempt.run()
        except asyncio.CancelledError:
            log.warning("orchestrator.attempt_cancelled job=%s", attempt.job_id)
            raise
        except Exception:
            log.exception("orchestrator.attempt_unreported job=%s", attempt.job_id)
            return
        finally:
            self.metrics.log_dropped.inc(attempt.dropped_bytes)
        self.metrics.finished.labels(outcome_of(report)).inc()
        self.metrics.observe_usage(attempt.claim.spec.queue, report.usage, report.limits_hit)
        self.finished += 1
        log.info(
            "orchestrator.attempt_done job=%s attempt=%d exit_code=%s reason=%s",
            attempt.job_id,
            attempt.attempt,
            report.exit_code,
            report.reason,
            extra={"event": "orchestrator.attempt_done", "job": attempt.job_id},
        )

    async def _drain(self) -> None:
        """Let running attempts finish for `drain_s`, then stop them (SIGTERM, grace, SIGKILL)
        and let them report; cancel only what is still there after that."""
        config = self.config
        if self._attempts:
            await asyncio.wait(set(self._attempts), timeout=config.drain_s)
        if self._attempts:
            self.registry.stop_all(
                StopRequest(
                    "shutdown",
                    f"orchestrator {config.orchestrator_id} shut down and stopped the job "
                    f"after a {config.drain_s:g} s drain",
                )
            )
            await asyncio.wait(set(self._attempts), timeout=config.stop_grace_s + FINAL_WAIT_S)
        if self._attempts:
            log.error("orchestrator.drain_incomplete running=%d", len(self._attempts))
            await cancel_and_wait(list(self._attempts))

    async def _recover(self, stop: asyncio.Event) -> list[tuple[str, int]]:
        """Recovery must finish before anything is claimed; wait for the engine if need be."""
        failures = 0
        while not stop.is_set():
            try:
                await self.runtime.ping(PING_TIMEOUT_S)
                recovered = await self._recovery().run()
            except RuntimeUnavailable as exc:
                failures += 1
                self.engine.mark_down(str(exc))  # logged once, on /readyz and the heartbeat
                await asyncio.sleep(ENGINE_RETRY.delay(failures))
            else:
                self.engine.mark_up()
                return recovered
        return []

    async def _reconcile(self) -> None:
        """The engine is back after an outage: end what the outage left of attempts that no
        longer run here (stopped and reported, as after a restart), then claim again."""
        await self.egress.check()  # an engine restart may have flushed DOCKER-USER
        found = await self._recovery(keep=self._runs_here).run()
        log.info(
            "orchestrator.engine_reconciled attempts=%d",
            len(found),
            extra={"event": "orchestrator.engine_reconciled"},
        )

    def _runs_here(self, job_id: str, attempt: int) -> bool:
        running = self.registry.get(job_id)
        return running is not None and running.attempt == attempt

    def _claim_asker(self) -> Ask:
        key = self.config.claim_public_key
        return claim_asker(
            self.nc,
            self.config.claim_timeout_s,
            verifier=ClaimVerifier(key) if key is not None else None,
            rejected=lambda why: self.metrics.claim_answers_rejected.labels(why).inc(),
        )

    def _claimer(self, queue: str) -> Claimer:
        return Claimer(
            nc=self.nc,
            js=self.js,
            queue=queue,
            config=self.config,
            slots=self._slots,
            registry=self.registry,
            launch=self.launch,
            ask=self._ask,
            engine=self._context.engine,
            engine_up=self.engine.wait_up,
            egress_ok=lambda: self.egress.allows_egress,
        )

    def _recovery(self, keep: Callable[[str, int], bool] | None = None) -> Recovery:
        async def last(job_id: str) -> LastBatch:
            own = self.config.orchestrator_id
            return await until_stored(
                self.nc, lambda: last_batch(self.js, job_id, own), "last log batch"
            )

        return Recovery(
            runtime=self.runtime,
            reports=self.reporter,
            registry=self.registry,
            orchestrator=self.config.orchestrator_id,
            stop_grace_s=self.config.stop_grace_s,
            log_sink=self._log_sink,
            last_batch=last,
            deployment=self._context.deployment,
            keep=keep,
        )

    def _log_sink(self, job_id: str, attempt: int) -> LogSinkPort:
        """Called inside the attempt's span: every batch carries its trace context, so that
        the log relay's spans join the job's trace."""
        sink = LogSink(
            self.nc,
            self.js,
            job_id,
            attempt,
            orchestrator=self.config.orchestrator_id,
            window=self.config.log_window,
            headers=tracing.current_headers(),
            superseded=functools.partial(later_attempt_claimed, self.js, job_id, attempt),
        )
        return CountingLogSink(sink, self.metrics.log_lines)

    async def serve_metrics(self) -> web.AppRunner | None:
        """Serve /metrics, /healthz and /readyz if the config says where; the runner, to stop."""
        if self.config.metrics_listen is None:
            return None

        async def nats() -> bool:
            return self.nc.is_connected

        async def ready() -> bool:
            return self.ready.is_set()

        async def docker() -> bool:
            return self.engine.up

        async def egress() -> bool:
            return self.egress.allows_egress

        probes = {"nats": nats, "docker": docker, "claiming": ready, "egress": egress}
        reasons = {"docker": lambda: self.engine.error, "egress": lambda: self.egress.error}
        return await serve_metrics(
            self.metrics, probes, *self.config.metrics_listen, reasons=reasons
        )


def docker_client(max_jobs: int) -> aiodocker.Docker:
    """An engine client with room for every running job's attach and wait connections."""
    limit = max(100, 2 * max_jobs + 16)
    host = os.environ.get("DOCKER_HOST")
    if host is None:
        for path in (Path("/var/run/docker.sock"), Path("/run/docker.sock")):
            if path.is_socket():
                host = f"unix://{path}"
                break
    if host is not None and host.startswith("unix://"):
        connector = aiohttp.UnixConnector(host.removeprefix("unix://"), limit=limit)
        # The host part only composes URLs, as aiodocker does for its own unix connector.
        return aiodocker.Docker(url="unix://localhost", connector=connector)
    return aiodocker.Docker()  # aiohttp's default pool (100) for TCP and other transports


async def close_docker(docker: aiodocker.Docker) -> None:
    await docker.close()
    if not docker.connector.closed:
        await docker.connector.close()  # ours, when we passed it in


@asynccontextmanager
async def bootstrap(
    settings: Settings,
    *,
    config: OrchestratorConfig | None = None,
    runtime: ContainerRuntime | None = None,
    ask: Ask | None = None,
) -> AsyncIterator[Orchestrator]:
    """Wire the real adapters (NATS, JetStream topology, the Docker engine); close them after."""
    config = config or OrchestratorConfig.from_settings(settings)
    nc = await connect(
        settings.nats_url,
        f"orchestrator {config.orchestrator_id}",
        security=Security.of(
            settings.nats_security, inbox_prefix("orchestrator", config.orchestrator_id)
        ),
    )
    docker: aiodocker.Docker | None = None
    try:
        js = jetstream(nc)
        # Made by the scheduler; an orchestrator may only look (bus/permissions.py).
        deployment = await await_topology(
            js, orchestrator_needs(config.queues), who=f"orchestrator {config.orchestrator_id}"
        )
        engine: str | None = None
        if runtime is None:
            docker = docker_client(config.max_jobs)
            runtime = DockerRuntime(docker)
            try:
                engine = await required_engine_id(docker)
            except RuntimeUnavailable as exc:
                # Its ledger entries then name no engine: janitors remove what they see of
                # them, but never mark one gone from an engine they cannot name.
                log.warning(
                    "orchestrator.engine_id_unknown error=%s",
                    exc,
                    extra={"event": "orchestrator.engine_id_unknown"},
                )
        yield Orchestrator(config, nc, js, runtime, ask=ask, engine=engine, deployment=deployment)
    finally:
        if docker is not None:
            await close_docker(docker)
        await close(nc)


async def run_orchestrator(settings: Settings) -> None:
    """`dockyard orchestrator`: run until SIGTERM or SIGINT, then drain and return."""
    gc_policy.apply()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tracing.configure_tracing(tracing.ORCHESTRATOR)
    try:
        config = OrchestratorConfig.from_settings(settings)  # ConfigError: a bad claim key
        if config.claim_public_key is None:
            log.warning(
                "orchestrator.claims_unverified: DOCKYARD_CLAIM_PUBLIC_KEY is not set, so this "
                "orchestrator runs any claim answer, signed or not: whoever can publish on "
                "NATS can make it run any container (development only)",
                extra={"event": "orchestrator.claims_unverified"},
            )
        async with bootstrap(settings, config=config) as orchestrator:
            log.info(
                "orchestrator.started id=%s queues=%s max_jobs=%d",
                orchestrator.config.orchestrator_id,
                ",".join(orchestrator.config.queues),
                orchestrator.config.max_jobs,
            )
            metrics = await orchestrator.serve_metrics()
            try:
                await orchestrator.run(stop)
            finally:
                if metrics is not None:
                    await metrics.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await tracing.shutdown_tracing()
