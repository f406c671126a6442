"""Running orchestrators against the real thing in tests: PostgreSQL, NATS, Docker.

`ControlPlane` is the scheduler's side in-process (the event store on PostgreSQL, the claim
responder, the report consumer and the outbox relay); `running_orchestrator` runs one
orchestrator in-process, `OrchestratorProcess` one in a subprocess (to SIGKILL or SIGTERM it).
The `assert_*` helpers are what every orchestrator test checks at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import sys
import time
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import msgspec
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus import (
    EventBatchPublisher,
    OutboxRelay,
    connect,
    ensure_topology,
    jetstream,
    names,
    protocol,
)
from dockyard.bus.connection import Security
from dockyard.bus.errors import BusError
from dockyard.bus.signing import ClaimSigner
from dockyard.config import load
from dockyard.core import Job, RequestCancel, SubmitJob, fold, uuid7
from dockyard.core.events import ContainerStarted, Event
from dockyard.core.log_line import LogLine
from dockyard.core.spec import JobSpec
from dockyard.handling.batching import CommandBatcher
from dockyard.handling.execute import execute
from dockyard.handling.job_cache import JobCache
from dockyard.job_logs.chunks import split_body
from dockyard.job_logs.store import LogStore
from dockyard.log_relay.holders import AttemptHolders
from dockyard.log_relay.persister import LogPersister
from dockyard.orchestrator import Orchestrator, OrchestratorConfig, bootstrap
from dockyard.process.cancelling import cancel_and_wait, raise_if_cancelled
from dockyard.scheduler.claims import ClaimResponder
from dockyard.scheduler.due import PgDueJobs, run_due_ticker
from dockyard.scheduler.reports import ReportConsumer
from dockyard.sealing import KeyRing
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore

log = logging.getLogger("tests.orchestration")

REPO = Path(__file__).resolve().parents[2]
TEST_LEASE_S = 6.0
# The test session's secrets key: the scheduler side seals with it, orchestrators open.
TEST_SECRETS_KEY = os.urandom(32)


def secrets_ring(holder: str) -> KeyRing:
    """The session's key ring, as the scheduler or an orchestrator loads it."""
    return KeyRing.of(TEST_SECRETS_KEY, holder=holder)


def new_orchestrator_id() -> str:
    return f"test-orch-{uuid.uuid4().hex[:8]}"


def spec(image: str, *command: str, **fields: Any) -> JobSpec:
    """A job spec as a user would send it (decoded strictly, so a typo fails the test)."""
    body: dict[str, Any] = {"image": image, **fields}
    if command:
        body["command"] = list(command)
    return msgspec.convert(body, JobSpec)


