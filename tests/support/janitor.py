"""Running janitors against the real thing in tests, without touching anyone else's containers.

The Docker engine is shared with whatever else runs on the machine (other test sessions too),
so every janitor a test starts is scoped with `select` to a label only that test's containers
carry: the orchestrator label of a per-test orchestrator id. `Leftovers` makes and cleans up
such containers and networks.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from dockyard.bus import close, connect, ensure_topology, jetstream
from dockyard.bus.names import LABEL_ATTEMPT, LABEL_JOB, LABEL_ORCHESTRATOR
from dockyard.config import load
from dockyard.janitor import Janitor, JanitorConfig, bootstrap
from dockyard.janitor.observe import EngineId
from dockyard.runtime.ports import ContainerRuntime
from tests.support.orchestration import TEST_LEASE_S

# A container that exits at once on SIGTERM, as a well-behaved job would.
POLITE_SLEEP = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]


def scoped_orchestrator_id() -> str:
    return f"test-janitor-{uuid.uuid4().hex[:8]}"


def labels(job_id: str, attempt: int | str, orchestrator: str) -> dict[str, str]:
    return {LABEL_JOB: job_id, LABEL_ATTEMPT: str(attempt), LABEL_ORCHESTRATOR: orchestrator}


class Leftovers:
    """Containers and networks made by one test; `cleanup` removes whatever is left of them."""

    def __init__(
        self, docker: aiodocker.Docker, image: str, installation: dict[str, str] | None = None
    ) -> None:
        self.docker = docker
        self.image = image
        self.installation = installation or {}  # labels of the installation, unless given
        self.containers: list[str] = []
        self.networks: list[str] = []

    async def container(
        self,
        name: str,
        container_labels: dict[str, str],
        *,
        start: bool = True,
        command: list[str] | None = None,
        network: str = "none",
    ) -> str:
        config: dict[str, Any] = {
            "Image": self.image,
            "Cmd": command or POLITE_SLEEP,
            "Labels": {**self.installation, **container_labels},
            "HostConfig": {"NetworkMode": network},
        }
        container = await self.docker.containers.create(config, name=name)
        self.containers.append(container.id)
        if start:
            await container.start()
        return str(container.id)

    async def network(self, name: str, network_labels: dict[str, str]) -> str:
        network = await self.docker.networks.create(
            {"Name": name, "Labels": {**self.installation, **network_labels}, "Internal": True}
        )
        self.networks.append(network.id)
        return str(network.id)

    async def exists(self, name_or_id: str) -> bool:
        try:
            await self.docker.containers.get(name_or_id)
        except DockerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def network_exists(self, name_or_id: str) -> bool:
        try:
            await self.docker.networks.get(name_or_id)
        except DockerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def cleanup(self) -> None:
        for ident in self.containers:
            with contextlib.suppress(DockerError):
                await self.docker.containers.container(ident).delete(force=True)
        for ident in self.networks:
            with contextlib.suppress(DockerError):
                await (await self.docker.networks.get(ident)).delete()


async def labelled_with(docker: aiodocker.Docker, orchestrator: str) -> list[str]:
    filters = {"label": [f"{LABEL_ORCHESTRATOR}={orchestrator}"]}
    containers = await docker.containers.list(all=True, filters=filters)
    networks = await docker.networks.list(filters=filters)
    return sorted([c["Names"][0].lstrip("/") for c in containers] + [n["Name"] for n in networks])


def janitor_config(orchestrator: str | None, **overrides: Any) -> JanitorConfig:
    """Short waits, nothing kept back by retention unless asked, Docker scoped to the test."""
    fields: dict[str, Any] = {
        "lease_s": TEST_LEASE_S,
        "grace_s": 0.0,
        "stop_grace_s": 0.0,
        "log_retention_s": 0.0,
        "job_retention_s": 0.0,
        "select": {LABEL_ORCHESTRATOR: orchestrator} if orchestrator else {},
        "lock_wait_s": 30.0,
        **overrides,
    }
    return JanitorConfig(**fields)


@asynccontextmanager
async def running_janitor(
    nats_url: str,
    database_url: str,
    docker: aiodocker.Docker,
    orchestrator: str | None,
    *,
    runtime: ContainerRuntime | None = None,
    engine_id: EngineId | None = None,
    own_deployment_only: bool = False,
    **overrides: Any,
) -> AsyncIterator[Janitor]:
    """A janitor wired as the service wires it (PostgreSQL, NATS, the engine, its lock)."""
    settings = load(
        {
            "DOCKYARD_NATS_URL": nats_url,
            "DOCKYARD_DATABASE_URL": database_url,
            "DOCKYARD_LEASE_S": str(TEST_LEASE_S),
        }
    )
    config = janitor_config(orchestrator, **overrides)
    await _topology_as_the_scheduler_makes_it(nats_url)
    async with bootstrap(
        settings,
        config,
        docker=docker,
        runtime=runtime,
        engine_id=engine_id,
        own_deployment_only=own_deployment_only,
    ) as janitor:
        yield janitor


async def _topology_as_the_scheduler_makes_it(nats_url: str) -> None:
    """A janitor only waits for the topology (bus/permissions.py): the scheduler makes it."""
    nc = await connect(nats_url, "test scheduler topology")
    try:
        await ensure_topology(jetstream(nc), lease_s=TEST_LEASE_S)
    finally:
        await close(nc)
