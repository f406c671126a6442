"""`move_to_another_server` takes a connection to the other server of its pool (a cluster's
node it had not been on), and does nothing where the pool holds one server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from dockyard.bus import close, connect
from dockyard.bus.connection import move_to_another_server
from dockyard.embedded import EmbeddedNats

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def two_servers(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNats, EmbeddedNats]]:
    first, second = EmbeddedNats(tmp_path / "a"), EmbeddedNats(tmp_path / "b")
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.stop()
        await second.stop()


def port_of(nc: object) -> int:
    return int(nc._current_server.uri.port)  # type: ignore[attr-defined]


async def test_a_connection_moves_to_the_other_server_of_its_pool(
    two_servers: tuple[EmbeddedNats, EmbeddedNats],
) -> None:
    first, second = two_servers
    nc = await connect(f"{first.url},{second.url}", "mover", timeout_s=10)
    try:
        before = port_of(nc)
        await move_to_another_server(nc)
        async with asyncio.timeout(10):
            while not nc.is_connected or port_of(nc) == before:  # noqa: ASYNC110 - nats-py has no event for it
                await asyncio.sleep(0.05)
        assert port_of(nc) in {first.port, second.port} - {before}
        await nc.flush()
    finally:
        await close(nc)


async def test_one_server_alone_is_not_left(
    two_servers: tuple[EmbeddedNats, EmbeddedNats],
) -> None:
    first, _ = two_servers
    nc = await connect(first.url, "stayer", timeout_s=10)
    try:
        await move_to_another_server(nc)
        assert nc.is_connected and port_of(nc) == first.port
    finally:
        await close(nc)
