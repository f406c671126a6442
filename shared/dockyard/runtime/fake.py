"""An in-memory `ContainerRuntime` with scripted containers, for unit tests and benchmarks.

It keeps the engine's rules that callers rely on (unique names, attach before start, SIGTERM
then SIGKILL, "gone" on a second remove, labels) and is held to them by the same contract
tests as `DockerRuntime`. It is stricter in one place: `wait` before `start` is refused.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from dockyard.core.events import ReleaseHow
from dockyard.core.spec import PullPolicy
from dockyard.core.usage import Counters
from dockyard.runtime.hardening import check_hardened
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
    is_engine_name,
)

SIGTERM_EXIT = 128 + 15
SIGKILL_EXIT = 128 + 9


@dataclass(frozen=True)
class Script:
    """What a fake container does once started: write, then run on (`math.inf`: until stopped)."""

    output: tuple[Chunk, ...] = ()
    exit_code: int = 0
    oom_killed: bool = False
    runs_for_s: float = 0.0
    ignores_term: bool = False  # only the SIGKILL after the grace ends it
    error: str | None = None


@dataclass
class _Container:
    id: str
    plan: ContainerPlan
    script: Script
    created_at: datetime
    status: Literal["created", "running", "exited"] = "created"
    exit: ExitStatus | None = None
    started: float | None = None  # loop time of the start, and of the exit
    ended: float | None = None
    readers: list[asyncio.Queue[Chunk | None]] = field(default_factory=list)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def network(self) -> str:
        return str(self.plan.config.get("HostConfig", {}).get("NetworkMode", "none"))


@dataclass
class _Network:
    id: str
    plan: NetworkPlan
    created_at: datetime


def _ran_s(container: _Container) -> float | None:
    if container.started is None:
        return None
    ended = container.ended if container.ended is not None else asyncio.get_running_loop().time()
    # uvloop's clock counts whole milliseconds, divided into seconds: a timer of 0.05 s can
    # fire when the difference reads 0.04999999999. Docker's own times have no such noise.
    return round(ended - container.started, 6)


def _started_at(container: _Container) -> datetime | None:
    if container.started is None:
        return None
    ago = asyncio.get_running_loop().time() - container.started
    return datetime.now(UTC) - timedelta(seconds=ago)


def _normalise(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last or "@" in last else f"{ref}:latest"


class FakeRuntime:
    """`ContainerRuntime` in memory. `images` are present; `pullable` ones can be pulled."""

    def __init__(
        self,
        *,
        images: Iterable[str] = (),
        pullable: Iterable[str] = (),
        script: Callable[[ContainerPlan], Script] | None = None,
    ) -> None:
        self.images = {_normalise(ref) for ref in images}
        self.pullable = {_normalise(ref) for ref in pullable}
        self.calls: list[tuple[str, str]] = []  # (operation, name or id), for assertions
        self._script = script or (lambda plan: Script())
        self._programs: dict[tuple[str, ...], Script] = {}
        self._faults: dict[str, list[ContainerRuntimeError]] = {}
        self._containers: dict[str, _Container] = {}
        self._networks: dict[str, _Network] = {}
        self._ids = itertools.count(1)
        self.usage: dict[str, Counters] = {}  # container name -> what usage_stats answers

    def program(self, command: Sequence[str], script: Script) -> None:
        """Containers created with exactly this command run `script`."""
        self._programs[tuple(command)] = script

    def fail(self, operation: str, error: ContainerRuntimeError, times: int = 1) -> None:
        """The next `times` calls of `operation` (a method name) raise `error`."""
        self._faults.setdefault(operation, []).extend([error] * times)

    async def ping(self, timeout_s: float) -> None:
        """Answers unless `fail("ping", ...)` says otherwise."""
        self._enter("ping", "engine")

    async def ensure_image(self, ref: str, policy: PullPolicy) -> None:
        self._enter("ensure_image", ref)
        ref = _normalise(ref)
        if policy != "always" and ref in self.images:
            return
        if policy == "never":
            raise ImagePullFailed(f"image {ref} is not present and the pull policy is never")
        if ref not in self.pullable:
            raise ImagePullFailed(f"pull image {ref}: repository does not exist or no access")
        self.images.add(ref)

    async def create_network(self, plan: NetworkPlan) -> str:
        self._enter("create_network", plan.name)
        if any(net.plan.name == plan.name for net in self._networks.values()):
            raise AlreadyExists(f"create network {plan.name}: network already exists")
        network = _Network(self._new_id(), plan, datetime.now(UTC))
        self._networks[network.id] = network
        return network.id

    async def remove_network(self, name_or_id: str) -> ReleaseHow:
        self._enter("remove_network", name_or_id)
        network = self._find_network(name_or_id)
        if network is None:
            return "gone"
        if any(c.status == "running" and c.network == network.plan.name for c in self._all()):
            raise ContainerError(f"remove network {name_or_id}: network has active endpoints")
        del self._networks[network.id]
        return "removed"

    async def create_container(self, plan: ContainerPlan) -> str:
        self._enter("create_container", plan.name)
        try:
            check_hardened(plan.config)
        except ValueError as exc:
            raise ContainerError(f"refused to create {plan.name}: {exc}") from None
        if _normalise(plan.config["Image"]) not in self.images:
            raise ImagePullFailed(f"create container {plan.name}: No such image")
        if any(c.plan.name == plan.name for c in self._all()):
            raise AlreadyExists(f"create container {plan.name}: name already in use")
        network = plan.config.get("HostConfig", {}).get("NetworkMode", "none")
        if network != "none" and self._find_network(network) is None:
            raise NotFound(f"create container {plan.name}: network {network} not found")
        command = tuple(plan.config.get("Cmd") or ())
        script = self._programs.get(command) or self._script(plan)
        container = _Container(self._new_id(), plan, script, datetime.now(UTC))
        self._containers[container.id] = container
        return container.id

    async def start(self, container_id: str) -> None:
        container = self._get("start", container_id)
        if container.status == "running":
            return
        if container.status == "exited":
            raise ContainerError(f"start container {container_id}: it has already run")
        container.status = "running"
        container.started = asyncio.get_running_loop().time()
        container.task = asyncio.create_task(self._run(container))

    @asynccontextmanager
    async def stream_output(self, container_id: str) -> AsyncIterator[AsyncIterator[Chunk]]:
        container = self._get("stream_output", container_id)
        queue: asyncio.Queue[Chunk | None] = asyncio.Queue()
        if container.status == "exited":
            queue.put_nowait(None)
        else:
            container.readers.append(queue)
        try:
            yield _drain(queue)
        finally:
            if queue in container.readers:
                container.readers.remove(queue)

    async def wait(self, container_id: str) -> ExitStatus:
        container = self._get("wait", container_id)
        if container.status == "created":
            raise ContainerError(f"wait for container {container_id}: it was never started")
        await container.exited.wait()
        assert container.exit is not None
        return container.exit

    async def stop(self, container_id: str, grace_s: float) -> None:
        container = self._get("stop", container_id)
        if container.status != "running":
            return
        if not container.script.ignores_term:
            self._end(container, ExitStatus(SIGTERM_EXIT))
            return
        try:
            async with asyncio.timeout(max(0.0, grace_s)):
                await container.exited.wait()
        except TimeoutError:
            self._end(container, ExitStatus(SIGKILL_EXIT))

    async def remove(self, container_id: str) -> ReleaseHow:
        self._enter("remove", container_id)
        container = self._find_container(container_id)
        if container is None:
            return "gone"
        if container.status == "running":
            self._end(container, ExitStatus(SIGKILL_EXIT))
        del self._containers[container.id]
        return "removed"

    async def inspect(self, container_id: str) -> ContainerState:
        container = self._get("inspect", container_id)
        exit = container.exit
        return ContainerState(
            id=container.id,
            name=container.plan.name,
            labels=dict(container.plan.config.get("Labels") or {}),
            running=container.status == "running",
            exit_code=None if exit is None else exit.exit_code,
            oom_killed=exit is not None and exit.oom_killed,
            ran_s=_ran_s(container),
            started_at=_started_at(container),
        )

    async def usage_stats(self, container_id: str) -> Counters | None:
        """What `usage[name]` holds for a running container (tests set it), else None."""
        container = self._get("usage_stats", container_id)
        if container.status != "running":
            return None
        return self.usage.get(container.plan.name)

    async def list_labelled(self, labels: Mapping[str, str | None]) -> list[Resource]:
        self._enter("list_labelled", ",".join(labels))
        found = [
            _resource("container", c.id, c.plan, c.created_at, c.status == "running")
            for c in self._all()
        ]
        found += [_resource("network", n.id, n.plan, n.created_at) for n in self._networks.values()]
        return [r for r in found if _matches(r.labels, labels)]

    async def inspect_named(self, kind: ResourceKind, name: str) -> Resource | None:
        self._enter("inspect_named", name)
        if not is_engine_name(name):
            return None
        if kind == "network":
            net = next((n for n in self._networks.values() if n.plan.name == name), None)
            return None if net is None else _resource("network", net.id, net.plan, net.created_at)
        c = next((c for c in self._all() if c.plan.name == name), None)
        if c is None:
            return None
        return _resource("container", c.id, c.plan, c.created_at, c.status == "running")

    async def _run(self, container: _Container) -> None:
        script = container.script
        for chunk in script.output:
            for reader in container.readers:
                reader.put_nowait(chunk)
            await asyncio.sleep(0)
        if math.isinf(script.runs_for_s):
            await asyncio.Event().wait()  # until stopped or removed
        await asyncio.sleep(script.runs_for_s)
        self._end(container, ExitStatus(script.exit_code, script.oom_killed, script.error))

    def _end(self, container: _Container, exit: ExitStatus) -> None:
        if container.status == "exited":
            return
        container.status = "exited"
        container.exit = exit
        container.ended = asyncio.get_running_loop().time()
        if container.task is not None and container.task is not asyncio.current_task():
            container.task.cancel()
        for reader in container.readers:
            reader.put_nowait(None)
        container.readers.clear()
        container.exited.set()

    def _enter(self, operation: str, target: str) -> None:
        self.calls.append((operation, target))
        faults = self._faults.get(operation)
        if faults:
            raise faults.pop(0)

    def _get(self, operation: str, container_id: str) -> _Container:
        self._enter(operation, container_id)
        container = self._find_container(container_id)
        if container is None:
            raise NotFound(f"{operation} {container_id}: No such container")
        return container

    def _find_container(self, name_or_id: str) -> _Container | None:
        if name_or_id in self._containers:
            return self._containers[name_or_id]
        return next((c for c in self._all() if c.plan.name == name_or_id), None)

    def _find_network(self, name_or_id: str) -> _Network | None:
        if name_or_id in self._networks:
            return self._networks[name_or_id]
        return next((n for n in self._networks.values() if n.plan.name == name_or_id), None)

    def _all(self) -> list[_Container]:
        return list(self._containers.values())

    def _new_id(self) -> str:
        return f"{next(self._ids):064x}"


def _resource(kind: ResourceKind, id_: str, plan: ContainerPlan | NetworkPlan, at: datetime,
              running: bool = False) -> Resource:  # fmt: skip
    return Resource(kind, id_, plan.name, dict(plan.config.get("Labels") or {}), at, running)


def _matches(have: Mapping[str, str], want: Mapping[str, str | None]) -> bool:
    return all(k in have and (v is None or have[k] == v) for k, v in want.items())


async def _drain(queue: asyncio.Queue[Chunk | None]) -> AsyncIterator[Chunk]:
    while (chunk := await queue.get()) is not None:
        yield chunk
