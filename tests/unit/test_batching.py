"""execute_many and CommandBatcher: the batch path gives exactly what `execute` one at a time
gives, for less; on the in-memory store (the PostgreSQL adapter holds the same contract)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from dockyard.core import (
    ClaimJob,
    JobSpec,
    Rejected,
    ReportExit,
    ReportStarted,
    RequestCancel,
    SubmitJob,
    uuid7,
)
from dockyard.core.errors import UnknownJob
from dockyard.core.events import ContainerStarted, JobClaimed, JobSucceeded
from dockyard.handling.batching import CommandBatcher, Request, execute_many
from dockyard.handling.execute import Outcome, execute
from dockyard.handling.job_cache import FINISHED_TTL_S, JobCache, Known
from dockyard.store.memory import InMemoryEventStore
from dockyard.store.ports import BatchConflict, PendingAppend, RecordedEvent, StoreUnavailable

SPEC = JobSpec(image="busybox")


def submit(tenant: str = "acme") -> SubmitJob:
    return SubmitJob(tenant=tenant, spec=SPEC)


def claim(attempt: int = 1, orchestrator: str = "o") -> ClaimJob:
    return ClaimJob(attempt=attempt, orchestrator=orchestrator)


def outcome(result: Outcome | Exception) -> Outcome:
    assert isinstance(result, Outcome), result
    return result


async def test_a_batch_of_new_jobs_is_stored_with_views() -> None:
    store = InMemoryEventStore()
    ids = [uuid7() for _ in range(5)]
    results = await execute_many(store, [Request(j, submit()) for j in ids])
    for job_id, result in zip(ids, results, strict=True):
        job = outcome(result).job
        assert job is not None and job.status == "queued"
        assert len(await store.load(job_id)) == job.version
        view = await store.get_view(job_id)
        assert view is not None and view["status"] == "queued"


async def test_commands_of_one_job_apply_in_order_within_a_batch() -> None:
    store = InMemoryEventStore()
    job_id = uuid7()
    results = await execute_many(
        store,
        [
            Request(job_id, submit()),
            Request(job_id, claim()),
            Request(job_id, claim(orchestrator="p")),  # the attempt is taken: refused
            Request(job_id, ReportStarted(attempt=1, orchestrator="o", container_id="c")),
        ],
    )
    assert outcome(results[1]).job is not None
    assert isinstance(results[2], Rejected)
    final = outcome(results[3]).job
    assert final is not None and final.status == "running" and final.orchestrator == "o"
    assert [r.version for r in await store.load(job_id)] == list(range(1, final.version + 1))


async def test_a_refused_command_leaves_the_others_of_the_batch_alone() -> None:
    store = InMemoryEventStore()
    good = uuid7()
    results = await execute_many(store, [Request(uuid7(), claim()), Request(good, submit())])
    assert isinstance(results[0], UnknownJob)
    assert outcome(results[1]).job is not None
    assert await store.load(good)


class ConflictOnce(InMemoryEventStore):
    """A second writer gets in between the batch's read and its write, once."""

    def __init__(self) -> None:
        super().__init__()
        self.raced: str | None = None

    async def append_many(self, appends: Sequence[PendingAppend]) -> None:
        if self.raced is not None:
            job_id, self.raced = self.raced, None
            await execute(self, job_id, claim(orchestrator="x"))  # one append: not this path
            raise BatchConflict("raced")
        await super().append_many(appends)


async def test_a_conflict_falls_back_to_one_job_at_a_time_with_the_same_outcomes() -> None:
    store = ConflictOnce()
    raced, other = uuid7(), uuid7()
    await execute_many(store, [Request(raced, submit())])
    store.raced = raced
    results = await execute_many(store, [Request(raced, claim()), Request(other, submit())])
    assert isinstance(results[0], Rejected)  # "x" claimed attempt 1 first
    assert outcome(results[1]).job is not None
    job = outcome((await execute_many(store, [Request(raced, claim(orchestrator="x"))]))[0]).job
    assert job is not None and job.orchestrator == "x"  # its claim again: a no-op


