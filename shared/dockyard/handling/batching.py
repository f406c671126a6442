"""Many commands, one read and one commit: how the scheduler keeps up with many jobs at once.

`execute` costs two round trips and a WAL flush per command. `execute_many` loads every job
of a batch in one query (none the batcher's `JobCache` already knows), runs `decide` for each
command in order (a job's later command sees its earlier ones' events), and appends all of
them in one statement. A conflict with another
writer anywhere in the batch makes it fall back to `execute` per job, which retries and tells
the cases apart; so the batch path changes cost, never outcomes.

`CommandBatcher` forms the batches: while one is being written, the commands that arrive
wait and go together in the next. Idle, a command goes alone at once, so batching adds no
latency; busy, the batch grows and the cost per command falls (group commit).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from dockyard.core import (
    Command,
    Context,
    Event,
    Job,
    Metadata,
    Rejected,
    SubmitJob,
    decide,
    fold,
    uuid7,
)
from dockyard.handling.execute import Clock, Outcome, execute, utc_now
from dockyard.handling.job_cache import JobCache, Known
from dockyard.process.cancelling import cancel_and_wait
from dockyard.store.ports import EventStore, PendingAppend, StoreUnavailable

log = logging.getLogger("dockyard.handling.batching")

MAX_BATCH = 256

Result = Outcome | Exception


class Request(NamedTuple):
    job_id: str
    command: Command
    meta: Metadata | None = None


async def execute_many(
    store: EventStore,
    requests: Sequence[Request],
    *,
    clock: Clock = utc_now,
    new_id: Callable[[], str] = uuid7,
    cache: JobCache | None = None,
) -> list[Result]:
    """Each request's Outcome, or the exception `execute` would have raised for it.

    With a `cache`, jobs it knows are not read (see `job_cache` for why that is safe), and it
    is left holding what this batch wrote.
    """
    cache = cache if cache is not None else JobCache(0)
    job_ids = list(dict.fromkeys(r.job_id for r in requests))
    try:
        known = await _current(store, job_ids, cache, _new_jobs(requests, cache))
        now = clock()
        results, appends, after = _decide_all(known, requests, now, new_id)
        doubtful = _doubtful(requests, results, cached=set(known) - known.read)
        if doubtful:  # a cached job's command wrote nothing: ask the store, decide again
            cache.forget(doubtful)
            known = await _current(store, job_ids, cache)
            results, appends, after = _decide_all(known, requests, now, new_id)
        if appends:
            await store.append_many(appends)
        for job_id, state in after.items():
            cache.put(job_id, state)
        return results
    except StoreUnavailable as error:  # the store is away: each request hears it
        cache.forget(job_ids)  # an append may have gone in without its answer
        return [error] * len(requests)
    except Exception as error:
        # A conflict with another writer, or one request's bad data (an id that is no
        # UUID) refusing the whole statement: one at a time, each gets its own answer.
        cache.forget(job_ids)
        log.info(
            "batch.one_by_one size=%d why=%s",
            len(requests),
            type(error).__name__,
            extra={"event": "batch.one_by_one"},
        )
        return await _one_by_one(store, requests, clock, new_id)


class _Current(dict[str, Known]):
    """Each job's state; `read` names those read from the store (the rest were cached)."""

    read: set[str]


async def _current(
    store: EventStore, job_ids: list[str], cache: JobCache, new: Collection[str] = ()
) -> _Current:
    """Each job's state: from the cache, assumed empty for `new` ones, else read."""
    current = _Current()
    for job_id in job_ids:
        known = Known(0, None) if job_id in new else cache.get(job_id)
        if known is not None:
            current[job_id] = known
    current.read = {job_id for job_id in job_ids if job_id not in current}
    if current.read:
        histories = await store.load_many(list(current.read))
        for job_id, history in histories.items():
            current[job_id] = Known(len(history), fold(r.event for r in history))
    return current


def _new_jobs(requests: Sequence[Request], cache: JobCache) -> set[str]:
    """Jobs whose first command here is a submit: assumed not to exist yet (their ids are
    fresh). If one does, the insert at version 1 collides, as with a stale cache entry."""
    first: dict[str, Command] = {}
    for request in requests:
        first.setdefault(request.job_id, request.command)
    return {
        job_id
        for job_id, command in first.items()
        if isinstance(command, SubmitJob) and cache.get(job_id) is None
    }


