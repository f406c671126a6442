"""A failed heartbeat asks to move to another NATS server (found on the cluster, #21): a node
cut off from the cluster's majority keeps the connection up but commits no put, and staying
there would get the orchestrator's jobs requeued as lost once its lease ran out."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
import pytest

from dockyard.orchestrator.heartbeat import Heartbeats
from dockyard.orchestrator.registry import Registry

pytestmark = pytest.mark.unit


class Bucket:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.puts = 0

    async def put(self, key: str, value: bytes) -> int:
        self.puts += 1
        if self.fail:
            raise nats.errors.TimeoutError
        return self.puts


class JetStream:
    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    async def key_value(self, name: str) -> Bucket:
        return self.bucket


async def beats_for(bucket: Bucket, moved: list[int], period_s: float = 0.01) -> None:
    async def move() -> None:
        moved.append(bucket.puts)

    js: Any = JetStream(bucket)
    beats = Heartbeats(
        js, Registry(), orchestrator="o-1", queues=("default",), max_jobs=2,
        lease_s=0.3, period_s=period_s, move_server=move,
    )  # fmt: skip
    task = asyncio.create_task(beats.run())
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_heartbeat_nats_did_not_take_moves_to_another_server() -> None:
    moved: list[int] = []
    await beats_for(Bucket(fail=True), moved)
    assert moved and moved[0] == 1  # right after the first failed put


async def test_heartbeats_that_go_through_stay_where_they_are() -> None:
    moved: list[int] = []
    await beats_for(Bucket(fail=False), moved)
    assert not moved


class Hangs(Bucket):
    """A cut-off node: the put is never answered, until the connection moves."""

    def __init__(self) -> None:
        super().__init__(fail=False)
        self.answers = False

    async def put(self, key: str, value: bytes) -> int:
        self.puts += 1
        if not self.answers:
            await asyncio.Event().wait()
        return self.puts


async def test_an_unanswered_put_gives_up_within_a_quarter_lease_and_beats_again_at_once() -> None:
    bucket = Hangs()
    moved: list[float] = []
    loop = asyncio.get_running_loop()

    async def move() -> None:
        moved.append(loop.time())
        bucket.answers = True

    js: Any = JetStream(bucket)
    beats = Heartbeats(
        js, Registry(), orchestrator="o-1", queues=("default",), max_jobs=2,
        lease_s=0.4, period_s=60.0, move_server=move,
    )  # fmt: skip
    assert beats.put_timeout_s == pytest.approx(0.1)
    began = loop.time()
    task = asyncio.create_task(beats.run())
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Gave up on the first put after 0.1 s, moved, and the next beat went through at once,
    # not a 60 s period later: well within the 0.4 s lease.
    assert len(moved) == 1 and moved[0] - began == pytest.approx(0.1, abs=0.05)
    assert (bucket.puts, beats.sent) == (2, 1)


async def test_a_put_that_fails_again_after_the_move_waits_the_period() -> None:
    moved: list[int] = []
    bucket = Bucket(fail=True)
    await beats_for(bucket, moved, period_s=60.0)
    assert (moved, bucket.puts) == ([1], 2)  # one move, one put after it, then the period
