"""The hardened profile on the real engine: limits hold, privileges are gone, nothing leaks."""

from __future__ import annotations

import asyncio
import io
import tarfile
import uuid
from collections.abc import AsyncIterator

import aiodocker
import pytest
import pytest_asyncio

from dockyard.bus.names import LABEL_JOB, LABEL_ORCHESTRATOR
from dockyard.core.spec import JobSpec, Resources, Sidecar
from dockyard.runtime import (
    DockerRuntime,
    ExitStatus,
    JobPlan,
    LogLine,
    LogPipeline,
    LogPump,
    plan_job,
)
from dockyard.runtime.hardening import bridge_prefix, can_cap_writable_layer
from dockyard.runtime.ports import ContainerError
from tests.contracts.runtime import run_to_end


class Jobs:
    """Plans jobs for one test under its own orchestrator id, and removes all it made."""

    def __init__(self, runtime: DockerRuntime, image: str) -> None:
        self.runtime = runtime
        self.image = image
        self.orchestrator = f"it-{uuid.uuid4().hex[:12]}"

    def plan(self, script: str, **spec: object) -> JobPlan:
        job_spec = JobSpec(image=self.image, command=["sh", "-c", script], **spec)  # type: ignore[arg-type]
        return plan_job(
            job_spec, job_id=uuid.uuid4().hex, attempt=1, orchestrator=self.orchestrator
        )

    async def run(self, script: str, **spec: object) -> tuple[ExitStatus, dict[str, list[str]]]:
        return await run_to_end(self.runtime, self.plan(script, **spec).job)

    async def clean(self) -> None:
        mine = {LABEL_ORCHESTRATOR: self.orchestrator}
        for resource in sorted(await self.runtime.list_labelled(mine), key=lambda r: r.kind):
            if resource.kind == "container":
                await self.runtime.remove(resource.id)
            else:
                await self.runtime.remove_network(resource.id)
        assert await self.runtime.list_labelled(mine) == []


@pytest_asyncio.fixture(loop_scope="session")
async def jobs(docker: aiodocker.Docker, busybox_image: str) -> AsyncIterator[Jobs]:
    made = Jobs(DockerRuntime(docker), busybox_image)
    yield made
    await made.clean()


async def test_oom_is_reported_as_oom_killed(jobs: Jobs) -> None:
    # `tail` keeps an endless line in memory, so it really holds what it reads.
    status, _ = await jobs.run("head -c 200m /dev/zero | tail", resources=Resources(memory_mb=32))

    assert status == ExitStatus(137, oom_killed=True)


async def test_oom_of_a_child_is_reported_even_when_the_job_exits_zero(jobs: Jobs) -> None:
    # cgroup v1 sets OOMKilled when any process of the container was killed, not only PID 1.
    status, lines = await jobs.run(
        "head -c 200m /dev/zero | tail; echo survived", resources=Resources(memory_mb=32)
    )

    # The kernel picks its victim by size, and under load it has taken the shell as well:
    # what must hold is that the OOM kill is reported, whoever it hit.
    assert status.oom_killed
    if status.exit_code == 0:
        assert lines["stdout"] == ["survived"]
    else:
        assert status.exit_code == 137


async def test_a_fork_bomb_hits_the_pid_limit_and_the_host_is_fine(jobs: Jobs) -> None:
    # The bomb dies out once no process can fork; the exit code depends on who failed last.
    _, lines = await jobs.run("f() { f | f & }; f; sleep 2", resources=Resources(pids=32))

    assert any("can't fork" in line for line in lines["stderr"])
    host = await asyncio.create_subprocess_exec("true")  # the host can still fork
    assert await host.wait() == 0


async def test_root_is_read_only_but_tmp_and_workdir_are_writable_as_nobody(jobs: Jobs) -> None:
    script = (
        "id -u; touch /x 2>/dev/null || echo root-ro; touch /tmp/a && echo tmp-rw; "
        "touch /work/b && echo work-rw; pwd; "
        "cp /bin/busybox /tmp/busybox && /tmp/busybox true 2>/dev/null || echo tmp-noexec; "
        "cp /bin/busybox /work/busybox && /work/busybox true && echo work-exec"
    )
    status, lines = await jobs.run(script)

    assert status.exit_code == 0
    assert lines["stdout"] == [
        "65534", "root-ro", "tmp-rw", "work-rw", "/work", "tmp-noexec", "work-exec"
    ]  # fmt: skip


