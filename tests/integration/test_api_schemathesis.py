"""schemathesis against /openapi.json on PostgreSQL: no 5xx, every answer matches the document.

`positive_data_acceptance` is left out on purpose: an opaque cursor or a five-token string that
is not a valid cron expression is schema-valid and still rightly refused with 422.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.scheduler.schedule_store import PgScheduleStore
from dockyard.store.pool import create_pool
from dockyard.store.postgres import PgEventStore
from dockyard.store.read_model import PgJobViews
from dockyard.web.auth import Tokens

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "ignored_auth",
    ]
)


@pytest_asyncio.fixture(loop_scope="session")
async def server(database_url: str) -> AsyncIterator[TestServer]:
    pool = await create_pool(database_url)
    store = PgEventStore(pool)
    ctx = Context(
        store=store,
        views=PgJobViews(pool),
        schedules=PgScheduleStore(pool),
        tokens=Tokens({"fuzz-token": "acme"}),
    )
    test_server = TestServer(build_app(ctx), host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await test_server.close()
    await store.close()
    await pool.close()


@pytest.mark.timeout(600)
async def test_the_api_keeps_its_document_under_fuzzing(server: TestServer, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{server.port}"
    # A body over 1 MiB is refused with 413 before it is read: a rejection like any other.
    (tmp_path / "schemathesis.toml").write_text(
        "[checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "403", "404", "405", "409", "413", "415", "422"]\n'
    )
    cli = Path(sys.executable).parent / "schemathesis"
    process = await asyncio.create_subprocess_exec(
        str(cli),
        "run",
        f"{base}/openapi.json",
        "-H",
        "Authorization: Bearer fuzz-token",
        "--checks",
        CHECKS,
        "--max-examples",
        "25",
        "--workers",
        "1",
        "--seed",
        "20261129",
        "--suppress-health-check",
        "all",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, _summary(text)


def _summary(text: str) -> str:
    """The failures, without the megabyte-long bodies schemathesis quotes."""
    return "\n".join(line[:300] for line in text.splitlines())[-8000:]
