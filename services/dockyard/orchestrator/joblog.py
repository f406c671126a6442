"""One attempt's log: the container's output and Dockyard's own notes, numbered, published.

Lines are numbered from the job's next seq, masked, split and capped by the runtime's
`LogPipeline`; batches go to a `LogSinkPort` as they fill (or every 20 ms). The reader is held
back while too many lines wait for the bus (so a chatty job slows to what the bus stores rather
than losing lines), but never for long: once publishing has made no progress for
`log_stall_s` (NATS is away), reading goes on and the pipeline's bound keeps memory in check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from dockyard.core.log_line import LogLine
from dockyard.core.spec import JobSpec
from dockyard.core.view import secret_values
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.ports import LogSinkPort
from dockyard.runtime.output import LogPipeline
from dockyard.runtime.ports import Chunk
from dockyard.runtime.pump import LogPump


class JobLog:
    def __init__(
        self,
        config: OrchestratorConfig,
        spec: JobSpec,
        *,
        attempt: int,
        after_seq: int,
        clock: Callable[[], datetime],
        used_bytes: int = 0,
    ) -> None:
        self._config = config
        self._pipeline = LogPipeline(
            attempt=attempt,
            next_seq=after_seq + 1,
            secrets=secret_values(spec),
            cap_bytes=config.log_cap_bytes,
            used_bytes=used_bytes,
            max_pending_lines=config.log_max_pending_lines,
        )
        self._pump = LogPump(
            self._pipeline,
            max_lines=config.log_batch_lines,
            max_bytes=config.log_batch_bytes,
            clock=clock,
        )
        self._published = asyncio.Event()  # set after each batch leaves: backpressure wakes
        self._closing = asyncio.Event()

    @property
    def last_seq(self) -> int:
        """The last seq numbered so far."""
        return self._pipeline.next_seq - 1

    @property
    def dropped_bytes(self) -> int:
        return self._pipeline.dropped_bytes

    def mask(self, spec: JobSpec) -> None:
        """Mask the secrets of `spec` (the opened one) from now on: before any output."""
        self._pipeline.mask(secret_values(spec))

    def note(self, text: str) -> None:
        """A `system` line: Dockyard's own words."""
        self._pump.note(text)

    async def read(self, chunks: AsyncIterator[Chunk]) -> None:
        """Feed the container's output until it ends (run as a task, before the start)."""
        await self._pump.read(self._paced(chunks))

    async def end(self) -> None:
        """No more output will come (any reader is over): finish the pipeline, idempotently,
        also when no container was ever attached or its reader was cancelled unstarted.
        Notes must come before this."""
        await self._pump.read(_no_chunks())
        self._closing.set()

    async def publish(self, sink: LogSinkPort) -> None:
        """Publish batches until `end` and every line is stored (run as a task).

        The batch that ends the output says it is final (see LogBatch.last_seq), and so does
        the last of the notes after it, or an empty batch if the attempt printed nothing:
        a restarted process tells a whole log from one its crash cut by that mark.
        """
        final_seq: int | None = None
        while True:
            async for batch in self._pump.batches():
                if self._pump.drained:
                    final_seq = await _publish_final(sink, batch, batch[-1].seq)
                else:
                    await sink.publish(batch)
                self._published.set()
            if self._closing.is_set():
                # Lines noted after the output ended (why it failed) come last.
                rest = [batch async for batch in self._pump.batches()]
                for batch in rest[:-1]:
                    await sink.publish(batch)
                if rest or final_seq != self.last_seq:
                    await _publish_final(sink, rest[-1] if rest else [], self.last_seq)
                break
            await self._closing.wait()
        await sink.flush()

    async def _paced(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        config = self._config
        pipeline = self._pipeline
        async for chunk in chunks:
            while pipeline.pending_lines > config.log_high_water_lines:
                self._published.clear()
                try:
                    async with asyncio.timeout(config.log_stall_s):
                        await self._published.wait()
                except TimeoutError:
                    break  # the bus is away: read on, the pipeline bounds what is kept
            yield chunk


async def _publish_final(sink: LogSinkPort, batch: list[LogLine], last_seq: int) -> int:
    """Only once every batch before it is stored: a final batch in the stream must never
    stand ahead of one that was lost."""
    await sink.flush()
    await sink.publish(batch, last_seq=last_seq)
    return last_seq


async def _no_chunks() -> AsyncIterator[Chunk]:
    return
    yield  # an async generator that yields nothing
