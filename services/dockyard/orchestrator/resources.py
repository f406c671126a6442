"""What one attempt creates in the engine, each recorded in the ledger before it exists and
released after it is gone; `release` removes everything, newest first, whatever happened.

The ledger's names are the engine's names (deterministic per attempt), so the janitor can
match an intent to a container or network, and a second create for the same attempt fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Final, Literal

from dockyard.bus.errors import BusError
from dockyard.core.commands import PlannedResource, RecordResource, ReleaseResource
from dockyard.core.events import ReleaseHow
from dockyard.orchestrator.ports import ReportSink
from dockyard.runtime.ports import (
    AlreadyExists,
    ContainerPlan,
    ContainerRuntime,
    ContainerRuntimeError,
    ImagePullFailed,
    NetworkPlan,
)

log = logging.getLogger("dockyard.orchestrator.resources")

ContainerKind = Literal["container", "sidecar"]
ResourceKind = Literal["container", "sidecar", "network"]

# Pauses before the second and third try of a removal: an engine that hiccups (restarting,
# a network whose last endpoint is still going) usually answers within a second, and the
# janitor, who takes what is still there after that, comes only every sweep.
REMOVE_RETRY_DELAYS_S: Final = (0.2, 1.0)
# Only a failure this quick is tried again: one that took longer (an engine that does not
# answer, timed out) would hold the slot, and a stop, for minutes more; the janitor takes it.
QUICK_FAILURE_S: Final = 5.0


class AttemptResources:
    def __init__(
        self,
        runtime: ContainerRuntime,
        reports: ReportSink,
        *,
        job_id: str,
        attempt: int,
        orchestrator: str,
        engine: str | None = None,
        recorded: Collection[PlannedResource] = (),
    ) -> None:
        self._engine = engine
        # Intents the claim put in the ledger already; those never created are released as
        # gone (the attempt ended before it got to them: a pull failed, a stop came first).
        self._recorded = {r.name: r.kind for r in recorded}
        self._uncreated = dict(self._recorded)
        self._runtime = runtime
        self._reports = reports
        self._job_id = job_id
        self._attempt = attempt
        self._orchestrator = orchestrator
        # (kind, ledger name, engine id), in creation order.
        self._made: list[tuple[ResourceKind, str, str]] = []

    @property
    def count(self) -> int:
        return len(self._made)

    async def network(self, plan: NetworkPlan) -> str:
        await self._intend("network", plan.name)
        try:
            network_id = await self._runtime.create_network(plan)
        except AlreadyExists:
            raise  # another runner's: never ours to remove
        except BaseException:
            # A timed-out or cancelled create may still have happened: remove it by name.
            self._made.append(("network", plan.name, plan.name))
            raise
        self._made.append(("network", plan.name, network_id))
        return network_id

    async def container(
        self,
        plan: ContainerPlan,
        kind: ContainerKind,
        *,
        on_missing_image: Callable[[], Awaitable[None]] | None = None,
    ) -> str:
        """Record, then create. If the engine says the image is missing, `on_missing_image`
        (pull it) runs once and the create is tried again, under the same ledger entry."""
        await self._intend(kind, plan.name)
        self._uncreated.pop(plan.name, None)
        try:
            try:
                container_id = await self._runtime.create_container(plan)
            except ImagePullFailed:
                if on_missing_image is None:
                    raise
                await on_missing_image()
                container_id = await self._runtime.create_container(plan)
        except AlreadyExists:
            raise
        except BaseException:
            self._made.append((kind, plan.name, plan.name))
            raise
        self._made.append((kind, plan.name, container_id))
        return container_id

    async def release(self, on_engine_clean: Callable[[], None] | None = None) -> None:
        """Remove everything made, newest first, then report the removals; what cannot be
        removed stays in the ledger, for the janitor. Never raises an engine error.

        `on_engine_clean` is called once every removal was done or tried, before the removals
        are stored: the orchestrator's slot is free from then on."""
        removed: list[tuple[ResourceKind, str, ReleaseHow]] = [
            (kind, name, "gone") for name, kind in self._uncreated.items()
        ]
        self._uncreated.clear()
        while self._made:
            kind, name, engine_id = self._made.pop()
            how = await self._remove(kind, name, engine_id)
            if how is not None:
                removed.append((kind, name, how))
        if on_engine_clean is not None:
            on_engine_clean()
        for kind, name, how in removed:
            try:
                await self._released(kind, name, how)
            except BusError as exc:  # NATS is closed (shutdown): the janitor sees it is gone
                log.warning("orchestrator.release_unreported %s=%s error=%s", kind, name, exc)

    async def _remove(self, kind: ResourceKind, name: str, engine_id: str) -> ReleaseHow | None:
        """How it went from the engine, or None if it is still there (logged): left in the
        ledger for the janitor."""
        loop = asyncio.get_running_loop()
        for delay in (*REMOVE_RETRY_DELAYS_S, None):
            tried_at = loop.time()
            try:
                if kind == "network":
                    return await self._runtime.remove_network(engine_id)
                return await self._runtime.remove(engine_id)
            except ContainerRuntimeError as exc:
                error = exc
            if delay is None or loop.time() - tried_at > QUICK_FAILURE_S:
                break
            log.info(
                "orchestrator.remove_retry job=%s %s=%s error=%s retry_in=%s",
                self._job_id,
                kind,
                name,
                error,
                delay,
                extra={"event": "orchestrator.remove_retry", "job": self._job_id},
            )
            await asyncio.sleep(delay)
        log.warning(
            "orchestrator.remove_abandoned job=%s %s=%s error=%s",
            self._job_id,
            kind,
            name,
            error,
            extra={"event": "orchestrator.remove_abandoned", "job": self._job_id},
        )
        return None

    async def _intend(self, kind: ResourceKind, name: str) -> None:
        if name in self._recorded:
            return
        await self._reports.send(
            self._job_id,
            RecordResource(
                attempt=self._attempt,
                kind=kind,
                name=name,
                orchestrator=self._orchestrator,
                engine=self._engine,
            ),
        )

    async def _released(self, kind: ResourceKind, name: str, how: ReleaseHow) -> None:
        await self._reports.send(
            self._job_id, ReleaseResource(attempt=self._attempt, kind=kind, name=name, how=how)
        )
