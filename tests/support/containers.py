"""NATS in a Docker container, for tests that pause, kill or cut off the server."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

# Set by machines that can pull from Docker Hub, to test against the real image.
OFFICIAL_IMAGES = os.environ.get("DOCKYARD_TEST_OFFICIAL_IMAGES") == "1"
OFFICIAL_NATS_IMAGE = "nats:2.12"
# Both images run nats-server as their entrypoint, so the same arguments fit both.
NATS_ARGS = ["-js", "-sd", "/data", "-m", "8222"]


@dataclass
class NatsContainer:
    """A running NATS container; use its id with the `docker` fixture to pause or kill it."""

    url: str  # through the port published on this host
    container_id: str
    ip: str  # on Docker's default bridge network, for other containers
    _container: DockerContainer

    def stop(self) -> None:
        """Remove the container, whatever a test did to it, and close the Docker client."""
        import docker.errors  # type: ignore[import-untyped]  # testcontainers' own client

        try:
            self._container.stop()
        except docker.errors.NotFound:
            self._container.get_docker_client().client.close()


def start_nats_container(image: str) -> NatsContainer:
    """Start `image` with JetStream and wait until it serves clients (blocking)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    container = (
        DockerContainer(image)
        .with_command(NATS_ARGS)
        .with_exposed_ports(4222)
        .waiting_for(LogMessageWaitStrategy("Server is ready").with_startup_timeout(30))
    )
    try:
        container.start()
        host = container.get_container_host_ip()
        port = container.get_exposed_port(4222)
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        ip = wrapped.attrs["NetworkSettings"]["IPAddress"]
    except BaseException:
        container.stop()
        raise
    # "localhost" may resolve to ::1 first; the published port is certain on IPv4.
    host = "127.0.0.1" if host == "localhost" else host
    return NatsContainer(f"nats://{host}:{port}", container.get_container_id(), ip, container)
