"""The container runtime port: what the orchestrator and the janitor need from a container engine.

`DockerRuntime` (aiodocker) and `FakeRuntime` (in memory) implement it; one contract test class
(`dockyard.runtime.contract`) runs against both so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol

from msgspec import Struct

from dockyard.core.events import ReleaseHow
from dockyard.core.reasons import Reason
from dockyard.core.spec import PullPolicy
from dockyard.core.usage import Counters

OutputStream = Literal["stdout", "stderr"]
Chunk = tuple[OutputStream, bytes]
ResourceKind = Literal["container", "network"]
# The engine's rule for container names (ours for networks too): a name outside it can name
# nothing of ours, and is never put in a request path.
_ENGINE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


def is_engine_name(name: str) -> bool:
    return _ENGINE_NAME.fullmatch(name) is not None


class ContainerPlan(Struct, frozen=True):
    """The exact engine request for one container, built by `dockyard.runtime.hardening`."""

    name: str
    config: dict[str, Any]
    role: Literal["job", "sidecar"] = "job"


class NetworkPlan(Struct, frozen=True):
    """The exact engine request for one per-job network."""

    name: str
    config: dict[str, Any]


class JobPlan(Struct, frozen=True):
    """Everything one attempt needs, in creation order: network, sidecars, then the job."""

    job: ContainerPlan
    sidecars: tuple[ContainerPlan, ...] = ()
    network: NetworkPlan | None = None


class ExitStatus(Struct, frozen=True):
    """How a container ended. `oom_killed` can be true with exit code 0 (a child was killed)."""

    exit_code: int
    oom_killed: bool = False
    error: str | None = None


class ContainerState(Struct, frozen=True):
    """What the engine says about one container now."""

    id: str
    name: str
    labels: dict[str, str]
    running: bool
    exit_code: int | None
    oom_killed: bool
    # Seconds from its start to its exit (to now while it runs); None if it never started.
    ran_s: float | None = None
    # When it started (None if it never did): an exit found after a restart vouches for it.
    started_at: datetime | None = None


class Resource(Struct, frozen=True):
    """A labelled container or network, as the janitor sees it (`running` is false for networks)."""

    kind: ResourceKind
    id: str
    name: str
    labels: dict[str, str]
    created_at: datetime
    running: bool


class ContainerRuntimeError(Exception):
    """Base of every error a runtime raises; `transient` says whether to retry the same call."""

    transient: ClassVar[bool] = False
    # The job's failure reason when this error ends an attempt; None when it should not.
    reason: ClassVar[Reason | None] = "container_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RuntimeUnavailable(ContainerRuntimeError):
    """Raised when the engine cannot be reached or answers it is busy; worth retrying later."""

    transient = True


class ImagePullFailed(ContainerRuntimeError):
    """Raised when an image is missing and cannot be pulled (or the policy forbids pulling)."""

    reason = "image_pull_failed"


class ContainerError(ContainerRuntimeError):
    """Raised when the engine refuses a request; the message is the engine's, for a person."""


class NotFound(ContainerRuntimeError):
    """Raised when the named container or network does not exist (any more)."""


class AlreadyExists(ContainerRuntimeError):
    """Raised when a container or network of that name exists: this attempt was already created."""

    reason = None


class ContainerRuntime(Protocol):
    """A container engine, seen through the operations a job attempt needs."""

    async def ping(self, timeout_s: float) -> None:
        """Return if the engine answers within `timeout_s`; RuntimeUnavailable saying why not."""
        ...

    async def ensure_image(self, ref: str, policy: PullPolicy) -> None:
        """Make `ref` present per `policy`; raises ImagePullFailed with the engine's words."""
        ...

    async def create_network(self, plan: NetworkPlan) -> str:
        """Create the network; returns its id. AlreadyExists if the name is taken."""
        ...

    async def remove_network(self, name_or_id: str) -> ReleaseHow:
        """Remove the network (its containers first); "gone" if it did not exist. Given an
        id, only that network: never a newer one that took its name."""
        ...

    async def create_container(self, plan: ContainerPlan) -> str:
        """Create (not start) the container; returns its id. AlreadyExists if the name is taken."""
        ...

    async def start(self, container_id: str) -> None: ...

    def stream_output(self, container_id: str) -> AbstractAsyncContextManager[AsyncIterator[Chunk]]:
        """Attach to stdout/stderr; enter BEFORE `start` or early output is lost.

        Yields chunks as written until the container exits. The consumer must keep reading
        (the engine may block the container's writes on a stalled reader): use `LogPump`.
        """
        ...

    async def wait(self, container_id: str) -> ExitStatus:
        """Wait until the container has exited; may be called again after it has."""
        ...

    async def stop(self, container_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; returns once it has exited."""
        ...

    async def remove(self, container_id: str) -> ReleaseHow:
        """Remove by force, with its anonymous volumes; "gone" if it did not exist. Given an
        id, only that container: never a newer one that took its name."""
        ...

    async def inspect(self, container_id: str) -> ContainerState: ...

    async def usage_stats(self, container_id: str) -> Counters | None:
        """The container's counters from the engine (slow: about 2 s a call), for where its
        cgroup files cannot be read (runtime.cgroups); None once it has stopped."""
        ...

    async def list_labelled(self, labels: Mapping[str, str | None]) -> list[Resource]:
        """Containers (running or not) and networks carrying every label (any value if None)."""
        ...

    async def inspect_named(self, kind: ResourceKind, name: str) -> Resource | None:
        """The container (running or not) or network named exactly `name`, with its id and
        labels; None if there is none. Never one whose id is, or starts with, `name` (the
        engine resolves those too), and never looked up for a name outside the engine's
        rule. To act on what was found, pass its `id`: the name may be taken again meanwhile.
        """
        ...
