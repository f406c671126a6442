"""The log relay under test: a real container's output published as the orchestrator does,
jobs in PostgreSQL, the relay in-process or as a process to SIGKILL, and a client that tails
a log over WebSocket like the web page (reconnecting, resuming with `after=`).

The publisher is the tests' own (not the orchestrator's LogSink), so these tests depend only
on the LogBatch message: numbered lines, in order, `Nats-Msg-Id` from `log_batch_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck

from dockyard.bus import EventPublisher, connect, ensure_topology, jetstream, names, protocol
from dockyard.core import ClaimJob, ReportExit, ReportStarted, SubmitJob, uuid7
from dockyard.core.spec import JobSpec
from dockyard.handling.execute import execute
from dockyard.job_logs.store import LogStore
from dockyard.log_relay.app import build_app
from dockyard.log_relay.completion import Completion
from dockyard.log_relay.context import RelayContext, WsSettings, normal_origins
from dockyard.log_relay.holders import AttemptHolders
from dockyard.log_relay.metrics import RelayMetrics
from dockyard.log_relay.persister import LogPersister
from dockyard.log_relay.room import RoomLimits, Sources
from dockyard.log_relay.rooms import Rooms
from dockyard.runtime import DockerRuntime, LogLine, LogPipeline, LogPump, plan_job
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews
from dockyard.web.auth import Tokens

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"acme-token": "acme", "globex-token": "globex", "admin-token": "admin"}
TOKENS_ENV = "acme:acme-token,globex:globex-token,admin:admin-token"
PAGE_ORIGIN = "http://page.test:8700"
ORCHESTRATOR = "test-log-relay"


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 30.0, poll_s: float = 0.02
) -> None:
    """Until `check()` is true (it may be a coroutine function); TimeoutError after timeout_s."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(poll_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- publishing log batches as an orchestrator does


class BatchPublisher:
    """One attempt's batches, in seq order, `window` in flight, each until JetStream has it.

    When an ack fails (NATS restarted) every batch not yet acked is sent again, in order;
    a copy that had been stored is dropped by its Nats-Msg-Id.
    """

    def __init__(
        self,
        js: JetStreamContext,
        job_id: str,
        attempt: int = 1,
        *,
        window: int = 16,
        orchestrator: str = ORCHESTRATOR,
    ) -> None:
        """As `orchestrator` sends them (the one `Jobs` claims every attempt for)."""
        self._js = js
        self.job_id = job_id
        self.attempt = attempt
        self._window = window
        self._subject = names.log_subject(orchestrator, job_id)
        self._nonce = protocol.new_nonce()
        self._in_flight: deque[tuple[str, bytes, asyncio.Future[PubAck]]] = deque()
        self.lines = 0

    async def publish(self, lines: list[LogLine], *, last_seq: int | None = None) -> None:
        if not lines and last_seq is None:
            return
        batch = protocol.LogBatch(
            job_id=self.job_id, attempt=self.attempt, lines=lines, last_seq=last_seq
        )
        fact = (
            protocol.log_batch_id(self.job_id, lines[0].seq)
            if lines
            else protocol.log_end_id(self.job_id, self.attempt)
        )
        msg_id = protocol.msg_id_of(self._nonce, fact)
        payload = protocol.encode(batch)
        self._in_flight.append((msg_id, payload, await self._send(msg_id, payload)))
        self.lines += len(lines)
        while len(self._in_flight) > self._window:
            await self._settle()

    async def flush(self) -> None:
        while self._in_flight:
            await self._settle()

    async def _send(self, msg_id: str, payload: bytes) -> asyncio.Future[PubAck]:
        try:
            return await self._js.publish_async(
                self._subject, payload, headers={names.MSG_ID: msg_id}, stream=names.LOGS_STREAM
            )
        except Exception as error:
            failed: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
            failed.set_exception(error)
            return failed

    async def _settle(self) -> None:
        while True:
            _, _, ack = self._in_flight[0]
            try:
                async with asyncio.timeout(5.0):
                    await ack
            except Exception:
                await self._resend()
                continue
            self._in_flight.popleft()
            return

    async def _resend(self) -> None:
        for _, _, ack in self._in_flight:
            if not ack.done():
                ack.cancel()
            elif not ack.cancelled():
                ack.exception()
        await asyncio.sleep(0.2)
        resent = deque()
        for msg_id, payload, _ in self._in_flight:
            resent.append((msg_id, payload, await self._send(msg_id, payload)))
        self._in_flight = resent