class ControlPlane:
    """The scheduler side: store, claims, reports, outbox relay. `async with` starts it."""

    def __init__(
        self,
        nats_url: str,
        database_url: str,
        *,
        queues: Iterable[str] = ("default",),
        due_tick_s: float = 0.05,
        relay_poll_s: float = 0.2,
        job_cache: JobCache | None = None,
        claim_signer: ClaimSigner | None = None,
        answer_claims: bool = True,
        security: Security | None = None,
        replicas: int = 1,
    ) -> None:
        """`due_tick_s`, `relay_poll_s`: short for tests that wait on retries or on events no
        notification announces; benchmarks pass the service's. `claim_signer` signs the claim
        answers; `answer_claims=False` leaves claims to someone else (a forger, in tests).
        `security`: its NATS credentials and TLS (the scheduler's, on a NATS that asks).
        `replicas`: of every stream and bucket (3 on a cluster)."""
        self.security = security
        self.replicas = replicas
        self.claim_signer = claim_signer
        self.answer_claims = answer_claims
        self.nats_url = nats_url
        self.due_tick_s = due_tick_s
        self.relay_poll_s = relay_poll_s
        self.job_cache = job_cache
        self.database_url = database_url
        self.queues = tuple(queues)
        self._pool: Pool | None = None
        self._store: PgEventStore | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._responder: ClaimResponder | None = None
        self._deployment = ""

    @property
    def store(self) -> PgEventStore:
        assert self._store is not None
        return self._store

    @property
    def nc(self) -> NatsClient:
        assert self._nc is not None
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None
        return self._js

    async def __aenter__(self) -> ControlPlane:
        self._pool = await create_pool(self.database_url)
        self._store = PgEventStore(self._pool)
        self._nc = await connect(self.nats_url, "test control plane", security=self.security)
        self._js = jetstream(self._nc)
        self._deployment = await ensure_topology(
            self._js, queues=self.queues, lease_s=TEST_LEASE_S, replicas=self.replicas
        )
        # Shared, as the scheduler's service shares it.
        self.batcher = CommandBatcher(self._store, cache=self.job_cache)
        if self.answer_claims:
            self._responder = ClaimResponder(
                self._nc, self._store, batcher=self.batcher, signer=self.claim_signer
            )
            await self._responder.start()
        reports = ReportConsumer(self._nc, self._js, self._store, self.batcher)
        relay = OutboxRelay(
            self._store,
            EventBatchPublisher(self._nc, self._js),
            poll_interval_s=self.relay_poll_s,
        )
        due = PgDueJobs(self._pool)
        self._tasks = [
            asyncio.create_task(_forever("reports", reports.run)),
            asyncio.create_task(_forever("relay", relay.run)),
            asyncio.create_task(
                _forever("due", lambda: run_due_ticker(self.store, due, tick_s=self.due_tick_s))
            ),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._tasks)
        if self._responder is not None:
            with contextlib.suppress(Exception):
                await self._responder.stop()
        await self.batcher.close()
        if self._nc is not None:
            await self._nc.close()  # no drain: what the loops left unread does not matter
        if self._store is not None:
            await self._store.close()
        if self._pool is not None:
            await self._pool.close()

    async def submit(self, job_spec: JobSpec, tenant: str = "acme") -> str:
        job_id = uuid7()
        # Through the batcher, as the scheduler's API submits.
        await self.batcher.execute(job_id, SubmitJob(tenant=tenant, spec=job_spec))
        return job_id

    async def deployment(self) -> str:
        """The installation's id, as every service of it sees it."""
        return self._deployment

    async def cancel(self, job_id: str) -> None:
        await execute(self.store, job_id, RequestCancel(requested_by="test"))

    async def events(self, job_id: str) -> list[Event]:
        return [record.event for record in await self.store.load(job_id)]

    async def job(self, job_id: str) -> Job:
        job = fold(await self.events(job_id))
        assert job is not None
        return job

    async def wait_for(
        self, job_id: str, check: Callable[[Job], bool], timeout_s: float = 30.0, what: str = ""
    ) -> Job:
        deadline = time.monotonic() + timeout_s
        while True:
            job = await self.job(job_id)
            if check(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} never {what or 'got there'}: {job.status} {job.reason} "
                    f"{job.error} (attempt {job.attempt})"
                )
            await asyncio.sleep(0.05)

    async def wait_finished(self, job_id: str, timeout_s: float = 30.0) -> Job:
        return await self.wait_for(job_id, lambda j: j.finished, timeout_s, "finished")

    async def wait_running(self, job_id: str, timeout_s: float = 30.0) -> Job:
        return await self.wait_for(job_id, lambda j: j.status == "running", timeout_s, "ran")

    @property
    def pool(self) -> Pool:
        assert self._pool is not None
        return self._pool

    async def status_counts(self) -> dict[str, int]:
        """How many jobs are in each status (from the read model)."""
        assert self._pool is not None
        rows = await self._pool.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
        return {str(row["status"]): int(row["n"]) for row in rows}

    async def log_lines(self, job_id: str) -> list[LogLine]:
        """Every line the LOGS stream holds for the job, in stream order (whoever sent it)."""
        subject = names.job_logs_filter(job_id)
        lines: list[LogLine] = []
        seq = 0
        while True:
            try:
                msg = await self.js.get_msg(
                    names.LOGS_STREAM, seq=seq + 1, subject=subject, next=True
                )
            except nats.js.errors.NotFoundError:
                return lines
            lines.extend(protocol.decode_log_batch(msg.data or b"").lines)
            assert msg.seq is not None
            seq = msg.seq

    async def stored_log_lines(self, job_id: str) -> list[LogLine]:
        """The job's log as the log relay stores it (and readers see it): what the LOGS
        stream holds is persisted first, as the relay does, sender checks included."""
        store = LogStore(self.pool)
        await LogPersister(self.js, store, holders=AttemptHolders(self.pool)).run_until_idle()
        page = await store.read(job_id, 0, 1_000_000, contiguous=False, exact=False)
        return [_line(raw) for chunk in page.chunks for raw in split_body(chunk.body)]


_line = msgspec.json.Decoder(LogLine).decode


async def _forever(what: str, run: Callable[[], Any]) -> None:
    """Keep a control-plane loop alive through whatever a fault test throws at it."""
    while True:
        raise_if_cancelled()
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("control plane %s restarted", what, exc_info=True)
            await asyncio.sleep(0.1)


def orchestrator_config(orchestrator_id: str, **overrides: Any) -> OrchestratorConfig:
    """Short waits: a 1 s stop grace (the contract's 10 s is asserted by a unit test)."""
    fields: dict[str, Any] = {
        "orchestrator_id": orchestrator_id,
        "lease_s": TEST_LEASE_S,
        "stop_grace_s": 1.0,
        "drain_s": 5.0,
        "fetch_timeout_s": 0.5,
        "claim_retry_s": 0.2,
        "claim_retry_max_s": 1.0,
        "secrets": secrets_ring("orchestrator"),
        **overrides,
    }
    return OrchestratorConfig(**fields)


_OWNER: contextvars.ContextVar[str | None] = contextvars.ContextVar("owner", default=None)


