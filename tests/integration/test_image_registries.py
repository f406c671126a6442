"""DOCKYARD_ALLOWED_REGISTRIES and what a failed pull tells the tenant (security review F13).

No traffic leaves this machine: refused references are submitted with `pull: never` (and
refused before anything is asked), and the pulls that fail do so against a registry this test
runs on 127.0.0.1 (the engine treats 127.0.0.0/8 as an insecure registry: plain HTTP) or a
loopback port nothing listens on.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dockyard.core.registries import RegistryPolicy
from dockyard.orchestrator.images import Images
from dockyard.runtime import DockerRuntime, ImagePullFailed
from dockyard.scheduler.app import build_app
from dockyard.scheduler.context import Context
from dockyard.store.memory import InMemoryEventStore
from dockyard.store.ports import START
from dockyard.web.auth import Tokens

ACME = {"Authorization": "Bearer acme-token"}
_V2 = {"Docker-Distribution-API-Version": "registry/2.0"}


class LoopbackRegistry:
    """A registry on 127.0.0.1 that answers every manifest with `status` (404 or 401)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.status == 401:
            body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            headers = {**_V2, "WWW-Authenticate": 'Basic realm="test"'}
            return web.json_response(body, status=401, headers=headers)
        if request.path.rstrip("/") == "/v2":
            return web.json_response({}, headers=_V2)
        body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
        return web.json_response(body, status=404, headers=_V2)

    async def __aenter__(self) -> LoopbackRegistry:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


def closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("status", "words", "engine"),
    [(404, "not found", "manifest unknown"), (401, "unauthorized", "no basic auth credentials")],
)
async def test_a_failed_pull_names_the_registry_and_why_not_the_engines_text(
    docker: aiodocker.Docker,
    caplog: pytest.LogCaptureFixture,
    status: int,
    words: str,
    engine: str,
) -> None:
    async with LoopbackRegistry(status) as registry:
        images = Images(DockerRuntime(docker), registries=RegistryPolicy((registry.host,)))
        ref = f"{registry.host}/acme/app:1"
        with (
            caplog.at_level(logging.WARNING, "dockyard.orchestrator"),
            pytest.raises(ImagePullFailed) as raised,
        ):
            await images.ensure(ref, "always")
    assert registry.requests  # the engine did ask it
    assert raised.value.message == f"image could not be pulled from {registry.host}: {words}"
    assert engine not in raised.value.message
    [record] = [r for r in caplog.records if r.getMessage().startswith("orchestrator.image_pull")]
    assert engine in record.getMessage() and ref in record.getMessage()


async def test_a_pull_from_a_closed_port_is_unreachable(
    docker: aiodocker.Docker, caplog: pytest.LogCaptureFixture
) -> None:
    host = f"127.0.0.1:{closed_loopback_port()}"
    images = Images(DockerRuntime(docker), registries=RegistryPolicy((host,)))
    with (
        caplog.at_level(logging.WARNING, "dockyard.orchestrator"),
        pytest.raises(ImagePullFailed) as raised,
    ):
        await images.ensure(f"{host}/acme/app:1", "if_not_present")
    assert raised.value.message == f"image could not be pulled from {host}: unreachable"
    assert "connection refused" in caplog.text and "dial tcp" not in raised.value.message


async def test_the_orchestrator_refuses_an_unlisted_registry_before_the_engine_is_asked(
    docker: aiodocker.Docker,
) -> None:
    async with LoopbackRegistry(404) as registry:
        images = Images(DockerRuntime(docker))  # the default policy: no IP literal
        with pytest.raises(ImagePullFailed) as raised:
            await images.ensure(f"{registry.host}/acme/app:1", "always")
        elsewhere = Images(DockerRuntime(docker), registries=RegistryPolicy(("ghcr.io",)))
        with pytest.raises(ImagePullFailed):
            await elsewhere.ensure(f"{registry.host}/acme/app:1", "always")
    assert registry.requests == []
    assert raised.value.message.startswith(f"image could not be pulled from {registry.host}: ")
    assert "DOCKYARD_ALLOWED_REGISTRIES" in raised.value.message


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[tuple[TestClient[Any, Any], InMemoryEventStore]]:
    memory = InMemoryEventStore()
    ctx = Context(store=memory, views=memory, tokens=Tokens({"acme-token": "acme"}))
    async with TestClient(TestServer(build_app(ctx))) as client:
        yield client, memory


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": "127.0.0.1:5000/app"}, "image"),
        ({"image": "localhost/app:1"}, "image"),
        ({"image": "169.254.169.254/latest"}, "image"),
        ({"image": "metadata.google.internal/app"}, "image"),
        ({"image": "intranet:8080/app@sha256:" + "a" * 64}, "image"),
        (
            {"image": "busybox", "sidecars": [{"name": "db", "image": "10.1.2.3/db"}]},
            "sidecars[0].image",
        ),
    ],
)
async def test_submit_refuses_a_local_registry_with_422_naming_image(
    api: tuple[TestClient[Any, Any], InMemoryEventStore], body: dict[str, Any], field: str
) -> None:
    client, memory = api
    before = len(await memory.read_all(START, 10_000))
    response = await client.post("/v1/jobs", json={**body, "pull": "never"}, headers=ACME)
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["details"]["field"] == field
    assert "DOCKYARD_ALLOWED_REGISTRIES" in error["message"]
    assert len(await memory.read_all(START, 10_000)) == before  # nothing stored


async def test_a_schedule_with_a_local_registry_is_refused_naming_job_image(
    api: tuple[TestClient[Any, Any], InMemoryEventStore],
) -> None:
    client, _ = api
    body = {"name": "probe", "interval_s": 60, "job": {"image": "[::1]:80/x", "pull": "never"}}
    response = await client.post("/v1/schedules", json=body, headers=ACME)
    assert response.status == 422
    assert (await response.json())["error"]["details"]["field"] == "job.image"
    body["job"] = {"image": "localhost:80/x", "pull": "never"}
    response = await client.post("/v1/schedules", json=body, headers=ACME)
    assert response.status == 422
    assert (await response.json())["error"]["details"]["field"] == "job.image"