def lines_of(job_seq: Iterable[int], attempt: int = 1) -> list[LogLine]:
    """Contract lines `line <seq>` on stdout (for tests that publish without a container)."""
    now = datetime.now(UTC)
    return [LogLine(seq, "stdout", f"line {seq}", now, attempt) for seq in job_seq]


async def run_container(
    docker: Any,
    image: str,
    command: list[str],
    publisher: BatchPublisher,
    *,
    next_seq: int = 1,
) -> int:
    """Run `command` in a hardened container and publish its output as log batches.

    Returns the last seq published.
    """
    runtime = DockerRuntime(docker)
    spec = JobSpec(image=image, command=command)
    plan = plan_job(
        spec, job_id=publisher.job_id, attempt=publisher.attempt, orchestrator=ORCHESTRATOR
    )
    container = await runtime.create_container(plan.job)
    pipeline = LogPipeline(attempt=publisher.attempt, next_seq=next_seq)
    pump = LogPump(pipeline)
    try:
        async with runtime.stream_output(container) as output:
            await runtime.start(container)
            await pump.run(output, publisher.publish)
        await runtime.wait(container)
    finally:
        await runtime.remove(container)
    await publisher.flush()
    return pipeline.next_seq - 1


# -- jobs in PostgreSQL, their end published as the outbox relay does


class Jobs:
    """Jobs of the read model, moved through their life by the core's commands."""

    def __init__(self, store: PgEventStore, js: JetStreamContext) -> None:
        self.store = store
        self._events = EventPublisher(js)

    async def running(self, tenant: str = "acme", image: str = "busybox") -> str:
        job_id = uuid7()
        await execute(self.store, job_id, SubmitJob(tenant=tenant, spec=JobSpec(image=image)))
        await execute(self.store, job_id, ClaimJob(attempt=1, orchestrator=ORCHESTRATOR))
        started = ReportStarted(attempt=1, container_id="c", orchestrator=ORCHESTRATOR)
        await execute(self.store, job_id, started)
        return job_id

    async def finish(self, job_id: str, exit_code: int = 0) -> None:
        """The exit, appended and its terminal event published (after the last batch)."""
        outcome = await execute(self.store, job_id, ReportExit(attempt=1, exit_code=exit_code))
        for event in outcome.events:
            await self._events.publish(event)


# -- the relay


@dataclass
class Relay:
    url: str  # http://127.0.0.1:port
    ctx: RelayContext
    persister: LogPersister
    js: JetStreamContext
    nc: NatsClient

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")


@asynccontextmanager
async def relay_in_process(
    nats_url: str,
    database_url: str,
    *,
    limits: RoomLimits | None = None,
    ws: WsSettings | None = None,
    persist: bool = True,
) -> AsyncIterator[Relay]:
    """The relay's parts wired as service.py does, serving on a free port."""
    pool: Pool = await create_pool(database_url)
    persist_nc = await connect(nats_url, "test log-relay persist")
    live_nc = await connect(nats_url, "test log-relay live")
    js = jetstream(persist_nc)
    await ensure_topology(js)
    store = LogStore(pool)
    metrics = RelayMetrics()
    views = PgJobViews(pool)
    completion = Completion(jetstream(live_nc))
    holders = AttemptHolders(pool)
    rooms = Rooms(
        Sources(live_nc, store, views, completion, metrics, limits or RoomLimits(), holders)
    )
    ctx = RelayContext(
        store=store,
        views=views,
        tokens=Tokens(TOKENS),
        completion=completion,
        rooms=rooms,
        metrics=metrics,
        allowed_origins=normal_origins([PAGE_ORIGIN]),
        ws=ws or WsSettings(),
    )
    persister = LogPersister(js, store, metrics, holders=holders)
    runner = web.AppRunner(build_app(ctx), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    task = asyncio.create_task(persister.run()) if persist else None
    try:
        yield Relay(f"http://127.0.0.1:{port}", ctx, persister, js, persist_nc)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        await rooms.close_all()
        await live_nc.close()
        await persist_nc.close()
        await pool.close()


class RelayProcess:
    """`python -m dockyard.log_relay` with the contract's variables, to SIGKILL and restart."""

    def __init__(self, nats_url: str, database_url: str, *, origins: str = PAGE_ORIGIN) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DOCKYARD_NATS_URL": nats_url,
            "DOCKYARD_DATABASE_URL": database_url,
            "DOCKYARD_LOGS_LISTEN": f"127.0.0.1:{self.port}",
            "DOCKYARD_TOKENS": TOKENS_ENV,
            "DOCKYARD_ALLOWED_ORIGINS": origins,
            "DOCKYARD_LOG_FORMAT": "text",
        }
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = Path(f"/tmp/dockyard-log-relay-{uuid.uuid4().hex[:8]}.log")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout_s: float = 30.0) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dockyard.log_relay",
                env=self.env,
                cwd=REPO,
                stdout=log_file,
                stderr=log_file,
            )
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"the log relay exited:\n{self.output()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the log relay never got ready:\n{self.output()}")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self, timeout_s: float = 15.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout_s):
            return await self.process.wait()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@asynccontextmanager
