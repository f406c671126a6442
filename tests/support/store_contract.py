"""The event store contract, held against every adapter so the fake cannot drift from the real.

A subclass provides the `store` (EventStore) and `views` (JobViews of the same data) fixtures.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from msgspec.structs import replace

from dockyard.core import (
    ClaimJob,
    Context,
    Event,
    Job,
    JobSpec,
    Metadata,
    ReportExit,
    ReportStarted,
    SubmitJob,
    decide,
    fold,
    uuid7,
)
from dockyard.core.events import JobQueued
from dockyard.store.ports import (
    START,
    BatchConflict,
    ConcurrencyError,
    DuplicateIdempotencyKey,
    EventStore,
    InvalidCursor,
    JobViews,
    PendingAppend,
    Position,
)
from dockyard.store.read_model import job_view

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class History:
    """One job's life, made by running commands through decide as the services do."""

    def __init__(self, job_id: str | None = None, *, now: datetime = T0) -> None:
        self.job_id = job_id or uuid7()
        self.now = now
        self.events: list[Event] = []

    @property
    def job(self) -> Job | None:
        return fold(self.events)

    def run(self, command: Any, meta: Metadata | None = None) -> list[Event]:
        ctx = Context(job_id=self.job_id, now=self.now, meta=meta or Metadata())
        new = decide(self.job, command, ctx, uuid7)
        self.events.extend(new)
        self.now += timedelta(seconds=1)
        return new

    def submit(self, tenant: str = "acme", **spec: Any) -> list[Event]:
        return self.run(SubmitJob(tenant=tenant, spec=JobSpec(image="busybox", **spec)))

    def view(self) -> Job:
        job = self.job
        assert job is not None
        return job


async def write(store: EventStore, history: History, new: list[Event]) -> int:
    """Append `new`, the last events of `history`, with the view they leave."""
    expected = len(history.events) - len(new)
    return await store.append(history.job_id, expected, new, history.view())


async def submitted(store: EventStore, tenant: str = "acme", **spec: Any) -> History:
    history = History()
    await write(store, history, history.submit(tenant, **spec))
    return history


