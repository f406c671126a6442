"""The outbox relay's pipelining, ordering and checkpoint rules, with a fake store and sink."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from dockyard.bus import BusUnavailable, OutboxRelay, outbox
from dockyard.core.events import Event, JobClaimed, JobQueued
from dockyard.core.ids import uuid7
from dockyard.store.memory import InMemoryEventStore
from dockyard.store.ports import START, Position, RecordedEvent, StoreUnavailable

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeStore:
    """Just what the relay uses of an EventStore: read_all and the checkpoints."""

    def __init__(self) -> None:
        self.records: list[RecordedEvent] = []
        self.checkpoints: dict[str, Position] = {}
        self.saves: list[Position] = []
        self.fail_reads = 0

    def add(self, event: Event) -> None:
        n = len(self.records) + 1
        version = 1 + sum(r.event.job_id == event.job_id for r in self.records)
        self.records.append(
            RecordedEvent(event=event, version=version, position=n, tx_id=n, recorded_at=T0)
        )

    async def read_all(self, after: Position, limit: int = 1000) -> list[RecordedEvent]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise StoreUnavailable("down")
        return [r for r in self.records if r.at > after][:limit]

    async def load_checkpoint(self, name: str) -> Position:
        return self.checkpoints.get(name, START)

    async def save_checkpoint(self, name: str, position: Position) -> None:
        self.checkpoints[name] = position
        self.saves.append(position)

    async def wait_for_events(self, timeout: float) -> bool:  # noqa: ASYNC109 - the port's
        await asyncio.sleep(timeout)
        return False

    def events_pending(self) -> bool:
        return False  # never notifies: the relay polls


class FakeSink:
    """Acks on the next loop turns; fails the events named in `failures` once each."""

    def __init__(self, failures: Sequence[str] = ()) -> None:
        self.stored: list[Event] = []  # what "JetStream" kept, duplicates dropped
        self.submitted: list[str] = []
        self.failures = set(failures)
        self.in_flight: Counter[str] = Counter()  # per job
        self.max_in_flight_per_job = 0
        self.max_in_flight = 0

    async def submit(
        self, event: Event, after: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Any]:
        if after is None:
            return self._send(event)
        return asyncio.ensure_future(self._chained(after, event))

    async def _chained(self, after: asyncio.Future[Any], event: Event) -> None:
        await asyncio.shield(after)  # never sent if the one before failed
        await self._send(event)

    def _send(self, event: Event) -> asyncio.Future[Any]:
        self.submitted.append(event.event_id)
        self.in_flight[event.job_id] += 1
        self.max_in_flight_per_job = max(self.max_in_flight_per_job, self.in_flight[event.job_id])
        self.max_in_flight = max(self.max_in_flight, sum(self.in_flight.values()))
        return asyncio.ensure_future(self._ack(event))

    async def _ack(self, event: Event) -> None:
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            if event.event_id in self.failures:
                self.failures.discard(event.event_id)
                raise BusUnavailable("no ack")  # lost before JetStream stored it
            if event.event_id not in {e.event_id for e in self.stored}:
                self.stored.append(event)
        finally:
            self.in_flight[event.job_id] -= 1


def history(jobs: int, per_job: int) -> list[Event]:
    """Events of `jobs` jobs, interleaved as concurrent jobs' commits are."""
    events: list[Event] = []
    for n in range(per_job):
        for j in range(jobs):
            job = f"job-{j}"
            if n == 0:
                events.append(
                    JobQueued(event_id=f"{job}/0", job_id=job, at=T0, attempt=1, queue="q")
                )
            else:
                events.append(
                    JobClaimed(
                        event_id=f"{job}/{n}", job_id=job, at=T0, attempt=n, orchestrator="o"
                    )
                )
    return events


def per_job(events: Sequence[Event]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for event in events:
        out.setdefault(event.job_id, []).append(event.event_id)
    return out


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "RETRY_BASE_S", 0.001)


def setup(events: Sequence[Event], sink: FakeSink, **kw: Any) -> tuple[FakeStore, OutboxRelay]:
    store = FakeStore()
    for event in events:
        store.add(event)
    return store, OutboxRelay(store, sink, **kw)


