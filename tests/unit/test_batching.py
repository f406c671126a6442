"""execute_many and CommandBatcher: the batch path gives exactly what `execute` one at a time
gives, for less; on the in-memory store (the PostgreSQL adapter holds the same contract)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from dockyard.batching import CommandBatcher, Request, execute_many
from dockyard.core import ClaimJob, JobSpec, Rejected, ReportStarted, SubmitJob, uuid7
from dockyard.core.errors import UnknownJob
from dockyard.handler import Outcome, execute
from dockyard.store.memory import InMemoryEventStore
from dockyard.store.ports import BatchConflict, PendingAppend, StoreUnavailable

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

    results = await execute_many(Away(), [Request(uuid7(), submit()), Request(uuid7(), submit())])
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