class EventStoreContract:
    """Behaviour every EventStore (and the JobViews over it) must show."""

    # -- append and load

    async def test_append_then_load_gives_back_equal_events(self, store: EventStore) -> None:
        history = History()
        new = history.submit()
        assert await store.append(history.job_id, 0, new) == 2
        loaded = await store.load(history.job_id)
        assert [r.event for r in loaded] == new
        assert [r.version for r in loaded] == [1, 2]
        assert loaded[0].at < loaded[1].at
        assert all(r.recorded_at.tzinfo is not None for r in loaded)

    async def test_metadata_round_trips(self, store: EventStore) -> None:
        history = History()
        meta = Metadata(correlation_id="c-1", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
        new = history.run(SubmitJob(tenant="acme", spec=JobSpec(image="busybox")), meta)
        await store.append(history.job_id, 0, new)
        assert [r.event for r in await store.load(history.job_id)] == new

    async def test_versions_are_contiguous_over_appends(self, store: EventStore) -> None:
        history = await submitted(store)
        assert await write(store, history, history.run(ClaimJob(attempt=1, orchestrator="o"))) == 3
        started = ReportStarted(attempt=1, container_id="c", orchestrator="o")
        assert await write(store, history, history.run(started)) == 4
        loaded = await store.load(history.job_id)
        assert [r.version for r in loaded] == [1, 2, 3, 4]
        assert [r.event for r in loaded] == history.events

    async def test_load_of_an_unknown_job_is_empty(self, store: EventStore) -> None:
        assert await store.load(uuid7()) == []

    async def test_empty_append_changes_nothing(self, store: EventStore) -> None:
        history = await submitted(store)
        assert await store.append(history.job_id, 2, []) == 2
        assert len(await store.load(history.job_id)) == 2

    async def test_another_jobs_event_is_refused(self, store: EventStore) -> None:
        history = History()
        with pytest.raises(ValueError, match="not"):
            await store.append(uuid7(), 0, history.submit())

    async def test_a_job_id_that_is_no_uuid_is_refused(self, store: EventStore) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - the driver's message varies
            await store.load("not-a-uuid")

    # -- optimistic concurrency

    async def test_stale_expected_version_raises_with_the_actual_one(
        self, store: EventStore
    ) -> None:
        history = await submitted(store)
        late = JobQueued(event_id=uuid7(), job_id=history.job_id, at=T0, attempt=1, queue="q")
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(history.job_id, 1, [late])
        assert (caught.value.expected, caught.value.actual) == (1, 2)

    async def test_expected_version_ahead_of_the_job_is_a_conflict(self, store: EventStore) -> None:
        history = await submitted(store)
        event = JobQueued(event_id=uuid7(), job_id=history.job_id, at=T0, attempt=1, queue="q")
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(history.job_id, 5, [event])
        assert caught.value.actual == 2

    async def test_two_concurrent_appends_at_one_version_one_wins(self, store: EventStore) -> None:
        for _ in range(10):
            history = await submitted(store)
            a = JobQueued(event_id=uuid7(), job_id=history.job_id, at=T0, attempt=1, queue="a")
            b = JobQueued(event_id=uuid7(), job_id=history.job_id, at=T0, attempt=1, queue="b")
            results = await asyncio.gather(
                store.append(history.job_id, 2, [a]),
                store.append(history.job_id, 2, [b]),
                return_exceptions=True,
            )
            wins = [r for r in results if r == 3]
            losses = [r for r in results if isinstance(r, ConcurrencyError)]
            assert (len(wins), len(losses)) == (1, 1), results
            assert losses[0].actual == 3
            loaded = await store.load(history.job_id)
            assert [r.version for r in loaded] == [1, 2, 3]
            assert loaded[2].event == (a if results[0] == 3 else b)

    async def test_reappending_stored_events_returns_the_current_version(
        self, store: EventStore
    ) -> None:
        history = History()
        first = history.submit()
        await store.append(history.job_id, 0, first)
        assert await store.append(history.job_id, 0, first) == 2  # the ack was lost: retry
        claim = history.run(ClaimJob(attempt=1, orchestrator="o"))
        await store.append(history.job_id, 2, claim)
        assert await store.append(history.job_id, 0, first) == 3  # a much later retry
        assert await store.append(history.job_id, 2, claim) == 3
        assert [r.event for r in await store.load(history.job_id)] == history.events

    async def test_a_partly_stored_batch_is_a_conflict(self, store: EventStore) -> None:
        history = History()
        first = history.submit()
        await store.append(history.job_id, 0, first[:1])
        with pytest.raises(ConcurrencyError):
            await store.append(history.job_id, 0, first)

    async def test_an_event_id_stored_for_another_job_is_a_conflict(
        self, store: EventStore
    ) -> None:
        history = await submitted(store)
        other = History()
        reused = other.submit()[0]
        clash = replace(reused, event_id=history.events[0].event_id)
        with pytest.raises(ConcurrencyError):
            await store.append(other.job_id, 0, [clash])
        assert await store.load(other.job_id) == []

    # -- the catch-up reader and checkpoints

    async def test_read_all_pages_through_every_event_in_commit_order(
        self, store: EventStore
    ) -> None:
        jobs = [History() for _ in range(3)]
        appended: list[Event] = []
        for history in jobs:
            new = history.submit()
            await store.append(history.job_id, 0, new)
            appended.extend(new)
        for history in reversed(jobs):
            new = history.run(ClaimJob(attempt=1, orchestrator="o"))
            await store.append(history.job_id, 2, new)
            appended.extend(new)
        seen: list[Event] = []
        positions: list[Position] = []
        after = START
        while page := await store.read_all(after, limit=4):
            assert len(page) <= 4
            seen.extend(r.event for r in page)
            positions.extend(r.at for r in page)
            after = page[-1].at
        assert seen == appended
        assert positions == sorted(set(positions))
        assert await store.read_all(after) == []

    async def test_checkpoints_start_at_the_start_and_keep_what_was_saved(
        self, store: EventStore
    ) -> None:
        assert await store.load_checkpoint("relay") == START
        await store.save_checkpoint("relay", Position(7, 42))
        await store.save_checkpoint("other", Position(1, 1))
        await store.save_checkpoint("relay", Position(9, 50))
        assert await store.load_checkpoint("relay") == Position(9, 50)
        assert await store.load_checkpoint("other") == Position(1, 1)

    async def test_wait_for_events_wakes_on_append_and_times_out_quietly(
        self, store: EventStore
    ) -> None:
        assert await store.wait_for_events(1.0)  # the first call: read again, maybe missed
        assert not await store.wait_for_events(0.05)
        waiting = asyncio.ensure_future(store.wait_for_events(10.0))
        await asyncio.sleep(0.05)
        await submitted(store)
        assert await asyncio.wait_for(waiting, 5.0)
        await submitted(store)  # while nobody waits: remembered for the next wait
        assert await store.wait_for_events(5.0)

    async def test_events_pending_says_whether_a_read_may_find_more(
        self, store: EventStore
    ) -> None:
        assert await store.wait_for_events(1.0)  # listening from here on
        await store.read_all(START)
        assert not store.events_pending()
        await submitted(store)
        async with asyncio.timeout(5):  # a notification arrives when the server sends it
            while True:
                if store.events_pending():
                    break
                await asyncio.sleep(0.01)
        assert await store.read_all(START)
        assert not store.events_pending()  # that read saw what was notified

    # -- the read model, written with the events

    async def test_view_is_the_fold_of_the_appended_events(
        self, store: EventStore, views: JobViews
    ) -> None:
        history = await submitted(store, labels={"team": "infra"})
        await write(store, history, history.run(ClaimJob(attempt=1, orchestrator="o-1")))
        view = await views.get_view(history.job_id)
        assert view == job_view(history.view())
        assert view is not None
        assert (view["status"], view["orchestrator"], view["version"]) == ("starting", "o-1", 3)
        assert await views.get_view(uuid7()) is None

    async def test_view_of_a_finished_job_has_its_times_and_exit(
        self, store: EventStore, views: JobViews
    ) -> None:
        history = await submitted(store)
        await write(store, history, history.run(ClaimJob(attempt=1, orchestrator="o")))
        started = ReportStarted(attempt=1, container_id="c", orchestrator="o")
        await write(store, history, history.run(started))
        await write(store, history, history.run(ReportExit(attempt=1, exit_code=3)))
        view = await views.get_view(history.job_id)
        assert view is not None
        assert (view["status"], view["reason"], view["exit_code"]) == ("failed", "exit_code", 3)
        assert view["created_at"] == "2026-03-01T12:00:00Z"
        assert view["finished_at"] == "2026-03-01T12:00:03Z"
        assert view["error"]

    async def test_a_conflicting_append_leaves_the_view_alone(
        self, store: EventStore, views: JobViews
    ) -> None:
        history = await submitted(store)
        stale = History(history.job_id, now=history.now)
        stale.events = list(history.events)
        await write(store, history, history.run(ClaimJob(attempt=1, orchestrator="first")))
        before = await views.get_view(history.job_id)
        new = stale.run(ClaimJob(attempt=1, orchestrator="late"))
        with pytest.raises(ConcurrencyError):
            await store.append(history.job_id, 2, new, stale.view())
        assert await views.get_view(history.job_id) == before

    async def test_a_view_that_is_not_the_appended_version_is_refused(
        self, store: EventStore, views: JobViews
    ) -> None:
        history = History()
        new = history.submit()
        with pytest.raises(ValueError, match="version"):
            await store.append(history.job_id, 0, new[:1], history.view())
        assert await store.load(history.job_id) == []
        assert await views.get_view(history.job_id) is None

    async def test_secret_values_are_masked_in_the_view(
        self, store: EventStore, views: JobViews
    ) -> None:
        history = await submitted(
            store, env={"TOKEN": "s3cret", "MODE": "fast"}, secrets=("TOKEN",)
        )
        view = await views.get_view(history.job_id)
        assert view is not None
        assert view["spec"]["env"] == {"TOKEN": "***", "MODE": "fast"}
        loaded = await store.load(history.job_id)
        assert loaded[0].event == history.events[0]  # the event keeps the value

    async def test_idempotency_key_finds_the_job_and_refuses_a_second(
        self, store: EventStore, views: JobViews
    ) -> None:
        first = await submitted(store, idempotency_key="k-1")
        found = await views.find_by_idempotency_key("acme", "k-1")
        assert found is not None and found["id"] == first.job_id
        assert await views.find_by_idempotency_key("other", "k-1") is None
        await submitted(store, tenant="other", idempotency_key="k-1")  # per tenant
        second = History()
        with pytest.raises(DuplicateIdempotencyKey):
            await write(store, second, second.submit(idempotency_key="k-1"))
        assert await store.load(second.job_id) == []

    async def test_list_views_newest_first_in_pages(
        self, store: EventStore, views: JobViews
    ) -> None:
        created: dict[str, datetime] = {}
        for i in range(7):
            history = History(now=T0 + timedelta(minutes=i % 3))  # ties on created_at
            created[history.job_id] = history.now
            await write(store, history, history.submit())
        expected = sorted(created, key=lambda job: (created[job], job), reverse=True)
        seen: list[str] = []
        cursor = None
        while True:
            page = await views.list_views("acme", limit=3, cursor=cursor)
            assert len(page.jobs) <= 3
            seen.extend(v["id"] for v in page.jobs)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == expected

    async def test_list_views_filters(self, store: EventStore, views: JobViews) -> None:
        a = await submitted(store, labels={"team": "a", "env": "prod"}, queue="gpu")
        b = await submitted(store, labels={"team": "b"})
        c = await submitted(store, tenant="other", labels={"team": "a"})
        await write(store, b, b.run(ClaimJob(attempt=1, orchestrator="o")))

        async def ids(tenant: str | None, **kw: Any) -> set[str]:
            return {v["id"] for v in (await views.list_views(tenant, **kw)).jobs}

        assert await ids(None) == {a.job_id, b.job_id, c.job_id}
        assert await ids("acme") == {a.job_id, b.job_id}
        assert await ids("acme", status="starting") == {b.job_id}
        assert await ids("acme", queue="gpu") == {a.job_id}
        assert await ids(None, labels={"team": "a"}) == {a.job_id, c.job_id}
        assert await ids(None, labels={"team": "a", "env": "prod"}) == {a.job_id}
        assert await ids(None, labels={"team": "c"}) == set()
        page = await views.list_views(None, limit=0)
        assert page.jobs == []

    async def test_a_cursor_not_made_by_list_views_is_refused(self, views: JobViews) -> None:
        for bad in (
            "nonsense",
            "",
            "eyJhIjoxfQ",
            "WzFlMzAsIngiXQ",
            "Wzk5OTk5OTk5OTk5OTk5OTk5OSwiMDE5MGYwYzItMDAwMC03MDAwLTgwMDAtMDAwMDAwMDAwMDAxIl0",
        ):
            with pytest.raises(InvalidCursor):
                await views.list_views(None, cursor=bad)

    # -- group commit: load_many / append_many

    async def test_load_many_gives_each_jobs_history_keyed_as_asked(
        self, store: EventStore
    ) -> None:
        a = await submitted(store)
        b = await submitted(store)
        unknown = uuid7()
        histories = await store.load_many([a.job_id, b.job_id.upper(), unknown])
        assert list(histories) == [a.job_id, b.job_id.upper(), unknown]
        assert [r.event for r in histories[a.job_id]] == a.events
        assert [r.event for r in histories[b.job_id.upper()]] == b.events
        assert histories[unknown] == []

    async def test_append_many_stores_every_job_and_its_view(
        self, store: EventStore, views: JobViews
    ) -> None:
        a, b = History(), History()
        new_a, new_b = a.submit(), b.submit(tenant="other")
        await store.append_many(
            [
                PendingAppend(a.job_id, 0, new_a, a.view()),
                PendingAppend(b.job_id, 0, new_b, b.view()),
            ]
        )
        more = b.run(ClaimJob(attempt=1, orchestrator="o"))
        await store.append_many([PendingAppend(b.job_id, len(b.events) - 1, more, b.view())])
        assert [r.event for r in await store.load(a.job_id)] == a.events
        assert [r.version for r in await store.load(b.job_id)] == [1, 2, 3]
        assert await views.get_view(b.job_id) == job_view(b.view())
        assert await views.get_view(a.job_id) == job_view(a.view())

    async def test_append_many_with_one_conflict_stores_nothing(
        self, store: EventStore, views: JobViews
    ) -> None:
        a = await submitted(store)
        fresh = History()
        new_fresh = fresh.submit()
        stale = a.run(ClaimJob(attempt=1, orchestrator="o"))
        await write(store, a, stale)
        again = History(a.job_id)  # a second writer, still at version 2
        again.events = a.events[:2]
        late = again.run(ClaimJob(attempt=1, orchestrator="p"))
        with pytest.raises(BatchConflict):
            await store.append_many(
                [
                    PendingAppend(fresh.job_id, 0, new_fresh, fresh.view()),
                    PendingAppend(a.job_id, 2, late, again.view()),
                ]
            )
        assert await store.load(fresh.job_id) == []
        assert await views.get_view(fresh.job_id) is None
        assert [r.event for r in await store.load(a.job_id)] == a.events

    async def test_append_many_refuses_a_held_idempotency_key(self, store: EventStore) -> None:
        await submitted(store, idempotency_key="k")
        second = History()
        new = second.submit(idempotency_key="k")
        with pytest.raises(BatchConflict):
            await store.append_many([PendingAppend(second.job_id, 0, new, second.view())])
        assert await store.load(second.job_id) == []

    async def test_append_many_refuses_one_job_twice(self, store: EventStore) -> None:
        a = History()
        first = a.submit()
        more = a.run(ClaimJob(attempt=1, orchestrator="o"))
        with pytest.raises(ValueError, match="twice"):
            await store.append_many(
                [
                    PendingAppend(a.job_id, 0, first, _job(fold(first))),
                    PendingAppend(a.job_id, 2, more, a.view()),
                ]
            )


def _job(job: Job | None) -> Job:
    assert job is not None
    return job