async def test_an_unavailable_store_is_every_requests_answer() -> None:
    class Away(InMemoryEventStore):
        async def load_many(self, job_ids: Sequence[str]) -> dict[str, list[object]]:  # type: ignore[override]
            raise StoreUnavailable("away")

        async def append_many(self, appends: Sequence[PendingAppend]) -> None:
            raise StoreUnavailable("away")

    store = Away()
    results = await execute_many(store, [Request(uuid7(), submit()), Request(uuid7(), claim())])
    assert all(isinstance(r, StoreUnavailable) for r in results)


async def test_the_batcher_groups_what_arrives_while_it_writes() -> None:
    store = InMemoryEventStore()
    batcher = CommandBatcher(store)
    ids = [uuid7() for _ in range(50)]
    try:
        outcomes = await asyncio.gather(*(batcher.execute(j, submit()) for j in ids))
        assert all(o.job is not None for o in outcomes)
        assert batcher.batches < len(ids)
        with pytest.raises(UnknownJob):
            await batcher.execute(uuid7(), claim())
    finally:
        await batcher.close()


async def test_one_requests_bad_id_does_not_fail_the_others_of_its_batch() -> None:
    store = InMemoryEventStore()
    good = uuid7()
    results = await execute_many(store, [Request("not-a-uuid", submit()), Request(good, submit())])
    assert isinstance(results[0], ValueError)
    assert outcome(results[1]).job is not None


