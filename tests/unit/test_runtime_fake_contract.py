"""The runtime contract, held against the in-memory fake."""

from __future__ import annotations

import pytest

from dockyard.runtime import ContainerRuntime, FakeRuntime
from tests.contracts.runtime import RuntimeContract, script_from_command

IMAGE = "dockyard/busybox:latest"


class TestFakeRuntimeContract(RuntimeContract):
    @pytest.fixture
    def runtime(self) -> ContainerRuntime:
        return FakeRuntime(images=[IMAGE], script=script_from_command)

    @pytest.fixture
    def image(self) -> str:
        return IMAGE
