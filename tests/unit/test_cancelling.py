"""A cancellation lost inside `asyncio.wait_for` (Python 3.11) still stops the task."""

from __future__ import annotations

import asyncio
import sys

import pytest

from dockyard.process.cancelling import cancel_and_wait, raise_if_cancelled, to_completion


async def _lose_a_cancel(loop_body_checks: bool) -> tuple[asyncio.Task[None], asyncio.Queue[int]]:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def consume() -> None:
        while True:
            if loop_body_checks:
                raise_if_cancelled()
            # As nats-py waits for a message: wait_for in a task of its own.
            await asyncio.create_task(asyncio.wait_for(queue.get(), 10))

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    queue.put_nowait(1)  # the message arrives in the same turn as the cancel
    task.cancel()
    return task, queue


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for no longer loses it")
async def test_the_race_loses_a_cancel_on_this_python() -> None:
    task, _ = await _lose_a_cancel(loop_body_checks=False)
    done, _ = await asyncio.wait({task}, timeout=0.1)
    assert not done and task.cancelling() == 1
    await cancel_and_wait([task])


async def test_cancel_and_wait_cancels_again_until_the_task_ends() -> None:
    task, _ = await _lose_a_cancel(loop_body_checks=False)
    await cancel_and_wait([task], recancel_after_s=0.05)
    assert task.cancelled()


async def test_a_loop_that_checks_each_turn_ends_on_the_lost_cancel() -> None:
    task, _ = await _lose_a_cancel(loop_body_checks=True)
    done, _ = await asyncio.wait({task}, timeout=0.5)
    assert done and task.cancelled()


async def test_cleanup_that_shields_itself_is_waited_for() -> None:
    cleaned = asyncio.Event()

    async def clean_up() -> None:
        await asyncio.sleep(0.15)  # three times the re-cancel interval below
        cleaned.set()

    async def work() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await to_completion(clean_up())

    task = asyncio.create_task(work())
    await asyncio.sleep(0)
    await cancel_and_wait([task, None], recancel_after_s=0.05)
    assert task.cancelled() and cleaned.is_set()
