"""The embedded NATS and PostgreSQL servers: start, restart, SIGKILL, pause."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from dockyard.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError
from tests.support.postgres import reachable_tmp_dir


@pytest_asyncio.fixture(loop_scope="session")
async def own_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A server of the test's own, free to be killed."""
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    yield server
    await server.kill()


@pytest_asyncio.fixture(loop_scope="session")
async def own_pg() -> AsyncIterator[EmbeddedPostgres]:
    base = reachable_tmp_dir("dockyard-test-own-pg-")
    server = EmbeddedPostgres(base / "data", fsync=False)
    await server.start()
    yield server
    await server.kill()
    shutil.rmtree(base, ignore_errors=True)


async def _connect(url: str) -> NatsClient:
    return await nats.connect(url, connect_timeout=2, allow_reconnect=False)


async def _publish(url: str, count: int) -> None:
    nc = await _connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="EVENTS", subjects=["events.>"])
        for i in range(count):
            await js.publish(f"events.{i}", str(i).encode())
    finally:
        await nc.close()


async def _stored(url: str) -> int:
    nc = await _connect(url)
    try:
        info = await nc.jetstream().stream_info("EVENTS")
        return info.state.messages
    finally:
        await nc.close()


async def test_nats_restart_keeps_streams_at_the_same_url(own_nats: EmbeddedNats) -> None:
    await _publish(own_nats.url, 3)
    url, first_pid = own_nats.url, own_nats.pid

    await own_nats.restart()

    assert own_nats.url == url
    assert own_nats.pid != first_pid
    assert await _stored(own_nats.url) == 3


async def test_nats_sigkill_then_start_keeps_acknowledged_messages(own_nats: EmbeddedNats) -> None:
    await _publish(own_nats.url, 50)

    await own_nats.kill()
    assert own_nats.pid is None
    await own_nats.start()

    assert await _stored(own_nats.url) == 50


async def test_nats_paused_answers_nothing_until_resumed(own_nats: EmbeddedNats) -> None:
    await _publish(own_nats.url, 1)
    nc = await _connect(own_nats.url)
    try:
        js = nc.jetstream(timeout=0.5)
        await own_nats.pause()
        assert own_nats.paused
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish("events.paused", b"x")

        await own_nats.resume()
        ack = await js.publish("events.resumed", b"y")
        assert ack.stream == "EVENTS"
    finally:
        await nc.close()


async def test_nats_stop_while_paused_still_stops(own_nats: EmbeddedNats) -> None:
    await own_nats.pause()
    await asyncio.wait_for(own_nats.stop(), timeout=15)
    assert own_nats.pid is None


async def test_nats_port_taken_fails_start_with_log_tail(
    own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    rival = EmbeddedNats(tmp_path / "rival", port=own_nats.port, start_timeout=10)

    with pytest.raises(EmbeddedServerError, match="address already in use"):
        await rival.start()
    assert rival.pid is None


async def test_postgres_restart_keeps_data(own_pg: EmbeddedPostgres) -> None:
    await _execute(own_pg.url, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")

    await own_pg.restart()

    assert await _fetchval(own_pg.url, "SELECT count(*) FROM t") == 2


async def test_postgres_sigkill_then_start_recovers_committed_rows(
    own_pg: EmbeddedPostgres,
) -> None:
    await _execute(own_pg.url, "CREATE TABLE t (x int)")
    await _execute(own_pg.url, "INSERT INTO t SELECT generate_series(1, 1000)")

    await own_pg.kill()
    assert own_pg.pid is None
    await own_pg.start()

    assert await _fetchval(own_pg.url, "SELECT count(*) FROM t") == 1000


async def test_postgres_paused_answers_nothing_until_resumed(own_pg: EmbeddedPostgres) -> None:
    await own_pg.pause()
    with pytest.raises(TimeoutError):
        await asyncpg.connect(own_pg.url, timeout=0.5)

    await own_pg.resume()
    assert await _fetchval(own_pg.url, "SELECT 1") == 1


async def test_postgres_runs_unprivileged_when_root(own_pg: EmbeddedPostgres) -> None:
    assert own_pg.pid is not None
    uid = os.stat(f"/proc/{own_pg.pid}").st_uid
    if os.geteuid() == 0:
        assert uid != 0
    else:
        assert uid == os.geteuid()


async def test_postgres_url_names_role_and_database(own_pg: EmbeddedPostgres) -> None:
    password = own_pg.password
    assert own_pg.url == f"postgresql://dockyard:{password}@127.0.0.1:{own_pg.port}/dockyard"
    row = await _fetchrow(own_pg.url, "SELECT current_user, current_database()")
    assert tuple(row) == ("dockyard", "dockyard")


async def test_database_url_is_fresh_and_migrated(database_url: str) -> None:
    applied = await _fetchval(database_url, "SELECT count(*) FROM schema_migrations")
    assert applied >= 1
    await _execute(database_url, "CREATE TABLE scratch (x int)")


async def test_database_url_does_not_see_other_tests_tables(database_url: str) -> None:
    exists = await _fetchval(database_url, "SELECT to_regclass('scratch') IS NOT NULL")
    assert exists is False


async def test_nats_url_fixture_leaves_no_streams_behind(nats_url: str) -> None:
    nc = await _connect(nats_url)
    try:
        js = nc.jetstream()
        with pytest.raises(NotFoundError):
            await js.stream_info("EVENTS")
        await js.add_stream(name="EVENTS", subjects=["events.>"])
        await js.create_key_value(bucket="leftover")
    finally:
        await nc.close()


async def test_nats_url_fixture_cleaned_up_after_the_previous_test(nats_url: str) -> None:
    nc = await _connect(nats_url)
    try:
        assert await nc.jsm().streams_info() == []
    finally:
        await nc.close()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetchval(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _fetchrow(url: str, sql: str) -> asyncpg.Record:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(sql)
    finally:
        await conn.close()
    assert row is not None
    return row