class CountingLoads(InMemoryEventStore):
    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []

    async def load_many(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        self.loaded.extend(job_ids)
        return await super().load_many(job_ids)


def started(attempt: int = 1) -> ReportStarted:
    return ReportStarted(attempt=attempt, orchestrator="o", container_id="c")


async def test_a_cached_job_is_not_read_again_and_a_finished_one_is_dropped_soon() -> None:
    now = [0.0]
    store, cache = CountingLoads(), JobCache(clock=lambda: now[0])
    job_id = uuid7()
    for command in (submit(), claim(), started()):
        outcome((await execute_many(store, [Request(job_id, command)], cache=cache))[0])
    assert store.loaded == []  # a submit's fresh id needs no read; the rest were cached
    known = cache.get(job_id)
    assert known is not None and known.version == len(await store.load(job_id))
    await execute_many(store, [Request(job_id, ReportExit(attempt=1, exit_code=0))], cache=cache)
    assert cache.get(job_id) is not None  # the removal reports that follow need no read
    now[0] += FINISHED_TTL_S
    assert cache.get(job_id) is None  # then only duplicates come, and retention may purge it


async def test_a_submit_for_an_id_that_exists_is_caught_by_the_insert() -> None:
    """E.g. a schedule's fire that another scheduler made first: the batch assumes the id is
    new, and gives what one at a time gives once the insert collides."""
    job_id = uuid7()
    batched_store, alone_store = InMemoryEventStore(), InMemoryEventStore()
    for store in (batched_store, alone_store):
        await execute(store, job_id, submit())
    [batched] = await execute_many(batched_store, [Request(job_id, submit())], cache=JobCache())
    try:
        alone: Outcome | Exception = await execute(alone_store, job_id, submit())
    except Exception as error:
        alone = error
    assert type(batched) is type(alone)
    assert len(await batched_store.load(job_id)) == len(await alone_store.load(job_id))


async def test_another_writer_behind_the_cache_is_caught_by_the_insert() -> None:
    store, cache = InMemoryEventStore(), JobCache()
    job_id = uuid7()
    await execute_many(store, [Request(job_id, submit())], cache=cache)
    await execute(store, job_id, claim(orchestrator="x"))  # a second scheduler, say
    results = await execute_many(store, [Request(job_id, claim(orchestrator="y"))], cache=cache)
    assert isinstance(results[0], Rejected)  # "x" has attempt 1: what a fresh read says
    job = (await store.get_view(job_id)) or {}
    assert job["orchestrator"] == "x"


async def test_a_refusal_from_a_cached_state_is_checked_against_the_store() -> None:
    store, cache = CountingLoads(), JobCache()
    job_id = uuid7()
    await execute_many(store, [Request(job_id, submit())], cache=cache)
    await execute(store, job_id, claim(orchestrator="o"))  # the cache still says "queued"
    # On the cached state this start is refused (no claim); on the store's it is right.
    results = await execute_many(store, [Request(job_id, started())], cache=cache)
    job = outcome(results[0]).job
    assert job is not None and job.status == "running"
    assert store.loaded == [job_id]  # read only to check the refusal


async def test_a_duplicate_from_a_cached_state_is_checked_against_the_store() -> None:
    store, cache = InMemoryEventStore(), JobCache()
    job_id = uuid7()
    await execute_many(store, [Request(job_id, submit())], cache=cache)
    await execute(store, job_id, RequestCancel(requested_by="acme"))  # behind the cache
    stored = len(await store.load(job_id))
    # Cached: queued, so a cancel would write; the store's job is already cancelled.
    results = await execute_many(
        store, [Request(job_id, RequestCancel(requested_by="acme"))], cache=cache
    )
    assert isinstance(results[0], Rejected) or not outcome(results[0]).events
    assert len(await store.load(job_id)) == stored  # nothing written on the cached state


async def test_an_unavailable_store_forgets_what_the_batch_may_have_written() -> None:
    cache = JobCache()
    job_id = uuid7()
    cache.put(job_id, Known(1, None))
    store = InMemoryEventStore()
    await execute_many(store, [Request(job_id, submit())], cache=cache)
    cache.put(job_id, Known(99, (await execute(store, job_id, claim())).job))

    class Away(InMemoryEventStore):
        async def append_many(self, appends: Sequence[PendingAppend]) -> None:
            raise StoreUnavailable("away")

    results = await execute_many(Away(), [Request(job_id, started())], cache=cache)
    assert isinstance(results[0], StoreUnavailable)
    assert cache.get(job_id) is None


def test_the_cache_keeps_the_most_recently_used() -> None:
    cache = JobCache(capacity=2)
    job = Known(1, None)
    queued = outcome(asyncio.run(execute(InMemoryEventStore(), uuid7(), submit()))).job
    assert queued is not None
    for job_id in ("a", "b"):
        cache.put(job_id, Known(1, queued))
    assert cache.get("a") is not None  # "a" used last: "b" goes first
    cache.put("c", Known(1, queued))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    cache.put("a", job)  # no such job: not kept
    assert cache.get("a") is None


class StartFailsOnce(InMemoryEventStore):
    """Every batch conflicts, and the first single append of a start cannot be stored."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def append_many(self, appends: Sequence[PendingAppend]) -> None:
        if any(a.events and isinstance(a.events[0], ContainerStarted) for a in appends):
            raise BatchConflict("raced")
        await super().append_many(appends)

    async def append(self, job_id: str, expected_version: int, events, view=None) -> None:  # type: ignore[no-untyped-def,override]
        if not self.failed and events and isinstance(events[0], ContainerStarted):
            self.failed = True
            raise StoreUnavailable("away for a moment")
        await super().append(job_id, expected_version, events, view=view)


async def test_a_jobs_later_report_is_not_recorded_before_an_earlier_one_that_failed() -> None:
    store = StartFailsOnce()
    job_id = uuid7()
    await execute_many(store, [Request(job_id, submit()), Request(job_id, claim())])
    exit_ = ReportExit(attempt=1, exit_code=0, orchestrator="o")
    results = await execute_many(store, [Request(job_id, started()), Request(job_id, exit_)])
    # Both come again later (the consumer naks them), in order: the start is not overtaken.
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert type((await store.load(job_id))[-1].event) is JobClaimed
    results = await execute_many(store, [Request(job_id, started()), Request(job_id, exit_)])
    history = [type(r.event) for r in await store.load(job_id)]
    assert history[-2:] == [ContainerStarted, JobSucceeded]