async def test_publishes_everything_in_order_and_checkpoints_the_end() -> None:
    events = history(jobs=5, per_job=4)
    sink = FakeSink()
    store, relay = setup(events, sink, page_size=7)
    assert await relay.run_until_idle() == len(events)
    assert [e.event_id for e in sink.stored] == [e.event_id for e in events]
    assert store.checkpoints[outbox.CHECKPOINT] == store.records[-1].at
    assert await relay.run_until_idle() == 0  # idle: nothing new


async def test_pipelines_across_jobs_but_never_two_events_of_one_job() -> None:
    sink = FakeSink()
    _, relay = setup(history(jobs=50, per_job=3), sink, max_in_flight=16)
    await relay.run_until_idle()
    assert sink.max_in_flight_per_job == 1
    assert 1 < sink.max_in_flight <= 16


async def test_failed_publish_is_retried_without_reordering_its_job() -> None:
    events = history(jobs=4, per_job=5)
    failing = [events[5].event_id, events[13].event_id]
    sink = FakeSink(failures=failing)
    _, relay = setup(events, sink, max_in_flight=8)
    await relay.run_until_idle()
    assert per_job(sink.stored) == per_job(events)
    assert Counter(sink.submitted)[failing[0]] == 2


async def test_checkpoint_never_passes_an_unacked_event() -> None:
    events = history(jobs=3, per_job=6)
    sink = FakeSink(failures=[events[7].event_id])
    store, relay = setup(events, sink, max_in_flight=8, page_size=10)
    saved_when: list[tuple[Position, set[str]]] = []
    save = store.save_checkpoint

    async def recording_save(name: str, position: Position) -> None:
        saved_when.append((position, {e.event_id for e in sink.stored}))
        await save(name, position)

    store.save_checkpoint = recording_save  # type: ignore[method-assign]
    await relay.run_until_idle()
    for position, stored in saved_when:
        assert {r.event.event_id for r in store.records if r.at <= position} <= stored
    assert saved_when[-1][0] == store.records[-1].at


async def test_store_unavailable_is_retried() -> None:
    sink = FakeSink()
    store, relay = setup(history(jobs=2, per_job=2), sink)
    store.fail_reads = 3
    assert await relay.run_until_idle() == 4


async def test_run_wakes_up_on_new_events_and_stops_when_cancelled() -> None:
    sink = FakeSink()
    store, relay = setup(history(jobs=1, per_job=1), sink, poll_interval_s=0.01)
    task = asyncio.create_task(relay.run())
    for event in history(jobs=3, per_job=2)[1:]:
        store.add(event)
    async with asyncio.timeout(5):
        while True:
            if relay.position == store.records[-1].at:
                break
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(sink.stored) == 6


async def test_run_is_woken_by_the_stores_commit_notification() -> None:
    store = InMemoryEventStore()
    sink = FakeSink()
    relay = OutboxRelay(store, sink, poll_interval_s=3600)  # only a notification wakes it
    task = asyncio.create_task(relay.run())
    job = uuid7()
    await store.append(
        job, 0, [JobQueued(event_id=uuid7(), job_id=job, at=T0, attempt=1, queue="q")]
    )
    async with asyncio.timeout(5):
        while True:
            if sink.stored:
                break
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.job_id for e in sink.stored] == [job]


class CountingReads(InMemoryEventStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def read_all(self, after: Position, limit: int = 1000) -> list[RecordedEvent]:
        self.reads += 1
        return await super().read_all(after, limit)


async def test_a_trickle_of_commits_costs_one_read_each() -> None:
    store = CountingReads()
    sink = FakeSink()
    relay = OutboxRelay(store, sink, poll_interval_s=3600)
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.01)  # the relay's first read found nothing; it waits
    try:
        for n in range(1, 6):
            job = uuid7()
            await store.append(
                job, 0, [JobQueued(event_id=uuid7(), job_id=job, at=T0, attempt=1, queue="q")]
            )
            async with asyncio.timeout(5):
                while True:
                    if len(sink.stored) == n:
                        break
                    await asyncio.sleep(0.001)
            await asyncio.sleep(0.01)  # let the relay go back to waiting
        # The first read, then one per commit (it used to be three: the page, an empty read
        # while acks were in flight, another after they settled).
        assert store.reads == 1 + 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