class TaskTracker:
    """Remembers every task created in a context owned by `owner` (the orchestrator's own
    task and whatever it, its NATS client and its Docker client start), to find leaks."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._previous: Any = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        self._previous = loop.get_task_factory()
        previous = self._previous

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            task = previous(loop, coro, **kw) if previous else asyncio.Task(coro, loop=loop, **kw)
            context = kw.get("context")
            owner = context.get(_OWNER) if context is not None else _OWNER.get()
            if owner == self.owner:
                self.tasks.add(task)
            return task

        loop.set_task_factory(factory)

    def uninstall(self) -> None:
        asyncio.get_running_loop().set_task_factory(self._previous)

    def context(self) -> contextvars.Context:
        context = contextvars.copy_context()
        context.run(_OWNER.set, self.owner)
        return context

    def alive(self) -> list[asyncio.Task[Any]]:
        return [task for task in self.tasks if not task.done()]


# The task tracker of each orchestrator running in this process, by id (for the soak test).
TRACKERS: dict[str, TaskTracker] = {}


@asynccontextmanager
async def running_orchestrator(
    nats_url: str, orchestrator_id: str | None = None, **overrides: Any
) -> AsyncIterator[Orchestrator]:
    """An orchestrator running in this process until the block ends (then it drains).

    Afterwards, no task it started may still be alive (checked here, for every test).
    """
    config = orchestrator_config(orchestrator_id or new_orchestrator_id(), **overrides)
    settings = load(
        {"DOCKYARD_NATS_URL": nats_url, "DOCKYARD_ORCHESTRATOR_ID": config.orchestrator_id}
    )
    tracker = TaskTracker(config.orchestrator_id)
    tracker.install()
    TRACKERS[config.orchestrator_id] = tracker
    stop = asyncio.Event()
    started: asyncio.Future[Orchestrator] = asyncio.get_running_loop().create_future()

    async def lifecycle() -> None:
        async with bootstrap(settings, config=config) as orchestrator:
            started.set_result(orchestrator)
            await orchestrator.run(stop)

    try:
        task = asyncio.create_task(lifecycle(), context=tracker.context())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # it failed to start: say why
        orchestrator = started.result()
        ready = asyncio.create_task(orchestrator.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
        try:
            yield orchestrator
        finally:
            stop.set()
            await task
        await assert_no_leaked_tasks(tracker)
    finally:
        tracker.uninstall()
        TRACKERS.pop(config.orchestrator_id, None)


class OrchestratorProcess:
    """`python -m dockyard.orchestrator` with the contract's variables, to signal and kill."""

    def __init__(self, nats_url: str, orchestrator_id: str, **env: str) -> None:
        self.env = {
            **os.environ,
            "DOCKYARD_NATS_URL": nats_url,
            "DOCKYARD_ORCHESTRATOR_ID": orchestrator_id,
            "DOCKYARD_LEASE_S": str(TEST_LEASE_S),
            # No egress rules unless a test asks: a process it SIGKILLs and never restarts
            # would leave its chains on the host (tests/integration/test_egress_policy.py).
            "DOCKYARD_EGRESS_DENY": "none",
            **env,
        }
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = Path(f"/tmp/dockyard-{orchestrator_id}.log")

    async def start(self) -> None:
        log_file = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dockyard.orchestrator",
                env=self.env,
                cwd=REPO,
                stdout=log_file,
                stderr=log_file,
            )
        finally:
            log_file.close()

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        async with asyncio.timeout(timeout_s):
            return await self.process.wait()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def wait_for_heartbeat(
    js: JetStreamContext, orchestrator_id: str, timeout_s: float = 20.0
) -> None:
    """Until the orchestrator's heartbeat key exists (it is up)."""
    kv = await js.key_value(names.HEARTBEATS_BUCKET)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await kv.get(names.heartbeat_key(orchestrator_id))
            return
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, BusError):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"orchestrator {orchestrator_id} never sent a heartbeat"
                ) from None
            await asyncio.sleep(0.1)


async def labelled(docker: aiodocker.Docker, orchestrator_id: str) -> list[str]:
    """Names of containers and networks still carrying this orchestrator's label."""
    filters = {"label": [f"{names.LABEL_ORCHESTRATOR}={orchestrator_id}"]}
    containers = await docker.containers.list(all=True, filters=filters)
    networks = await docker.networks.list(filters=filters)
    return [c["Names"][0] for c in containers] + [n["Name"] for n in networks]


async def assert_nothing_left(docker: aiodocker.Docker, orchestrator_id: str) -> None:
    left = await labelled(docker, orchestrator_id)
    assert left == [], f"left behind by {orchestrator_id}: {left}"


def assert_one_start_per_attempt(events: list[Event]) -> None:
    starts = Counter(e.attempt for e in events if isinstance(e, ContainerStarted))
    assert all(count == 1 for count in starts.values()), f"container_started per attempt: {starts}"


async def assert_no_leaked_tasks(tracker: TaskTracker, settle_s: float = 2.0) -> None:
    """No task the orchestrator started is still alive (a short settle for closing sockets)."""
    deadline = time.monotonic() + settle_s
    while leaked := tracker.alive():
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks leaked: {[repr(t) for t in leaked]}")
        await asyncio.sleep(0.05)


def assert_seqs_contiguous(lines: list[LogLine], first: int = 1) -> None:
    seqs = [line.seq for line in lines]
    assert seqs == list(range(first, first + len(seqs))), f"seqs not contiguous: {seqs[:50]}..."
