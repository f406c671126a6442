"""The outbox relay SIGKILLed between commit and publish, mid-pipeline, and before its checkpoint.

The relay runs in a child process (this module's __main__) that commits jobs, starts relaying
and kills itself with SIGKILL at the chosen point, as a crashed host would. A fresh relay then
resumes from the checkpoint, and a durable consumer sees every event, and every work offer,
exactly once: the repeats are dropped by JetStream's duplicate window (Nats-Msg-Id).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus import (
    EventBatchPublisher,
    OutboxRelay,
    close,
    connect,
    ensure_topology,
    jetstream,
    names,
)
from dockyard.core.events import Event
from dockyard.store.pool import create_pool
from dockyard.store.ports import START, Position
from dockyard.store.postgres import PgEventStore
from tests.integration.test_outbox_relay import AUDIT, append_jobs, assert_delivered_exactly_once
from tests.support.nats import events_stored

ROOT = Path(__file__).resolve().parents[2]
JOBS = 20  # 60 events, 20 work offers

# Where the child dies: after the commit before any publish; with publishes acked and others
# in flight; after every publish of the page was acked but before the checkpoint was saved.
CRASH_POINTS = ("before_publish", "mid_pipeline", "before_checkpoint")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _CrashingSink:
    def __init__(self, inner: EventBatchPublisher, crash_at_submit: int | None) -> None:
        self._inner = inner
        self._crash_at = crash_at_submit
        self._submitted = 0

    async def submit(
        self, event: Event, after: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Any]:
        if self._submitted == self._crash_at:
            _die()
        self._submitted += 1
        return await self._inner.submit(event, after)


class _CrashingCheckpoints(PgEventStore):
    async def save_checkpoint(self, name: str, position: Position) -> None:
        _die()


async def _child(nats_url: str, database_url: str, crash: str) -> None:
    nc = await connect(nats_url, "test-outbox-child", timeout_s=10)
    pool = await create_pool(database_url, max_size=2)
    store_type = _CrashingCheckpoints if crash == "before_checkpoint" else PgEventStore
    store = store_type(pool)
    expected = await append_jobs(store, JOBS)  # committed
    print(json.dumps(expected), flush=True)
    crash_at = {"before_publish": 0, "mid_pipeline": 40}.get(crash)
    sink = _CrashingSink(EventBatchPublisher(nc, jetstream(nc)), crash_at)
    await OutboxRelay(store, sink, page_size=16, max_in_flight=8).run_until_idle()
    raise AssertionError(f"the child survived its crash point {crash}")


@pytest_asyncio.fixture(loop_scope="session")
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    client: NatsClient = await connect(nats_url, "test-outbox-crash", timeout_s=10)
    js = jetstream(client)
    await ensure_topology(js)
    await js.add_consumer(
        names.EVENTS_STREAM,
        durable_name=AUDIT,
        ack_policy="explicit",
        filter_subject=names.EVENTS_SUBJECTS,
    )
    yield js
    await close(client)


@pytest_asyncio.fixture(loop_scope="session")
async def store(database_url: str) -> AsyncIterator[PgEventStore]:
    pool = await create_pool(database_url, max_size=2)
    yield PgEventStore(pool)
    await pool.close()


@pytest.mark.parametrize("crash", CRASH_POINTS)
async def test_outbox_sigkill_then_restart_delivers_each_event_exactly_once(
    crash: str, nats_url: str, database_url: str, js: JetStreamContext, store: PgEventStore
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.test_outbox_crash",
        nats_url,
        database_url,
        crash,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == -signal.SIGKILL, out
    expected: dict[str, list[str]] = json.loads(out.splitlines()[0])

    stored = await events_stored(js)
    checkpoint = await store.load_checkpoint("outbox")
    if crash == "before_publish":
        assert (stored, checkpoint) == (0, START)
    elif crash == "before_checkpoint":  # killed saving its first checkpoint, acks in hand
        assert stored > 0
        assert checkpoint == START
    else:  # killed at its 41st publish, with acks in flight and checkpoints saved before
        assert 0 < stored <= 40
        assert checkpoint != START

    # The restarted relay republishes what the crash left unacked: batches holding stored ids.
    nc = await connect(nats_url, "test-outbox-restarted", timeout_s=10)
    try:
        await OutboxRelay(store, EventBatchPublisher(nc, jetstream(nc))).run_until_idle()
    finally:
        await close(nc)
    await assert_delivered_exactly_once(js, store, expected)


if __name__ == "__main__":
    asyncio.run(_child(*sys.argv[1:4]))