def _doubtful(requests: Sequence[Request], results: list[Result], cached: set[str]) -> set[str]:
    """Cached jobs with a command that wrote nothing: no insert would reveal a stale state."""
    return {
        request.job_id
        for request, result in zip(requests, results, strict=True)
        if request.job_id in cached and (isinstance(result, Exception) or not result.events)
    }


def _decide_all(
    known: Mapping[str, Known],
    requests: Sequence[Request],
    now: datetime,
    new_id: Callable[[], str],
) -> tuple[list[Result], list[PendingAppend], dict[str, Known]]:
    """The pure part: decide each command on its job as the batch has left it so far; also
    each job's state after the batch."""
    jobs = {job_id: state.job for job_id, state in known.items()}
    new: dict[str, list[Event]] = defaultdict(list)
    results: list[Result] = []
    for job_id, command, meta in requests:
        job = jobs[job_id]
        try:
            events = decide(
                job, command, Context(job_id=job_id, now=now, meta=meta or Metadata()), new_id
            )
        except Exception as error:  # the core's Rejected (and UnknownJob): this one only
            results.append(error)
            continue
        if events:
            job = jobs[job_id] = fold(events, job)
            new[job_id].extend(events)
        results.append(Outcome(job, events))
    appends = [
        PendingAppend(job_id, known[job_id].version, events, _view(jobs[job_id]))
        for job_id, events in new.items()
    ]
    after = {
        job_id: Known(state.version + len(new.get(job_id, ())), jobs[job_id])
        for job_id, state in known.items()
    }
    return results, appends, after


def _view(job: Job | None) -> Job:
    assert job is not None  # a job with new events exists
    return job


async def _one_by_one(
    store: EventStore, requests: Sequence[Request], clock: Clock, new_id: Callable[[], str]
) -> list[Result]:
    """Each job's requests in order, jobs side by side: the slow path after a conflict."""
    by_job: dict[str, list[int]] = defaultdict(list)
    for i, request in enumerate(requests):
        by_job[request.job_id].append(i)
    results: list[Result | None] = [None] * len(requests)

    async def run_job(indexes: list[int]) -> None:
        unrecorded: Exception | None = None
        for i in indexes:
            if unrecorded is not None:
                # A job's commands are recorded in order or not at all: an exit recorded
                # before the start that failed here would leave the start to come after it.
                results[i] = unrecorded
                continue
            job_id, command, meta = requests[i]
            try:
                results[i] = await execute(
                    store, job_id, command, meta=meta, clock=clock, new_id=new_id
                )
            except Rejected as error:  # final: the next command may still apply
                results[i] = error
            except Exception as error:
                results[i] = unrecorded = error

    await asyncio.gather(*(run_job(indexes) for indexes in by_job.values()))
    return [r for r in results if r is not None]


class CommandBatcher:
    """Runs commands through `execute_many`, one batch at a time, in arrival order."""

    def __init__(
        self,
        store: EventStore,
        *,
        clock: Clock = utc_now,
        max_batch: int = MAX_BATCH,
        cache: JobCache | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._max_batch = max_batch
        self._waiting: list[tuple[Request, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None
        self._cache = cache if cache is not None else JobCache()
        self.batches = 0

    async def execute(
        self, job_id: str, command: Command, *, meta: Metadata | None = None
    ) -> Outcome:
        """As `handler.execute`: the Outcome, or the exception it would raise."""
        result = await self.submit(Request(job_id, command, meta))
        if isinstance(result, Exception):
            raise result
        return result

    async def execute_all(self, requests: Sequence[Request]) -> list[Result]:
        """Several requests, queued together in this order; each one's result."""
        return list(await asyncio.gather(*(self.submit(r) for r in requests)))

    def submit(self, request: Request) -> asyncio.Future[Result]:
        """Queue one request; its future resolves once its batch is written (never raises)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="command-batcher")
        return future

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        for _, future in self._waiting:
            future.cancel()
        self._waiting.clear()

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = (
                self._waiting[: self._max_batch],
                self._waiting[self._max_batch :],
            )
            results = await execute_many(
                self._store, [r for r, _ in batch], clock=self._clock, cache=self._cache
            )
            self.batches += 1
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
