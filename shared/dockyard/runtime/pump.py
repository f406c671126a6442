"""Moves a container's output into batches of log lines without ever stalling the container.

The engine blocks a container's writes when an attached reader stops reading, so the reader
here only ever feeds the pure `LogPipeline` (no await on the consumer); a slow consumer makes
lines wait in the pipeline, whose cap and ring bound the memory that can take.
Batches leave by size (512 lines or 256 KiB) or 20 ms after their oldest line, whichever first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from dockyard.core.log_line import LogLine
from dockyard.process.cancelling import cancel_and_wait
from dockyard.runtime.output import LogPipeline
from dockyard.runtime.ports import Chunk

MAX_BATCH_LINES = 512
MAX_BATCH_BYTES = 256 * 1024
MAX_BATCH_DELAY_S = 0.02


def utc_now() -> datetime:
    return datetime.now(UTC)


class LogPump:
    """Run `read` (the engine side) and iterate `batches` (the bus side) concurrently."""

    def __init__(
        self,
        pipeline: LogPipeline,
        *,
        max_lines: int = MAX_BATCH_LINES,
        max_bytes: int = MAX_BATCH_BYTES,
        max_delay_s: float = MAX_BATCH_DELAY_S,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.pipeline = pipeline
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._max_delay = max_delay_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._oldest: float | None = None  # loop time when the pending lines began to wait
        self._done = False

    @property
    def drained(self) -> bool:
        """The output is over and every line of it was taken (notes may still come)."""
        return self._done and not self.pipeline.pending_lines

    def note(self, text: str) -> None:
        """Add a `system` line now (pulling, retrying, timed out...)."""
        self.pipeline.note(text, self._clock())
        self._poke()

    async def read(self, chunks: AsyncIterator[Chunk]) -> None:
        """Feed every chunk as it comes until the streams end, then finish the pipeline."""
        try:
            async for stream, data in chunks:
                self.pipeline.feed(stream, data, self._clock())
                if self._poke():
                    # A full batch waits: let the consumer run, since a buffered stream
                    # would otherwise hand us chunks without ever yielding to the loop.
                    await asyncio.sleep(0)
        finally:
            self.pipeline.finish(self._clock())
            self._done = True
            self._wake.set()

    async def batches(self) -> AsyncIterator[list[LogLine]]:
        """Batches in seq order until `read` has finished and every line was taken."""
        loop = asyncio.get_running_loop()
        while True:
            pipeline = self.pipeline
            if not pipeline.pending_lines:
                if self._done:
                    return
                await self._sleep(None)
                continue
            if not self._done and not self._full() and self._oldest is not None:
                remaining = self._oldest + self._max_delay - loop.time()
                if remaining > 0:
                    await self._sleep(remaining)
                    continue
            batch = pipeline.take(self._max_lines, self._max_bytes)
            self._oldest = loop.time() if pipeline.pending_lines else None
            yield batch

    async def run(
        self, chunks: AsyncIterator[Chunk], publish: Callable[[list[LogLine]], Awaitable[None]]
    ) -> None:
        """Read and publish until the streams end and every line is published.

        If reading fails (the engine went away), the lines read so far are still published,
        then the reader's error is raised as it was.
        """
        reader = asyncio.create_task(self.read(chunks))
        try:
            async for batch in self.batches():
                await publish(batch)
        except BaseException:
            await cancel_and_wait([reader])
            raise
        await reader

    def _full(self) -> bool:
        pipeline = self.pipeline
        return (
            pipeline.pending_lines >= self._max_lines or pipeline.pending_bytes >= self._max_bytes
        )

    def _poke(self) -> bool:
        """Wake the consumer when a wait starts or a batch is full; True if one is full."""
        if self._oldest is None and self.pipeline.pending_lines:
            self._oldest = asyncio.get_running_loop().time()
            self._wake.set()
        full = self._full()
        if full:
            self._wake.set()
        return full

    async def _sleep(self, delay: float | None) -> None:
        self._wake.clear()
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass
