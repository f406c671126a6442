"""The relay sets aside an event NATS refuses for itself and goes on; nothing else is skipped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from dockyard.bus import BusRejected, OutboxRelay, outbox
from dockyard.bus.errors import MessageRejected
from dockyard.core.events import Event, JobQueued
from tests.unit.test_bus_outbox import T0, FakeSink, FakeStore, history, per_job


class RefusingSink(FakeSink):
    """Refuses every publish holding a `poison` event (a whole batch, as an atomic batch is
    refused), and, with `refuse_all`, everything for a while, as a full stream does."""

    def __init__(self, poison: Iterable[str] = (), refuse_all: int = 0) -> None:
        super().__init__()
        self.poison = set(poison)
        self.refuse_all = refuse_all
        self.pending: list[str] = []  # submitted in this turn: one "batch"

    async def submit(
        self, event: Event, after: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Any]:
        self.pending.append(event.event_id)
        batch = self.pending
        asyncio.get_running_loop().call_soon(self._close_batch, batch)
        if after is None:
            return asyncio.ensure_future(self._refused_or_sent(batch, event))
        return asyncio.ensure_future(self._chained_refused(after, batch, event))

    def _close_batch(self, batch: list[str]) -> None:
        if self.pending is batch:
            self.pending = []

    async def _chained_refused(
        self, after: asyncio.Future[Any], batch: list[str], event: Event
    ) -> None:
        await asyncio.shield(after)
        await self._refused_or_sent(batch, event)

    async def _refused_or_sent(self, batch: list[str], event: Event) -> None:
        await asyncio.sleep(0)
        if self.refuse_all:
            self.refuse_all -= 1
            raise BusRejected("JetStream refused: insufficient resources")
        if self.poison & set(batch):
            raise MessageRejected("NATS refused the message: its subject is invalid")
        await self._send(event)


def relay_for(store: FakeStore, sink: FakeSink, **kw: Any) -> tuple[OutboxRelay, Any]:
    set_aside = outbox.LogOnlySetAside()
    return OutboxRelay(store, sink, set_aside=set_aside, **kw), set_aside


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "RETRY_BASE_S", 0.001)


async def test_one_refused_event_is_set_aside_and_every_other_is_delivered_in_order() -> None:
    events = history(jobs=6, per_job=4)
    poison = events[9].event_id
    store, sink = FakeStore(), RefusingSink(poison=[poison])
    for event in events:
        store.add(event)
    relay, set_aside = relay_for(store, sink, page_size=5, max_in_flight=8)
    await relay.run_until_idle()

    assert list(set_aside.records) == [poison]
    want = [e for e in events if e.event_id != poison]
    assert per_job(sink.stored) == per_job(want)  # each job's order kept, nothing else lost
    assert store.checkpoints["outbox"] == store.records[-1].at


async def test_a_refusal_of_everything_is_retried_and_skips_nothing() -> None:
    events = history(jobs=3, per_job=3)
    store, sink = FakeStore(), RefusingSink(refuse_all=25)
    for event in events:
        store.add(event)
    relay, set_aside = relay_for(store, sink, page_size=4)
    await relay.run_until_idle()

    assert set_aside.records == {}
    assert per_job(sink.stored) == per_job(events)


async def test_a_stored_row_no_validation_accepts_is_set_aside_unsent() -> None:
    good = history(jobs=2, per_job=2)
    bad = JobQueued(event_id="bad/0", job_id="bad", at=T0, attempt=1, queue="x\n")
    store, sink = FakeStore(), FakeSink()
    for event in [good[0], bad, *good[1:]]:
        store.add(event)
    relay, set_aside = relay_for(store, sink)
    await relay.run_until_idle()

    assert list(set_aside.records) == ["bad/0"]
    assert "bad/0" not in sink.submitted
    assert per_job(sink.stored) == per_job(good)


async def test_what_was_set_aside_before_a_restart_is_not_sent_again() -> None:
    events = history(jobs=2, per_job=3)
    poison = events[2].event_id
    store, sink = FakeStore(), RefusingSink(poison=[poison])
    for event in events:
        store.add(event)
    relay, set_aside = relay_for(store, sink)
    await relay.run_until_idle()
    sink.poison.clear()  # it would go through now, but it was set aside: it stays so
    again = OutboxRelay(store, sink, set_aside=set_aside, checkpoint="from-start")
    await again.run_until_idle()
    assert poison not in {e.event_id for e in sink.stored}
