"""What the fake offers beyond the contract: scripts, injected faults, pulls, a call log."""

from __future__ import annotations

import pytest

from dockyard.core.spec import JobSpec
from dockyard.runtime import (
    ContainerError,
    ContainerPlan,
    ExitStatus,
    FakeRuntime,
    ImagePullFailed,
    RuntimeUnavailable,
    Script,
    plan_job,
)

IMAGE = "busybox"


def _plan(command: list[str] | None = None, job: str = "j1") -> ContainerPlan:
    spec = JobSpec(image=IMAGE, command=command)
    return plan_job(spec, job_id=job, attempt=1, orchestrator="o1").job


async def test_a_programmed_command_writes_and_ends_as_scripted() -> None:
    fake = FakeRuntime(images=[IMAGE])
    fake.program(["hog"], Script((("stdout", b"allocating\n"),), exit_code=137, oom_killed=True))
    container = await fake.create_container(_plan(["hog"]))

    async with fake.stream_output(container) as output:
        await fake.start(container)
        chunks = [chunk async for chunk in output]

    assert chunks == [("stdout", b"allocating\n")]
    assert await fake.wait(container) == ExitStatus(137, oom_killed=True)


async def test_an_injected_fault_is_raised_once() -> None:
    fake = FakeRuntime(images=[IMAGE])
    fake.fail("create_container", RuntimeUnavailable("engine restarting"))

    with pytest.raises(RuntimeUnavailable):
        await fake.create_container(_plan())
    assert await fake.create_container(_plan())
    assert [op for op, _ in fake.calls] == ["create_container", "create_container"]


async def test_pull_policies() -> None:
    fake = FakeRuntime(images=["present:1"], pullable=["remote:2"])

    await fake.ensure_image("present:1", "never")
    with pytest.raises(ImagePullFailed):
        await fake.ensure_image("remote:2", "never")
    await fake.ensure_image("remote:2", "if_not_present")
    await fake.ensure_image("remote:2", "always")
    with pytest.raises(ImagePullFailed):
        await fake.ensure_image("present:1", "always")  # no registry has it
    assert fake.images == {"present:1", "remote:2"}


async def test_a_missing_image_at_create_is_image_pull_failed() -> None:
    with pytest.raises(ImagePullFailed):
        await FakeRuntime().create_container(_plan())


async def test_wait_before_start_is_refused() -> None:
    fake = FakeRuntime(images=[IMAGE])
    container = await fake.create_container(_plan())

    with pytest.raises(ContainerError, match="never started"):
        await fake.wait(container)


async def test_attaching_after_the_end_gives_no_output() -> None:
    fake = FakeRuntime(images=[IMAGE], script=lambda plan: Script((("stdout", b"x\n"),)))
    container = await fake.create_container(_plan())
    await fake.start(container)
    await fake.wait(container)

    async with fake.stream_output(container) as output:
        assert [chunk async for chunk in output] == []


async def test_a_hand_made_weakened_plan_is_refused() -> None:
    plan = _plan()
    plan.config["HostConfig"]["Privileged"] = True

    with pytest.raises(ContainerError, match="privileged"):
        await FakeRuntime(images=[IMAGE]).create_container(plan)
