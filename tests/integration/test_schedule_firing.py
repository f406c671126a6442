"""Schedules fire one job per fire time, however many schedulers run and across restarts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest_asyncio

from dockyard.scheduler.firing import fire_due
from dockyard.scheduler.schedule_store import PgScheduleStore
from dockyard.scheduler.schedules import parse_schedule
from dockyard.store.pool import Pool, create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest_asyncio.fixture(loop_scope="session")
async def pools(database_url: str) -> AsyncIterator[tuple[Pool, Pool]]:
    """Two schedulers' connection pools on one database."""
    a, b = await create_pool(database_url), await create_pool(database_url)
    yield a, b
    await asyncio.gather(a.close(), b.close())


def _schedule(body: dict[str, object]) -> bytes:
    return msgspec.json.encode(body)


async def _jobs(pool: Pool) -> list[dict[str, object]]:
    page = await PgJobViews(pool).list_views("acme", labels={"schedule": "tick"}, limit=500)
    return page.jobs


async def test_two_schedulers_make_one_job_per_interval(pools: tuple[Pool, Pool]) -> None:
    clock = Clock()
    body = _schedule({"name": "tick", "interval_s": 60, "job": {"image": "busybox"}})
    await PgScheduleStore(pools[0]).create(parse_schedule(body, "acme", clock()))
    replicas = [(PgEventStore(p), PgScheduleStore(p)) for p in pools]
    for minute in range(1, 6):
        clock.now = T0 + timedelta(minutes=minute, seconds=1)
        made = await asyncio.gather(*(fire_due(s, sch, clock) for s, sch in replicas))
        assert sum(made) == 1, f"minute {minute}: {made}"
    jobs = await _jobs(pools[0])
    assert len(jobs) == 5
    assert all(j["spec"]["labels"] == {"schedule": "tick"} for j in jobs)  # type: ignore[index]


async def test_missed_fire_times_fire_once_after_a_restart(pools: tuple[Pool, Pool]) -> None:
    clock = Clock()
    body = _schedule({"name": "tick", "cron": "*/5 * * * *", "job": {"image": "busybox"}})
    store, schedules = PgEventStore(pools[0]), PgScheduleStore(pools[0])
    await schedules.create(parse_schedule(body, "acme", clock()))
    clock.now = T0 + timedelta(minutes=5)
    assert await fire_due(store, schedules, clock) == 1
    # Down for an hour: twelve fire times missed, one job made for the latest.
    clock.now = T0 + timedelta(hours=1, minutes=7)
    restarted = PgScheduleStore(pools[1])
    assert await fire_due(PgEventStore(pools[1]), restarted, clock) == 1
    assert await fire_due(PgEventStore(pools[1]), restarted, clock) == 0
    (listed,) = await restarted.listing("acme")
    assert listed.last_fire == T0 + timedelta(hours=1, minutes=5)
    assert listed.next_fire == T0 + timedelta(hours=1, minutes=10)
    assert len(await _jobs(pools[0])) == 2


async def test_a_crash_between_submit_and_advance_does_not_double(
    pools: tuple[Pool, Pool],
) -> None:
    clock = Clock()
    body = _schedule({"name": "tick", "interval_s": 60, "job": {"image": "busybox"}})
    store, schedules = PgEventStore(pools[0]), PgScheduleStore(pools[0])
    await schedules.create(parse_schedule(body, "acme", clock()))
    clock.now = T0 + timedelta(seconds=61)
    assert len(await schedules.due(clock(), 10)) == 1

    class CrashBeforeAdvance(PgScheduleStore):
        async def advance(self, *_: object) -> bool:
            raise ConnectionError("killed")

    with contextlib.suppress(ConnectionError):
        await fire_due(store, CrashBeforeAdvance(pools[0]), clock)
    assert await fire_due(store, schedules, clock) == 0  # the job exists: nothing doubled
    assert len(await _jobs(pools[0])) == 1


async def test_a_schedule_stored_under_looser_rules_is_listed_but_not_fired(
    pools: tuple[Pool, Pool],
) -> None:
    """A schedule an earlier version stored with `queue: "x\\n"` (F5): its jobs could never
    be delivered, so it makes none, and it stops neither the listing nor other schedules."""
    clock = Clock()
    store, schedules = PgEventStore(pools[0]), PgScheduleStore(pools[0])
    for name in ("bad", "tick"):
        body = _schedule({"name": name, "interval_s": 60, "job": {"image": "busybox"}})
        await schedules.create(parse_schedule(body, "acme", clock()))
    await pools[0].execute(
        "UPDATE schedules SET job = jsonb_set(job, '{queue}', to_jsonb(E'x\\n'::text))"
        " WHERE name = 'bad'"
    )
    clock.now = T0 + timedelta(minutes=1, seconds=1)
    assert await fire_due(store, schedules, clock) == 1  # "tick" only
    listed = {s.name: s for s in await schedules.listing("acme")}
    assert listed["bad"].job.queue == "x\n"
    assert listed["bad"].next_fire > clock.now  # moved on: not retried on every tick
    assert len(await _jobs(pools[0])) == 1
