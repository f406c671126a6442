"""The runtime contract, held against the real Docker engine."""

from __future__ import annotations

import aiodocker
import pytest

from dockyard.runtime import ContainerRuntime, DockerRuntime
from tests.contracts.runtime import RuntimeContract


class TestDockerRuntimeContract(RuntimeContract):
    @pytest.fixture
    def runtime(self, docker: aiodocker.Docker) -> ContainerRuntime:
        return DockerRuntime(docker)

    @pytest.fixture
    def image(self, busybox_image: str) -> str:
        return busybox_image
