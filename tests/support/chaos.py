"""A steady run of jobs through a cluster (tests/support/cluster.py) while a fault strikes,
and the checks that nothing was lost: every job ends once, its history has no gap and one
start per attempt, Docker started one container per attempt, the log has no gap and no
repeat, a WebSocket follower saw every line, and nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import aiodocker

from dockyard.bus import names
from dockyard.client.api import ApiClient, ClientError
from dockyard.client.follow import follow_log
from dockyard.client.target import Target
from tests.support.cluster import Cluster, until

TERMINAL: Final = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
TERMINAL_EVENTS: Final = frozenset(
    {"job_succeeded", "job_failed", "job_timed_out", "job_cancelled"}
)
SHORT_LINES: Final = ("one", "two", "three")
# Retries allow a rerun after a lost orchestrator (the default policy would end the job).
RETRY: Final = {"max_attempts": 3, "backoff_s": 0.5}


def long_command(lines: int, every_s: float) -> list[str]:
    return ["sh", "-c", f"i=1; while [ $i -le {lines} ]; do echo line $i; i=$((i+1)); "
            f"sleep {every_s}; done"]  # fmt: skip


@dataclass
class ContainerStarts:
    """Every job container Docker started for one deployment, by (job, attempt), from the
    engine's own event stream, and when each died."""

    deployment: str
    starts: Counter[tuple[str, int]] = field(default_factory=Counter)
    started_at: dict[str, float] = field(default_factory=dict)
    died_at: dict[str, float] = field(default_factory=dict)
    container_of: dict[tuple[str, int], str] = field(default_factory=dict)
    _docker: aiodocker.Docker | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._docker = aiodocker.Docker()
        filters = {"type": ["container"], "event": ["start", "die"],
                   "label": [f"{names.LABEL_DEPLOYMENT}={self.deployment}"]}  # fmt: skip
        subscriber = self._docker.events.subscribe(filters=json.dumps(filters))
        self._task = asyncio.create_task(self._read(subscriber))
        await asyncio.sleep(0.2)  # the engine has the subscription before any job starts

    async def _read(self, subscriber: Any) -> None:
        while (event := await subscriber.get()) is not None:
            attrs = event.get("Actor", {}).get("Attributes", {})
            job, attempt = attrs.get(names.LABEL_JOB), attrs.get(names.LABEL_ATTEMPT)
            if job is None or attempt is None or "dockyard.sidecar" in attrs:
                continue
            key = (job, int(attempt))
            if event.get("status") == "start":
                self.starts[key] += 1
                self.container_of[key] = event.get("id", "")
                self.started_at[event.get("id", "")] = time.monotonic()
            elif event.get("status") == "die":
                self.died_at[event.get("id", "")] = time.monotonic()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._docker is not None:
            with contextlib.suppress(Exception):
                await self._docker.events.stop()
            await self._docker.close()

    async def leftovers(self) -> list[str]:
        """Containers and networks of the deployment that still exist."""
        assert self._docker is not None
        label = {"label": [f"{names.LABEL_DEPLOYMENT}={self.deployment}"]}
        containers = await self._docker.containers.list(all=True, filters=json.dumps(label))
        networks = await self._docker.networks.list(filters=label)
        return [c.id for c in containers] + [n["Name"] for n in networks]


@dataclass
class Load:
    cluster: Cluster
    image: str
    tag: str
    short: list[str] = field(default_factory=list)
    long: list[str] = field(default_factory=list)
    followed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    submit_errors: list[str] = field(default_factory=list)
    docker: ContainerStarts | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def target(self) -> Target:
        return self.cluster.target

    def spec(self, command: list[str], key: str) -> dict[str, Any]:
        return {"image": self.image, "command": command, "labels": {"chaos": self.tag},
                "retry": RETRY, "idempotency_key": f"{self.tag}-{key}"}  # fmt: skip

    async def _submit(self, api: ApiClient, spec: dict[str, Any]) -> str:
        """Submit, retrying through a fault (the idempotency key makes a retry the same job)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return str((await api.submit(spec))["id"])
            except ClientError as error:
                self.submit_errors.append(str(error))
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    def submit_short(self, count: int, over_s: float) -> None:
        """`count` short jobs, at an even rate over `over_s`, in the background."""
        self._tasks.append(asyncio.create_task(self._short(count, over_s)))

    async def _short(self, count: int, over_s: float) -> None:
        command = ["sh", "-c", "; ".join(f"echo {line}" for line in SHORT_LINES)]
        started = time.monotonic()
        async with ApiClient(self.target) as api:
            for i in range(count):
                self.short.append(await self._submit(api, self.spec(command, f"s{i}")))
                await asyncio.sleep(max(0.0, started + over_s * (i + 1) / count - time.monotonic()))

    async def submit_long(self, count: int, lines: int, every_s: float) -> list[str]:
        """`count` long jobs printing `lines` lines, each followed over the WebSocket."""
        async with ApiClient(self.target) as api:
            ids = [
                await self._submit(api, self.spec(long_command(lines, every_s), f"l{i}"))
                for i in range(count)
            ]
        for job_id in ids:
            self.long.append(job_id)
            self.followed[job_id] = []
            self._tasks.append(asyncio.create_task(self._follow(job_id)))
        return ids

    async def _follow(self, job_id: str) -> None:
        await follow_log(self.target, job_id, self.followed[job_id].append)

    @property
    def jobs(self) -> list[str]:
        return [*self.short, *self.long]

    async def wait_done(self, within_s: float) -> None:
        """Every submission made and followed to its end, every job terminal."""
        async with asyncio.timeout(within_s):
            await asyncio.gather(*self._tasks)
        async with ApiClient(self.target) as api:

            async def all_terminal() -> bool:
                views = await asyncio.gather(*(api.job(j) for j in self.jobs))
                return all(v["status"] in TERMINAL for v in views)

            await until(all_terminal, within_s, "every job terminal", every_s=1.0)


async def verify(load: Load, *, settle_s: float = 60.0) -> dict[str, Any]:
    """Assert that nothing was lost or run twice; the figures, for the test's own checks."""
    assert load.docker is not None
    figures: dict[str, Any] = {"jobs": len(load.jobs), "attempts": Counter()}
    async with ApiClient(load.target) as api:
        for job_id in load.jobs:
            view = await api.job(job_id)
            events = (await api.events(job_id))["events"]
            attempts = _check_history(job_id, view, events)
            figures["attempts"][view["attempt"]] += 1
            for attempt in attempts:
                starts = load.docker.starts[(job_id, attempt)]
                assert starts == 1, f"job {job_id} attempt {attempt}: {starts} containers"
            lines = await _whole_log(api, job_id)
            _check_log(job_id, view, lines, short=job_id in load.short)
            if job_id in load.followed:
                seen = [_shown(line) for line in load.followed[job_id]]
                assert seen == [_shown(line) for line in lines], f"follower of {job_id}: {seen}"
        await until(_no_leftovers(load), settle_s, "no container or network of the run left")
        await until(_ledgers_closed(api, load.jobs), settle_s, "every ledger entry released")
    return figures


