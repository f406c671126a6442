"""Local images made without a registry: busybox for jobs, nats-server for fault tests."""

from __future__ import annotations

import aiodocker
import nats

from dockyard.stack.images import ensure_busybox_image, ensure_nats_image
from tests.support.containers import NatsContainer


async def _run(docker: aiodocker.Docker, image: str, cmd: list[str]) -> tuple[int, str]:
    """Run `cmd` to the end; its exit code and stdout."""
    container = await docker.containers.create({"Image": image, "Cmd": cmd})
    try:
        await container.start()
        result = await container.wait(timeout=30)
        logs = await container.log(stdout=True)
        return result["StatusCode"], "".join(logs)
    finally:
        await container.delete(force=True)


async def test_busybox_image_runs_a_shell(docker: aiodocker.Docker, busybox_image: str) -> None:
    code, output = await _run(docker, busybox_image, ["sh", "-c", "echo hi"])

    assert (code, output) == (0, "hi\n")


async def test_busybox_image_has_the_common_tools(
    docker: aiodocker.Docker, busybox_image: str
) -> None:
    script = "seq 3 | wc -l; timeout 1 sleep 5; echo $?; test -d /work && test -d /tmp && echo ok"
    code, output = await _run(docker, busybox_image, ["/bin/sh", "-c", script])

    assert code == 0
    assert output.split() == ["3", "143", "ok"]


async def test_busybox_image_default_command_is_sh(
    docker: aiodocker.Docker, busybox_image: str
) -> None:
    info = await docker.images.inspect(busybox_image)

    assert info["Config"]["Cmd"] == ["/bin/sh"]


async def test_ensure_image_twice_keeps_the_same_image(docker: aiodocker.Docker) -> None:
    first = await docker.images.inspect(await ensure_busybox_image(docker=docker))
    second = await docker.images.inspect(await ensure_busybox_image(docker=docker))

    assert first["Id"] == second["Id"]


async def test_nats_image_serves_jetstream(nats_container: NatsContainer) -> None:
    nc = await nats.connect(nats_container.url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="PING", subjects=["ping"])
        ack = await js.publish("ping", b"pong")
        assert ack.seq == 1
    finally:
        await nc.close()


async def test_nats_image_entrypoint_is_nats_server(docker: aiodocker.Docker) -> None:
    info = await docker.images.inspect(await ensure_nats_image(docker=docker))

    assert info["Config"]["Entrypoint"] == ["/nats-server"]
    assert "4222/tcp" in info["Config"]["ExposedPorts"]


async def test_nats_container_can_be_paused_and_resumed(
    docker: aiodocker.Docker, nats_container: NatsContainer
) -> None:
    container = docker.containers.container(nats_container.container_id)
    await container.pause()
    await container.unpause()

    nc = await nats.connect(nats_container.url, connect_timeout=5, allow_reconnect=False)
    await nc.close()
