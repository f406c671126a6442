"""aiodocker's errors become the port's, once, in the adapter."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import aiodocker
import pytest
from aiodocker.exceptions import DockerError

from dockyard.core.spec import JobSpec
from dockyard.runtime import (
    AlreadyExists,
    ContainerError,
    DockerRuntime,
    ImagePullFailed,
    NotFound,
    RuntimeUnavailable,
    plan_job,
)
from dockyard.runtime.docker import _parse_time, _translate


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (900, "Cannot connect to Docker Engine via unix:///x", RuntimeUnavailable),
        (503, "daemon is shutting down", RuntimeUnavailable),
        (404, "No such container: abc", NotFound),
        (404, "No such image: busybox:nope", ImagePullFailed),
        (409, 'Conflict. The container name "/x" is already in use by "y".', AlreadyExists),
        (409, "network with name x already exists", AlreadyExists),
        (409, "removal of container x is already in progress", ContainerError),
        (400, "invalid ulimit", ContainerError),
        (500, "OCI runtime create failed: ...", ContainerError),
    ],
)  # fmt: skip
def test_engine_errors_are_translated(status: int, message: str, kind: type[Exception]) -> None:
    error = _translate(DockerError(status, message), "create container x")

    assert type(error) is kind
    assert str(error) == f"create container x: {message}"


def test_only_an_unavailable_engine_is_worth_retrying_and_pulls_have_their_reason() -> None:
    assert RuntimeUnavailable("x").transient and not ContainerError("x").transient
    assert ImagePullFailed("x").reason == "image_pull_failed"
    assert ContainerError("x").reason == "container_error"


def test_engine_times_keep_microseconds_and_zone() -> None:
    assert _parse_time("2026-11-29T04:33:14.518412391Z") == datetime(
        2026, 11, 29, 4, 33, 14, 518412, tzinfo=UTC
    )
    assert _parse_time("2026-11-29T04:33:14+01:00").utcoffset() is not None


async def test_an_engine_that_is_not_there_is_runtime_unavailable(tmp_path: Path) -> None:
    docker = aiodocker.Docker(url=f"unix://{tmp_path}/no-docker.sock", api_version="v1.41")
    try:
        runtime = DockerRuntime(docker)
        plan = plan_job(JobSpec(image="busybox"), job_id="j", attempt=1, orchestrator="o")

        with pytest.raises(RuntimeUnavailable, match="create container"):
            await runtime.create_container(plan.job)
        with pytest.raises(RuntimeUnavailable):
            await runtime.ensure_image("busybox", "if_not_present")
    finally:
        await docker.close()
