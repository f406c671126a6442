"""Running a service until SIGTERM or SIGINT, then stopping it in order."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from dockyard.process.cancelling import cancel_and_wait

log = logging.getLogger("dockyard.process.lifecycle")


async def wait_for_stop_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def supervise(
    loops: dict[str, Coroutine[Any, Any, None]],
    until: Awaitable[None],
) -> None:
    """Run the named loops until `until` completes or one of them ends (which is a failure:
    a service's loops run forever); cancel the rest and raise what ended one."""
    tasks = {asyncio.create_task(coro, name=name): name for name, coro in loops.items()}
    stopper = asyncio.ensure_future(until)
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper:
                name = tasks[task]
                error = task.exception()
                log.error("loop.ended name=%s error=%r", name, error)
                if error is not None:
                    raise error
                raise RuntimeError(f"the {name} loop ended")
    finally:
        await cancel_and_wait([stopper, *tasks])


Cleanup = Callable[[], Awaitable[None]]
