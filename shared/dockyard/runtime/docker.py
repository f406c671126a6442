"""The container runtime port over a Docker engine, through aiodocker.

aiodocker's `DockerError` (and aiohttp's connection errors) are translated here, once, into the
port's typed errors. Output is read over the multiplexed attach stream: measured on this engine
it is 3-6x faster than attach with a log driver and ~25x faster than `logs?follow`, and it
keeps stdout and stderr apart (the attach websocket and aiodocker's `log()` merge them).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError
from aiodocker.stream import Stream
from yarl import URL

from dockyard.core.events import ReleaseHow
from dockyard.core.spec import PullPolicy
from dockyard.core.usage import Counters
from dockyard.runtime.cgroups import counters_from_stats
from dockyard.runtime.hardening import (
    can_cap_writable_layer,
    check_hardened,
    with_image_volumes,
    with_isolated_gateway,
    with_writable_cap,
)
from dockyard.runtime.ports import (
    AlreadyExists,
    Chunk,
    ContainerError,
    ContainerPlan,
    ContainerRuntimeError,
    ContainerState,
    ExitStatus,
    ImagePullFailed,
    NetworkPlan,
    NotFound,
    Resource,
    ResourceKind,
    RuntimeUnavailable,
    is_engine_name,
)

CALL_TIMEOUT_S = 60.0
PULL_TIMEOUT_S = 600.0
_ENGINE_DOWN = {900, 502, 503, 504}  # aiodocker reports "cannot connect" as status 900


class DockerRuntime:
    """`ContainerRuntime` on a Docker engine. The caller owns (and closes) the client."""

    def __init__(
        self,
        docker: aiodocker.Docker,
        *,
        call_timeout_s: float = CALL_TIMEOUT_S,
        pull_timeout_s: float = PULL_TIMEOUT_S,
    ) -> None:
        self._docker = docker
        self._timeout = call_timeout_s
        self._pull_timeout = pull_timeout_s
        self._api: str | None = None
        self._can_size: bool | None = None

    async def ping(self, timeout_s: float) -> None:
        # GET /_ping: the engine's own liveness check, the cheapest call it answers.
        async with self._call("ping the engine", deadline=timeout_s), self._docker._query("_ping"):
            pass

    async def ensure_image(self, ref: str, policy: PullPolicy) -> None:
        if policy != "always":
            try:
                async with self._call(f"inspect image {ref}"):
                    await self._docker.images.inspect(ref)
                return
            except (NotFound, ImagePullFailed):  # the engine's 404 says "No such image"
                if policy == "never":
                    raise ImagePullFailed(
                        f"image {ref} is not present and the pull policy is never"
                    ) from None
        try:
            async with (
                asyncio.timeout(self._pull_timeout),
                self._call(f"pull image {ref}", deadline="none"),
            ):
                await self._docker.images.pull(ref)
        except TimeoutError:
            limit = f"{self._pull_timeout:g} s"
            raise ImagePullFailed(f"pull image {ref}: not done after {limit}") from None
        except RuntimeUnavailable:
            raise
        except ContainerRuntimeError as exc:
            raise ImagePullFailed(exc.message) from exc

    async def create_network(self, plan: NetworkPlan) -> str:
        config = plan.config
        if config.get("Internal"):
            config = with_isolated_gateway(config, await self._api_version())
        async with self._call(f"create network {plan.name}"):
            network = await self._docker.networks.create(config)
        return str(network.id)

    async def _sized(self) -> bool:
        """Whether the engine's storage driver can cap a writable layer, asked once."""
        if self._can_size is None:
            async with self._call("ask the engine's storage driver"):
                info = await self._docker.system.info()
            status = dict((pair[0], pair[1]) for pair in info.get("DriverStatus") or [])
            backing = str(status.get("Backing Filesystem", ""))
            self._can_size = can_cap_writable_layer(str(info.get("Driver", "")), backing)
        return self._can_size

    async def _api_version(self) -> str:
        """The engine's API version, asked once."""
        if self._api is None:
            async with self._call("ask the engine's version"):
                self._api = str((await self._docker.version()).get("ApiVersion") or "0")
        return self._api

    async def remove_network(self, name_or_id: str) -> ReleaseHow:
        try:
            async with self._call(f"remove network {name_or_id}"):
                network = await self._docker.networks.get(name_or_id)
                await network.delete()
        except NotFound:
            return "gone"
        return "removed"

    async def create_container(self, plan: ContainerPlan) -> str:
        try:
            volumes = await self._image_volumes(plan)
            config = with_image_volumes(plan.config, volumes) if volumes else plan.config
            if not config["HostConfig"].get("ReadonlyRootfs", True) and await self._sized():
                config = with_writable_cap(config)
            check_hardened(config)
        except ValueError as exc:
            raise ContainerError(f"refused to create {plan.name}: {exc}") from None
        async with self._call(f"create container {plan.name}"):
            container = await self._docker.containers.create(config, name=plan.name)
        return str(container.id)

    async def _image_volumes(self, plan: ContainerPlan) -> list[str]:
        """The VOLUMEs the image declares (none if the engine does not know the image: the
        create then fails saying so)."""
        ref = plan.config["Image"]
        try:
            async with self._call(f"create container {plan.name}: inspect image {ref}"):
                data = await self._docker.images.inspect(ref)
        except (NotFound, ImagePullFailed):
            return []
        return list((data.get("Config") or {}).get("Volumes") or {})

    async def start(self, container_id: str) -> None:
        async with self._call(f"start container {container_id}"):
            await self._docker.containers.container(container_id).start()

    @asynccontextmanager
    async def stream_output(self, container_id: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        """Attach now (before `start`), yield the demultiplexed chunks, detach on exit."""

        async def setup() -> tuple[URL, bytes | None, bool]:
            # aiodocker's own attach() inspects first only to learn `Tty`: ours is always off.
            query = {"stdout": "1", "stderr": "1", "stream": "1", "logs": "0", "stdin": "0"}
            return URL(f"containers/{container_id}/attach").with_query(query), None, False

        stream = Stream(self._docker, setup)
        try:
            async with self._call(f"attach to container {container_id}"):
                await stream.__aenter__()
            yield self._chunks(stream, container_id)
        finally:
            await stream.close()

    async def wait(self, container_id: str) -> ExitStatus:
        async with self._call(f"wait for container {container_id}", deadline="none"):
            result = await self._docker.containers.container(container_id).wait()
        state = await self.inspect(container_id)  # OOMKilled is only known to inspect
        error = (result.get("Error") or {}).get("Message") or None
        return ExitStatus(
            exit_code=int(result["StatusCode"]), oom_killed=state.oom_killed, error=error
        )

    async def stop(self, container_id: str, grace_s: float) -> None:
        # The engine counts whole seconds; rounding up never shortens the promised grace.
        grace = max(0, math.ceil(grace_s))
        async with self._call(f"stop container {container_id}", deadline=grace + self._timeout):
            await self._docker.containers.container(container_id).stop(t=grace)

    async def remove(self, container_id: str) -> ReleaseHow:
        try:
            async with self._call(f"remove container {container_id}"):
                container = self._docker.containers.container(container_id)
                await container.delete(force=True, v=True)
        except NotFound:
            return "gone"
        except ContainerError as exc:
            if "already in progress" in exc.message:
                return "gone"  # another remover (the janitor) got there first
            raise
        return "removed"

    async def inspect(self, container_id: str) -> ContainerState:
        async with self._call(f"inspect container {container_id}"):
            data = await self._docker.containers.container(container_id).show()
        state = data["State"]
        ended = state["Status"] in ("exited", "dead")
        return ContainerState(
            id=data["Id"],
            name=data["Name"].lstrip("/"),
            labels=data["Config"].get("Labels") or {},
            running=bool(state["Running"]),
            exit_code=int(state["ExitCode"]) if ended else None,
            oom_killed=bool(state["OOMKilled"]),
            ran_s=_ran_s(state),
            started_at=_engine_time(state.get("StartedAt")),
        )

    async def usage_stats(self, container_id: str) -> Counters | None:
        async with self._call(f"read the usage of container {container_id}"):
            answer = await self._docker.containers.container(container_id).stats(stream=False)
        stats = answer[0] if isinstance(answer, list) and answer else answer
        return counters_from_stats(stats) if isinstance(stats, dict) else None

    async def list_labelled(self, labels: Mapping[str, str | None]) -> list[Resource]:
        wanted = [key if value is None else f"{key}={value}" for key, value in labels.items()]
        filters = {"label": wanted}
        async with self._call("list labelled containers and networks"):
            containers = await self._docker.containers.list(all=True, filters=filters)
            networks = await self._docker.networks.list(filters=filters)
        found = [_container_resource(container) for container in containers]
        return found + [_network_resource(n) for n in networks]

    async def inspect_named(self, kind: ResourceKind, name: str) -> Resource | None:
        if not is_engine_name(name):
            return None
        try:
            async with self._call(f"inspect {kind} {name}"):
                if kind == "network":
                    data = await (await self._docker.networks.get(name)).show()
                else:
                    data = await self._docker.containers.container(name).show()
        except NotFound:
            return None
        found = _named_resource(kind, data)
        # The engine resolves an id, and an id's prefix, before (and besides) a name.
        return found if found.name == name else None

    async def _chunks(self, stream: Stream, container_id: str) -> AsyncIterator[Chunk]:
        while True:
            try:
                message = await stream.read_out()
            except (aiohttp.ClientError, OSError) as exc:
                raise RuntimeUnavailable(f"output of {container_id} was cut: {exc}") from exc
            if message is None:
                return
            yield ("stderr" if message.stream == 2 else "stdout", message.data)

    @asynccontextmanager
    async def _call(
        self, what: str, *, deadline: float | Literal["default", "none"] = "default"
    ) -> AsyncIterator[None]:
        """Run one engine call under a deadline and translate whatever it raises."""
        limit = self._timeout if deadline == "default" else None if deadline == "none" else deadline
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError as exc:  # ours, or aiohttp's own socket timeouts
            raise RuntimeUnavailable(f"{what}: Docker did not answer in time") from exc
        except DockerError as exc:
            raise _translate(exc, what) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable(f"{what}: Docker did not answer ({exc})") from exc


def _translate(exc: DockerError, what: str) -> ContainerRuntimeError:
    message = f"{what}: {exc.message}"
    if exc.status in _ENGINE_DOWN:
        return RuntimeUnavailable(message)
    if exc.status == 404:
        if "no such image" in exc.message.lower():
            return ImagePullFailed(message)
        return NotFound(message)
    if exc.status == 409 and ("already in use" in exc.message or "already exists" in exc.message):
        return AlreadyExists(message)
    return ContainerError(message)


def _container_resource(container: DockerContainer) -> Resource:
    return Resource(
        kind="container",
        id=container.id,
        name=container["Names"][0].lstrip("/"),
        labels=container["Labels"] or {},
        created_at=datetime.fromtimestamp(int(container["Created"]), UTC),
        running=container["State"] == "running",
    )


def _network_resource(data: dict[str, Any]) -> Resource:
    return Resource(
        kind="network",
        id=data["Id"],
        name=data["Name"],
        labels=data.get("Labels") or {},
        created_at=_parse_time(data["Created"]),
        running=False,
    )


def _named_resource(kind: ResourceKind, data: dict[str, Any]) -> Resource:
    """A container's or network's inspect answer as a `Resource`."""
    if kind == "network":
        return _network_resource(data)
    return Resource(
        kind="container",
        id=data["Id"],
        name=data["Name"].lstrip("/"),
        labels=(data.get("Config") or {}).get("Labels") or {},
        created_at=_parse_time(data["Created"]),
        running=bool((data.get("State") or {}).get("Running")),
    )


def _parse_time(text: str) -> datetime:
    """The engine's RFC 3339 with nanoseconds; Python keeps microseconds."""
    head, dot, tail = text.partition(".")
    if dot:
        digits = "".join(ch for ch in tail if ch.isdigit())
        zone = tail[len(digits) :]
        head = f"{head}.{digits[:6]}{zone}"
    parsed = datetime.fromisoformat(head.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def required_engine_id(docker: aiodocker.Docker, timeout_s: float = 30.0) -> str:
    """The engine's own ID (`docker info`), which names where a ledger entry lives, for
    janitors; or RuntimeUnavailable saying why there is none."""
    try:
        async with asyncio.timeout(timeout_s):
            info = await docker.system.info()
    except TimeoutError as exc:
        raise RuntimeUnavailable("docker info: Docker did not answer in time") from exc
    except (DockerError, aiohttp.ClientError, OSError) as exc:
        raise RuntimeUnavailable(f"docker info: Docker did not answer ({exc})") from exc
    ident = str(info.get("ID") or "")
    if not ident:
        raise RuntimeUnavailable("docker info: the engine has no ID")
    return ident


def _ran_s(state: dict[str, Any]) -> float | None:
    """Start to exit (or to now), from the engine's RFC 3339 times (nanoseconds, and year 1
    for a time that never was)."""
    started = _engine_time(state.get("StartedAt"))
    if started is None:
        return None
    ended = _engine_time(state.get("FinishedAt")) if not state.get("Running") else None
    return max(0.0, ((ended or datetime.now(UTC)) - started).total_seconds())


# "2026-11-29T07:00:00.123456789Z" (or with an offset): Python takes microseconds at most.
_ENGINE_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?")


def _engine_time(text: object) -> datetime | None:
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    match = _ENGINE_TIME.fullmatch(text)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    micros = (fraction or "0")[:6].ljust(6, "0")
    offset = "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(f"{base}.{micros}{offset}")
