"""A TCP proxy a test can cut: one service's connection to NATS lost while everyone else
keeps theirs, as a network partition would (pausing NATS itself would cut everybody)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class CutProxy:
    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        self._target = (target.hostname or "127.0.0.1", target.port or 4222)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.cut_off = False
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"nats://127.0.0.1:{port}"

    def cut(self) -> None:
        """Drop every connection through it, and refuse new ones until `restore`."""
        self.cut_off = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(source, sink, (writer, up_writer)))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


async def _pipe(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        for writer in both:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def cut_proxy(target_url: str) -> AsyncIterator[CutProxy]:
    proxy = CutProxy(target_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
