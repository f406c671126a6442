"""A service's stop ends, and does its own cleanup whole, when a cancel is lost or repeated.

Python 3.11's wait_for can swallow a cancel (see dockyard.process.cancelling); `supervise`
then cancels again each second. Fakes stand in for NATS and the stores: what is checked is
the loops' shape.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

from dockyard.bus import protocol
from dockyard.bus.outbox import OutboxRelay
from dockyard.core.log_line import LogLine
from dockyard.log_relay.persister import LogPersister
from dockyard.process.lifecycle import supervise

JOB = str(uuid.uuid4())


class _LosingFetch:
    """A pull subscription whose fetch, once asked to, swallows a cancel as wait_for does."""

    def __init__(self) -> None:
        self.seq = 0
        self.lose_next_cancel = False
        self.lost = 0

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:  # noqa: ASYNC109 (as nats-py)
        try:
            await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            if not self.lose_next_cancel:
                raise
            self.lose_next_cancel = False
            self.lost += 1
        return [self._message()]

    def _message(self) -> Msg:
        self.seq += 1
        line = LogLine(self.seq, "stdout", "x", datetime.now(UTC), 1)
        batch = protocol.LogBatch(job_id=JOB, attempt=1, lines=[line])
        return Msg(_client=None, subject=f"dockyard.logs.{JOB}", data=protocol.encode(batch))  # type: ignore[arg-type]


class _Js:
    def __init__(self, sub: _LosingFetch) -> None:
        self.sub = sub

    async def pull_subscribe_bind(self, *args: Any, **kwargs: Any) -> _LosingFetch:
        return self.sub


class _StuckStore:
    async def append(self, chunks: Any) -> Any:
        await asyncio.sleep(1000)  # a write that does not finish: the queue fills behind it


async def test_the_log_relay_stops_though_its_gatherer_lost_the_cancel() -> None:
    sub = _LosingFetch()
    persister = LogPersister(
        _Js(sub),  # type: ignore[arg-type]
        _StuckStore(),  # type: ignore[arg-type]
        flush_delay_s=0.05,
        holders=None,
    )

    async def stop_soon() -> None:
        await asyncio.sleep(0.15)  # the writer is stuck, a flush waits in the queue
        sub.lose_next_cancel = True

    async with asyncio.timeout(5):
        await supervise({"persister": persister.run()}, until=stop_soon())
    assert sub.lost == 1


class _Leader:
    closed = False

    async def acquire(self) -> None:
        pass

    async def check(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


class _SlowCheckpoints:
    saved: int | None = None

    async def save_checkpoint(self, name: str, position: int) -> None:
        await asyncio.sleep(1.5)  # within the stop's 2 s budget, past the 1 s re-cancel
        self.saved = position


async def test_the_outbox_relay_saves_its_checkpoint_and_lets_go_when_cancelled_again() -> None:
    store, leader = _SlowCheckpoints(), _Leader()
    relay = OutboxRelay(store, None, leader=leader)  # type: ignore[arg-type]

    async def publishing(check: Any, **kwargs: Any) -> None:
        relay._position, relay._saved = 42, 0  # acked, not yet saved
        await asyncio.Event().wait()

    relay._publish_committed = publishing  # type: ignore[method-assign]

    async with asyncio.timeout(5):
        await supervise({"outbox": relay.run()}, until=asyncio.sleep(0.1))
    assert store.saved == 42 and leader.closed