def _shown(line: dict[str, Any]) -> tuple[int, int, str]:
    return line["seq"], line["attempt"], line["text"]


def _ledgers_closed(api: ApiClient, jobs: list[str]) -> Any:
    """A check: every resource the ledger recorded for the jobs is released (none left)."""
    open_jobs = set(jobs)

    async def check() -> bool:
        for job_id in sorted(open_jobs):
            if not _open_entries((await api.events(job_id))["events"]):
                open_jobs.discard(job_id)
        return not open_jobs

    return check


def _open_entries(events: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    def key(e: dict[str, Any]) -> tuple[str, str, int]:
        return e["data"]["kind"], e["data"]["name"], e["data"]["attempt"]

    intended = {key(e) for e in events if e["type"] == "resource_intended"}
    return intended - {key(e) for e in events if e["type"] == "resource_released"}


def _check_history(job_id: str, view: dict[str, Any], events: list[dict[str, Any]]) -> list[int]:
    """One terminal status, versions 1..n without a gap, one start per attempt; the
    attempts that started a container."""
    history = [(e["version"], e["type"], e["data"].get("attempt")) for e in events]
    where = f"job {job_id} ({view['status']}, attempt {view['attempt']}; {history})"
    assert view["status"] == "succeeded", f"{where}: {view['reason']}: {view['error']}"
    assert [e["version"] for e in events] == list(range(1, len(events) + 1)), where
    terminal = [e for e in events if e["type"] in TERMINAL_EVENTS]
    assert len(terminal) == 1, f"{where}: {terminal}"
    after = {e["type"] for e in events[events.index(terminal[0]) + 1 :]}
    assert after <= {"resource_released"}, f"{where}: after its end: {after}"
    started = Counter(e["data"]["attempt"] for e in events if e["type"] == "container_started")
    assert all(n == 1 for n in started.values()), f"{where}: starts {started}"
    assert view["attempt"] in started, f"{where}: the last attempt never started"
    return sorted(started)


async def _whole_log(api: ApiClient, job_id: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for _ in range(60):
        page = await api.log_page(job_id, lines[-1]["seq"] if lines else 0)
        lines.extend(page["lines"])
        if page["complete"] and not page["lines"]:
            return lines
        if not page["lines"]:
            await asyncio.sleep(0.5)
    raise AssertionError(f"the log of job {job_id} never became complete: {len(lines)} lines")


def _check_log(
    job_id: str, view: dict[str, Any], lines: list[dict[str, Any]], *, short: bool
) -> None:
    seqs = [line["seq"] for line in lines]
    assert seqs == list(range(1, len(lines) + 1)), f"job {job_id}: seqs {seqs}"
    last = view["attempt"]
    output = [
        line["text"] for line in lines if line["stream"] == "stdout" and line["attempt"] == last
    ]
    if short:
        assert output == list(SHORT_LINES), f"job {job_id}: {output}"
    else:
        assert output == [f"line {i}" for i in range(1, len(output) + 1)] and output, output


def _no_leftovers(load: Load) -> Any:
    assert load.docker is not None
    docker = load.docker

    async def check() -> bool:
        return not await docker.leftovers()

    return check


@contextlib.asynccontextmanager
async def load_on(cluster: Cluster, image: str, tag: str) -> AsyncIterator[Load]:
    """A Load with Docker's starts recorded from before its first job."""
    docker = ContainerStarts(await cluster.deployment())
    await docker.start()
    try:
        yield Load(cluster, image, tag, docker=docker)
    finally:
        await docker.stop()
