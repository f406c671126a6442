"""`dockyard submit` against a real stack (issue #23): the scheduler's API, its control plane,
an orchestrator running jobs in Docker and the log relay, all on this session's NATS and
PostgreSQL; the CLI runs as the user runs it, as its own process.

An unknown option submits nothing; after `--` every word reaches the container as given;
`--secret K=V` and `--secret K` (from the caller's environment) reach the container and are
shown neither in the job's view, nor its events, nor its log, nor anything the CLI prints.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.store.pool import create_pool
from dockyard.store.read_model import PgJobViews
from dockyard.web.auth import Tokens
from tests.support.log_relay import TOKENS, relay_in_process
from tests.support.orchestration import ControlPlane, running_orchestrator, secrets_ring

pytestmark = pytest.mark.timeout(180)

TOKEN = "acme-token"
INLINE = "abc123-inline-value"  # given as --secret TOKEN=...
FROM_ENV = "xyz789-from-env-value"  # given as --secret DEPLOY_KEY, read from the environment
ECHO_ARGS = 'for a in "$@"; do echo "[$a]"; done'


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


@dataclass
class Stack:
    api_url: str
    logs_url: str

    async def cli(self, *args: str, **env: str) -> Ran:
        """`python -m dockyard.cli ARGS` with the stack's URLs and token, plus `env`."""
        full_env = {
            **os.environ,
            "DOCKYARD_API_URL": self.api_url,
            "DOCKYARD_LOGS_URL": self.logs_url,
            "DOCKYARD_TOKEN": TOKEN,
            **env,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dockyard.cli", *args, env=full_env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), timeout=90)
        assert process.returncode is not None
        return Ran(process.returncode, out.decode(), err.decode())

    async def get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(self.api_url + path) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json()


@pytest_asyncio.fixture(loop_scope="session")
async def stack(nats_url: str, database_url: str, busybox_image: str) -> AsyncIterator[Stack]:
    pool = await create_pool(database_url)
    runner: web.AppRunner | None = None
    try:
        async with ControlPlane(nats_url, database_url) as plane:
            ctx = Context(
                store=plane.store,
                views=PgJobViews(pool),
                tokens=Tokens(TOKENS),
                secrets=secrets_ring("scheduler"),
            )
            runner = web.AppRunner(build_app(ctx), access_log=None, shutdown_timeout=2.0)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            api_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            async with (
                relay_in_process(nats_url, database_url) as relay,
                running_orchestrator(nats_url),
            ):
                yield Stack(api_url=api_url, logs_url=relay.url)
    finally:
        if runner is not None:
            await runner.cleanup()
        await pool.close()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["submit", "--memroy", "100", "--", "true"], "Did you mean '--memory'?"),
        (["submit", "--pid", "64", "echo", "hi"], "Did you mean '--pids'?"),
        (["submit", "--secret", "UNSET_NAME_23", "--", "true"], "UNSET_NAME_23 is not set"),
        (["schedules", "create", "n", "--interval", "60", "--memroy", "1", "--", "true"],
         "Did you mean '--memory'?"),
    ],
)  # fmt: skip
async def test_an_unknown_option_is_exit_2_and_the_api_sees_nothing(
    stack: Stack, args: list[str], error: str
) -> None:
    result = await stack.cli(*args)
    assert result.code == 2, result
    assert error in result.stderr
    assert "Usage: dockyard" in result.stderr
    assert result.stdout == ""
    assert (await stack.get("/v1/jobs"))["jobs"] == []
    assert (await stack.get("/v1/schedules"))["schedules"] == []


async def test_dashes_pass_every_word_after_them_to_the_command(stack: Stack) -> None:
    words = ["--memroy", "100", "-la", "--secret", "T=1", "x --y"]
    result = await stack.cli("submit", "--follow", "--", "sh", "-c", ECHO_ARGS, "sh", *words)
    assert result.code == 0, result
    job_id, *lines = result.stdout.splitlines()
    assert lines == [f"[{word}]" for word in words]
    view = await stack.get(f"/v1/jobs/{job_id}")
    assert view["spec"]["command"] == ["sh", "-c", ECHO_ARGS, "sh", *words]
    assert view["spec"]["secrets"] == []

    # Without `--`, the first word that is no option starts the command just the same.
    result = await stack.cli("submit", "-f", "--pids", "16", "sh", "-c", ECHO_ARGS, "sh", "-la")
    assert result.code == 0, result
    job_id, *lines = result.stdout.splitlines()
    assert lines == ["[-la]"]
    assert (await stack.get(f"/v1/jobs/{job_id}"))["spec"]["resources"]["pids"] == 16


async def test_secrets_reach_the_container_and_are_shown_nowhere(stack: Stack) -> None:
    # The job prints the values' hashes: neither its command nor its log holds a value.
    check = 'printf %s "$TOKEN" | sha256sum; printf %s "$DEPLOY_KEY" | sha256sum'
    submitted = await stack.cli(
        "submit", "--follow", "--secret", f"TOKEN={INLINE}", "--secret", "DEPLOY_KEY",
        "--env", "PLAIN=shown", "--", "sh", "-c", check,
        DEPLOY_KEY=FROM_ENV,
    )  # fmt: skip
    assert submitted.code == 0, submitted
    job_id, *lines = submitted.stdout.splitlines()
    # Both values reached the container's environment.
    assert [line.split()[0] for line in lines] == [sha256(INLINE), sha256(FROM_ENV)]

    view = await stack.get(f"/v1/jobs/{job_id}")
    assert view["spec"]["env"] == {"TOKEN": "***", "DEPLOY_KEY": "***", "PLAIN": "shown"}
    assert sorted(view["spec"]["secrets"]) == ["DEPLOY_KEY", "TOKEN"]
    shown = [submitted.stdout, submitted.stderr, json.dumps(view)]
    for args in (["status", job_id], ["status", job_id, "--json"], ["logs", job_id], ["ls"]):
        result = await stack.cli(*args)
        assert result.code == 0, result
        shown += [result.stdout, result.stderr]
    assert [text for text in shown if INLINE in text or FROM_ENV in text] == []

    events = [json.dumps(await stack.get(f"/v1/jobs/{job_id}/events"))]
    for args in (["events", job_id], ["events", job_id, "--json"]):
        result = await stack.cli(*args)
        assert result.code == 0, result
        events += [result.stdout, result.stderr]
    assert [text for text in events if INLINE in text or FROM_ENV in text] == []
