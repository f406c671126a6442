"""The shared harness: one real NATS and PostgreSQL per session, the real Docker engine."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest
import pytest_asyncio

from dockyard.embedded import EmbeddedNats, EmbeddedPostgres
from dockyard.process import event_loop, gc_policy
from dockyard.stack.images import ensure_busybox_image, ensure_nats_image
from tests.support.containers import (
    OFFICIAL_IMAGES,
    OFFICIAL_NATS_IMAGE,
    NatsContainer,
    start_nats_container,
)
from tests.support.nats import purge_jetstream
from tests.support.postgres import (
    app_url,
    create_database,
    create_template,
    drop_database,
    reachable_tmp_dir,
)
from tests.support.servers import ensure_running

# Ryuk (testcontainers' reaper) is an image pulled from a registry; fixtures clean up instead.
# testcontainers is imported only when a container starts, so this is set in time.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

_MARKER_BY_FOLDER = {
    "unit": "unit",
    "integration": "integration",
    "e2e": "e2e",
    "cluster": "cluster",
    "benchmarks": "benchmark",
}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Tests run on the event loop the services run on (uvloop), so what they check, and
    what the benchmarks measure, is what is deployed."""
    return {"uvloop": event_loop.loop_factory()}


def pytest_collection_finish(session: pytest.Session) -> None:
    """The services' GC policy here too: the scheduler side of the benchmarks runs in this
    process, and what tests check should run as deployed."""
    gc_policy.apply()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        try:
            folder = item.path.relative_to(root).parts[0]
        except ValueError:
            continue
        if marker := _MARKER_BY_FOLDER.get(folder):
            item.add_marker(getattr(pytest.mark, marker))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def nats_url(nats_server: EmbeddedNats) -> AsyncIterator[str]:
    """The session's NATS; every stream and KV bucket a test made is deleted after it."""
    await ensure_running(nats_server)
    yield nats_server.url
    await ensure_running(nats_server)
    await purge_jetstream(nats_server.url)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server(request: pytest.FixtureRequest) -> AsyncIterator[EmbeddedPostgres]:
    base = reachable_tmp_dir("dockyard-test-pg-")
    # Benchmarks measure a durable PostgreSQL, as JetStream is (every write fsynced); the
    # suite runs without fsync, which only an OS crash would tell apart.
    durable = any(item.get_closest_marker("benchmark") for item in request.session.items)
    server = EmbeddedPostgres(base / "data", fsync=durable)
    try:
        await server.start()
        yield server
        await server.stop()
    finally:
        await server.kill()  # no-op once stopped; a failed start may leave the postmaster
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_template(pg_server: EmbeddedPostgres) -> str:
    """A database holding the migrated schema, copied for each test."""
    return await create_template(pg_server)


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(pg_server: EmbeddedPostgres, pg_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database of its own for each test, dropped afterwards; as the
    superuser, or as the services' own role with DOCKYARD_TEST_DATABASE_ROLE=app."""
    await ensure_running(pg_server)
    name = await create_database(pg_server, template=pg_template)
    url = pg_server.admin_url(name)
    yield app_url(pg_server, url) if os.environ.get("DOCKYARD_TEST_DATABASE_ROLE") == "app" else url
    await ensure_running(pg_server)
    await drop_database(pg_server, name)


@pytest.fixture
def app_database_url(pg_server: EmbeddedPostgres, database_url: str) -> str:
    """The test's database as the services' own role (no superuser), as under `dockyard up`."""
    return app_url(pg_server, database_url)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def docker() -> AsyncIterator[aiodocker.Docker]:
    try:
        client = aiodocker.Docker()
    except Exception as exc:
        pytest.fail(f"no Docker engine configured ({exc}); run scripts/bootstrap", pytrace=False)
    try:
        await client.version()
    except Exception as exc:
        await client.close()
        pytest.fail(
            f"no Docker engine answers ({exc}); scripts/bootstrap installs and starts one",
            pytrace=False,
        )
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def busybox_image(docker: aiodocker.Docker) -> str:
    return await ensure_busybox_image(docker=docker)


@pytest_asyncio.fixture(loop_scope="session")
async def nats_container(docker: aiodocker.Docker) -> AsyncIterator[NatsContainer]:
    """NATS with JetStream in its own container, removed after the test."""
    image = OFFICIAL_NATS_IMAGE if OFFICIAL_IMAGES else await ensure_nats_image(docker=docker)
    # testcontainers blocks; a thread keeps the event loop (and other fixtures) running.
    container = await asyncio.to_thread(start_nats_container, image)
    yield container
    await asyncio.to_thread(container.stop)