async def relay_process(nats_url: str, database_url: str, **kw: Any) -> AsyncIterator[RelayProcess]:
    relay = RelayProcess(nats_url, database_url, **kw)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.kill()
        relay.log_path.unlink(missing_ok=True)


# -- a client tailing a log


class _Line(msgspec.Struct):
    seq: int
    stream: str
    text: str
    at: str
    attempt: int


class _Frame(msgspec.Struct):
    type: str
    lines: list[_Line] = []
    status: str | None = None
    exit_code: int | None = None
    reason: str | None = None


_frame = msgspec.json.Decoder(_Frame)


@dataclass
class Tail:
    """Follows a job's log over WebSocket; reconnects and resumes after its last seq.

    Every line must follow the previous one (seq + 1): a gap or a repeat fails the test.
    """

    ws_url: str
    job_id: str
    token: str = "acme-token"
    after: int = 0
    by_subprotocol: bool = False
    origin: str | None = None
    texts: list[str] = field(default_factory=list)
    frames: int = 0
    connects: int = 0
    close_codes: list[int] = field(default_factory=list)
    end: _Frame | None = None

    async def run(self, *, reconnect: bool = True, timeout_s: float = 60.0) -> _Frame:
        async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session:
            failures = 0
            while True:
                try:
                    await self._once(session)
                    failures = 0
                except (aiohttp.ClientError, ConnectionError):
                    if not reconnect:
                        raise
                    failures += 1
                    self.close_codes.append(-1)  # refused or cut before a close frame
                if self.end is not None:
                    return self.end
                if not reconnect:
                    raise AssertionError(f"closed without an end frame: {self.close_codes}")
                await asyncio.sleep(min(1.0, 0.05 * 2**failures))

    async def _once(self, session: aiohttp.ClientSession) -> None:
        url = f"{self.ws_url}/v1/jobs/{self.job_id}/logs/ws?after={self.after}"
        headers = {} if self.origin is None else {"Origin": self.origin}
        protocols: tuple[str, ...] = ()
        if self.by_subprotocol:
            protocols = ("dockyard.v1", f"bearer.{self.token}")
        else:
            headers["Authorization"] = f"Bearer {self.token}"
        async with session.ws_connect(url, headers=headers, protocols=protocols) as ws:
            self.connects += 1
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:  # the contract's frames are text
                    break
                self.take(msg.data.encode())
            self.close_codes.append(ws.close_code or 0)

    def take(self, data: bytes) -> None:
        frame = _frame.decode(data)
        self.frames += 1
        if frame.type == "end":
            self.end = frame
            return
        assert frame.type == "lines", frame.type
        for line in frame.lines:
            assert line.seq == self.after + 1, f"after {self.after} came {line.seq}"
            self.after = line.seq
            self.texts.append(line.text)


async def stored_seqs(pool: Pool, job_id: str) -> list[int]:
    """Every seq stored for the job, in order (repeats included, if any were stored)."""
    rows = await pool.fetch(
        "SELECT first_seq, last_seq FROM log_chunks WHERE job_id = $1 ORDER BY first_seq",
        job_id,
    )
    return [seq for row in rows for seq in range(row["first_seq"], row["last_seq"] + 1)]
