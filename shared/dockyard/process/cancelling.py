"""Stopping tasks for certain on Python 3.11, where a cancellation can be lost.

`asyncio.wait_for` on 3.11 returns its result instead of raising when the awaited thing
completes in the same loop turn as the cancel (fixed in 3.12). nats-py waits for fetched
messages and replies that way, so a loop cancelled just as a message arrives goes on, and a
shutdown that waits for it waits forever. Measured here: one cancel in ~1,500 of a JetStream
fetch loop under a stream of messages. The task still counts the request
(`Task.cancelling()`): a loop can notice it, and another `cancel()` reaches it at its next await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, Final, TypeVar

T = TypeVar("T")

# How long a cancelled task may take to end before it is cancelled again: long enough for
# cleanup on cancel to finish, short enough that a lost cancel costs little.
RECANCEL_AFTER_S: Final = 1.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any] | None], *, recancel_after_s: float = RECANCEL_AFTER_S
) -> None:
    """Cancel and reap: after this none of `tasks` runs, and none leaves an unread error.

    One still running `recancel_after_s` after its cancel is cancelled again, until it ends
    (cleanup that must not be cut short shields itself: `to_completion`)."""
    futures = [task for task in tasks if task is not None]
    pending = {task for task in futures if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=recancel_after_s)
    for task in futures:  # read every outcome: none is logged as never retrieved
        if not task.cancelled():
            task.exception()


async def to_completion(aw: Awaitable[T]) -> T:
    """Await `aw` to its end even if the caller is cancelled meanwhile (cleanup must not be
    cut short); the cancellation is raised afterwards, so it is not lost either."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise  # the work itself was cancelled
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def raise_if_cancelled() -> None:
    """At the top of a loop's turn: raise the cancellation an await of the last turn lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
