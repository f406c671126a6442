"""Batches by size or after 20 ms; the reader never waits for a slow consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from dockyard.runtime import Chunk, LogLine, LogPipeline, LogPump, RuntimeUnavailable


async def _chunks(*chunks: Chunk, then: BaseException | None = None) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk
    if then is not None:
        raise then


async def test_a_burst_leaves_in_full_batches_in_order() -> None:
    pump = LogPump(LogPipeline(attempt=1))
    batches: list[list[LogLine]] = []

    async def publish(batch: list[LogLine]) -> None:
        batches.append(batch)

    data = "".join(f"{n}\n" for n in range(1, 1301)).encode()
    await pump.run(_chunks(("stdout", data)), publish)

    assert [len(b) for b in batches] == [512, 512, 276]
    assert [line.text for b in batches for line in b] == [str(n) for n in range(1, 1301)]


async def test_a_lone_line_leaves_after_the_delay_not_at_the_end() -> None:
    pump = LogPump(LogPipeline(attempt=1), max_delay_s=0.02)
    gate = asyncio.Event()
    seen: list[float] = []

    async def slow_chunks() -> AsyncIterator[Chunk]:
        yield ("stdout", b"first\n")
        await gate.wait()  # the container writes nothing more for a while

    async def publish(batch: list[LogLine]) -> None:
        seen.append(time.monotonic())
        gate.set()

    started = time.monotonic()
    await asyncio.wait_for(pump.run(slow_chunks(), publish), timeout=5)

    assert seen and seen[0] - started < 0.5


async def test_the_reader_finishes_while_the_consumer_is_still_asleep() -> None:
    pump = LogPump(LogPipeline(attempt=1), max_lines=10)
    chunks = [("stdout", f"{n}\n".encode()) for n in range(1000)]
    read = asyncio.create_task(pump.read(_chunks(*chunks)))  # type: ignore[arg-type]

    await asyncio.wait_for(read, timeout=5)  # nobody has taken a single batch yet

    assert pump.pipeline.pending_lines == 1000
    assert sum([len(b) async for b in pump.batches()]) == 1000


async def test_lines_read_before_the_engine_fails_are_published_then_the_error() -> None:
    pump = LogPump(LogPipeline(attempt=1))
    texts: list[str] = []

    async def publish(batch: list[LogLine]) -> None:
        texts.extend(line.text for line in batch)

    with pytest.raises(RuntimeUnavailable):
        await pump.run(
            _chunks(("stdout", b"one\ntwo"), then=RuntimeUnavailable("engine gone")), publish
        )

    assert texts == ["one", "two"]


async def test_a_failing_publisher_stops_the_reader() -> None:
    pump = LogPump(LogPipeline(attempt=1), max_delay_s=0)
    forever = asyncio.Event()

    async def endless() -> AsyncIterator[Chunk]:
        yield ("stdout", b"x\n")
        await forever.wait()

    async def publish(batch: list[LogLine]) -> None:
        raise ConnectionError("bus down")

    with pytest.raises(ConnectionError):
        await asyncio.wait_for(pump.run(endless(), publish), timeout=5)


async def test_notes_are_numbered_with_the_output() -> None:
    pump = LogPump(LogPipeline(attempt=3, next_seq=7))
    pump.note("image pulled")
    lines: list[LogLine] = []

    async def publish(batch: list[LogLine]) -> None:
        lines.extend(batch)

    await pump.run(_chunks(("stderr", b"warn\n")), publish)

    assert [(line.seq, line.stream, line.text) for line in lines] == [
        (7, "system", "image pulled"),
        (8, "stderr", "warn"),
    ]