@pytest_asyncio.fixture(loop_scope="session")
async def root_owned_dirs_image(docker: aiodocker.Docker, busybox_image: str) -> AsyncIterator[str]:
    """An image whose /tmp and `WORKDIR /app` are root-owned 0755, built here and removed."""
    tag = f"dockyard-test/root-owned-dirs:{uuid.uuid4().hex[:12]}"
    dockerfile = (
        f"FROM {busybox_image}\n"
        "USER 0:0\n"
        "RUN mkdir -p /app && chown 0:0 /app /tmp /work && chmod 0755 /app /tmp /work\n"
        "WORKDIR /app\n"
    ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    await docker.images.build(fileobj=context, encoding="identity", tag=tag, rm=True, forcerm=True)
    try:
        yield tag
    finally:
        await docker.images.delete(tag, force=True)


@pytest.mark.parametrize("user", ["65534:65534", "1000", "0:0"])
async def test_a_root_owned_0755_workdir_and_tmp_are_writable_by_the_job_user(
    jobs: Jobs, root_owned_dirs_image: str, user: str
) -> None:
    jobs.image = root_owned_dirs_image
    script = "id -u; touch /app/a && echo app-rw; touch /tmp/b && echo tmp-rw; ls -ld /app"
    status, lines = await jobs.run(script, workdir="/app", user=user)

    assert status.exit_code == 0, lines
    assert lines["stdout"][:3] == [user.partition(":")[0], "app-rw", "tmp-rw"]
    assert lines["stdout"][3].startswith("drwxr-xr-x")  # the image's mode, and ours to write


async def _build(docker: aiodocker.Docker, tag: str, dockerfile: bytes) -> None:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    await docker.images.build(fileobj=context, encoding="identity", tag=tag, rm=True, forcerm=True)


@pytest_asyncio.fixture(loop_scope="session")
async def volume_image(docker: aiodocker.Docker, busybox_image: str) -> AsyncIterator[str]:
    """An image declaring two VOLUMEs, built here and removed."""
    tag = f"dockyard-test/volumes:{uuid.uuid4().hex[:12]}"
    await _build(docker, tag, f"FROM {busybox_image}\nVOLUME /data /var/cache/x\n".encode())
    try:
        yield tag
    finally:
        await docker.images.delete(tag, force=True)


async def test_image_volumes_are_size_capped_tmpfs_never_disk_volumes(
    jobs: Jobs, docker: aiodocker.Docker, volume_image: str
) -> None:
    jobs.image = volume_image
    script = (
        "touch /data/a && echo data-rw; grep -E ' /(data|var/cache/x) ' /proc/mounts | "
        "cut -d' ' -f1-3; dd if=/dev/zero of=/data/big bs=1M count=100 2>/dev/null "
        "|| echo data-full"
    )
    plan = jobs.plan(script, resources=Resources(memory_mb=256))
    container_id = await jobs.runtime.create_container(plan.job)
    info = await docker.containers.container(container_id).show()
    assert info["Mounts"] == []  # no anonymous volume was made
    await jobs.runtime.remove(container_id)

    status, lines = await jobs.run(script, resources=Resources(memory_mb=256))

    assert status.exit_code == 0, lines
    assert lines["stdout"] == [
        "data-rw", "tmpfs /data tmpfs", "tmpfs /var/cache/x tmpfs", "data-full"
    ]  # fmt: skip


async def test_an_image_with_too_many_volumes_is_refused_saying_why(
    jobs: Jobs, docker: aiodocker.Docker, busybox_image: str
) -> None:
    tag = f"dockyard-test/many-volumes:{uuid.uuid4().hex[:12]}"
    paths = " ".join(f"/v{i}" for i in range(17))
    await _build(docker, tag, f"FROM {busybox_image}\nVOLUME {paths}\n".encode())
    try:
        jobs.image = tag
        with pytest.raises(ContainerError, match="declares 17 VOLUMEs; at most 16"):
            await jobs.runtime.create_container(jobs.plan("true").job)
    finally:
        await docker.images.delete(tag, force=True)


async def test_a_writable_root_is_capped_only_where_the_storage_driver_can(
    jobs: Jobs, docker: aiodocker.Docker
) -> None:
    info = await docker.system.info()
    status = dict(info.get("DriverStatus") or [])
    sized = can_cap_writable_layer(info["Driver"], status.get("Backing Filesystem", ""))
    plan = jobs.plan("touch /written && echo root-rw", read_only=False)
    container_id = await jobs.runtime.create_container(plan.job)
    shown = await docker.containers.container(container_id).show()
    await jobs.runtime.remove(container_id)

    expected = {"size": "1024M"} if sized else None
    assert shown["HostConfig"].get("StorageOpt") == expected  # none here: overlay2 on ext4
    # (A tenant with allow_root: the root directory is root's to write.)
    status_, lines = await jobs.run("touch /written && echo root-rw", read_only=False, user="0:0")
    assert (status_.exit_code, lines["stdout"]) == (0, ["root-rw"])


async def test_tmpfs_is_size_capped(jobs: Jobs) -> None:
    status, lines = await jobs.run(
        "head -c 20m /dev/zero > /tmp/big 2>/dev/null || echo full",
        resources=Resources(memory_mb=32),  # /tmp gets half: 16m
    )

    assert (status.exit_code, lines["stdout"]) == (0, ["full"])


async def test_no_network_but_loopback_by_default(jobs: Jobs) -> None:
    _, lines = await jobs.run("ls /sys/class/net; wc -l < /proc/net/route")

    assert lines["stdout"] == ["lo", "1"]  # no interface and no route: only the header


async def test_all_capabilities_dropped_even_for_root_and_seccomp_on(jobs: Jobs) -> None:
    script = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"
    for user in ("65534:65534", "0:0"):
        _, lines = await jobs.run(script, user=user)

        assert lines["stdout"] == [
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",  # 2: the default filter is on
        ]


async def test_nofile_ulimit_is_set(jobs: Jobs) -> None:
    _, lines = await jobs.run("ulimit -n; ulimit -Hn")

    assert lines["stdout"] == ["1024", "4096"]


async def test_inspect_shows_the_profile_and_labels(jobs: Jobs, docker: aiodocker.Docker) -> None:
    plan = jobs.plan("true", resources=Resources(cpus=0.5, memory_mb=64, pids=50))
    container_id = await jobs.runtime.create_container(plan.job)

    info = await docker.containers.container(container_id).show()

    host = info["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False and host["CapDrop"] == ["ALL"]
    assert host["ReadonlyRootfs"] is True and not host.get("Binds")
    assert (host["Memory"], host["MemorySwap"]) == (64 << 20, 64 << 20)
    assert (host["NanoCpus"], host["PidsLimit"]) == (500_000_000, 50)
    assert host["OomScoreAdj"] == 500  # the host's OOM killer takes a job before a service
    assert info["Mounts"] == []
    assert plan.job.config["Labels"].items() <= info["Config"]["Labels"].items()


async def test_a_sidecar_is_reachable_by_name_on_an_internal_network(
    jobs: Jobs, docker: aiodocker.Docker
) -> None:
    serve = "while true; do echo hello-from-sidecar | nc -l -p 8080; done"
    plan = jobs.plan(
        "for i in $(seq 1 100); do nc helper 8080 </dev/null && exit 0; sleep 0.1; done; exit 1",
        sidecars=(Sidecar(name="helper", image=jobs.image, command=["sh", "-c", serve]),),
    )
    assert plan.network is not None
    await jobs.runtime.create_network(plan.network)
    sidecar = await jobs.runtime.create_container(plan.sidecars[0])
    await jobs.runtime.start(sidecar)

    status, lines = await run_to_end(jobs.runtime, plan.job)

    assert (status.exit_code, lines["stdout"]) == (0, ["hello-from-sidecar"])
    network = await (await docker.networks.get(plan.network.name)).show()
    assert network["Internal"] is True
    # Its bridge carries the name its orchestrator's egress rules match (`-i dy<5 hex>+`).
    bridge = network["Options"]["com.docker.network.bridge.name"]
    assert bridge.startswith(bridge_prefix(jobs.orchestrator)) and len(bridge) == 15
    # This engine (20.10, API 1.41) does not know gateway_mode_ipv4: it is not asked for.
    assert "com.docker.network.bridge.gateway_mode_ipv4" not in network["Options"]
    assert network["Labels"][LABEL_JOB] == plan.job.config["Labels"][LABEL_JOB]


async def test_output_through_the_pump_is_numbered_and_masked(jobs: Jobs) -> None:
    plan = jobs.plan(
        'echo "token=$TOKEN"; echo warn >&2; printf "no newline"',
        env={"TOKEN": "s3cr3t-value"},
        secrets=("TOKEN",),
    )
    container = await jobs.runtime.create_container(plan.job)
    pump = LogPump(LogPipeline(attempt=1, next_seq=10, secrets=["s3cr3t-value"]))
    lines: list[LogLine] = []

    async def publish(batch: list[LogLine]) -> None:
        lines.extend(batch)

    async with jobs.runtime.stream_output(container) as output:
        await jobs.runtime.start(container)
        await pump.run(output, publish)

    assert [line.seq for line in lines] == [10, 11, 12]
    assert sorted((line.stream, line.text) for line in lines) == [
        ("stderr", "warn"),
        ("stdout", "no newline"),
        ("stdout", "token=***"),
    ]
