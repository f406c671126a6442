"""Settling a ledger entry against the fake engine: what carries the entry's name is removed,
by its id, only if its labels prove it the attempt's (security review F3).

The ledger's names come over NATS in claims and reports; decide refuses foreign ones now, so
each history here is written past it, as a forged claim could before the names were checked.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import pytest

from dockyard.bus.names import LABEL_ATTEMPT, LABEL_DEPLOYMENT, LABEL_JOB, LABEL_ORCHESTRATOR
from dockyard.core import ClaimJob, ReportExit, ReportStarted, SubmitJob, fold
from dockyard.core.events import Event, ResourceIntended, ResourceReleased
from dockyard.core.resource_names import container_name
from dockyard.core.spec import JobSpec
from dockyard.janitor.act import Executor
from dockyard.janitor.config import JanitorConfig
from dockyard.janitor.metrics import JanitorMetrics
from dockyard.janitor.observe import Sources
from dockyard.janitor.plan import Release, SettleEntry
from dockyard.runtime import ContainerPlan, FakeRuntime, plan_job
from dockyard.runtime.ports import Resource, ResourceKind
from dockyard.store.memory import InMemoryEventStore
from dockyard.store.pool import Pool
from tests.unit.builders import JOB, Scenario

IMAGE = "busybox:latest"
OTHER_JOB = "0190f0c2-0000-7000-8000-000000000002"
DEPLOYMENT = "our-installation"
ORCH = "o1"
NOW = datetime(2026, 1, 1, 1, tzinfo=UTC)


def labels(job_id: str = JOB, attempt: int = 1, deployment: str = DEPLOYMENT) -> dict[str, str]:
    return {
        LABEL_JOB: job_id,
        LABEL_ATTEMPT: str(attempt),
        LABEL_ORCHESTRATOR: ORCH,
        LABEL_DEPLOYMENT: deployment,
    }


async def make(runtime: FakeRuntime, name: str, container_labels: dict[str, str]) -> str:
    """A running container of that name and those labels (hardened, as the fake insists)."""
    spec = msgspec.convert({"image": IMAGE}, JobSpec)
    hardened = plan_job(spec, job_id=JOB, attempt=1, orchestrator=ORCH).job
    config: dict[str, Any] = {**hardened.config, "Labels": container_labels}
    container = await runtime.create_container(ContainerPlan(name=name, config=config))
    await runtime.start(container)
    return container


async def ledger_naming(
    store: InMemoryEventStore, name: str, kind: ResourceKind = "container"
) -> SettleEntry:
    """A finished job whose ledger holds `name`; the settle action the planner makes of it."""
    s = Scenario().given(
        SubmitJob(tenant="acme", spec=JobSpec(image=IMAGE)),
        ClaimJob(attempt=1, orchestrator=ORCH),
        ReportStarted(attempt=1, container_id="c", orchestrator=ORCH),
    )
    s.events.append(
        ResourceIntended(
            event_id="0190f0c2-0000-7000-8000-0000000000aa",
            job_id=JOB,
            at=s.now,
            attempt=1,
            kind=kind,
            name=name,
            orchestrator=ORCH,
            engine="ENGINE",
        )
    )
    s.when(ReportExit(attempt=1, exit_code=0))
    events = [msgspec.structs.replace(e, event_id=_uuid(i)) for i, e in enumerate(s.events)]
    await store.append(JOB, 0, events, view=fold(events))
    return SettleEntry(
        job_id=JOB, entry=Release(kind=kind, name=name, attempt=1), why="the job is succeeded"
    )


def _uuid(i: int) -> str:
    return f"0190f0c2-0000-7000-8000-{i:012x}"


def executor(runtime: FakeRuntime, store: InMemoryEventStore) -> Executor:
    sources = Sources(pool=cast(Pool, None), runtime=runtime, deployment=DEPLOYMENT)
    config = JanitorConfig(stop_grace_s=0, select={LABEL_ORCHESTRATOR: ORCH})
    return Executor(sources, store, config, JanitorMetrics(), lambda: NOW + timedelta(hours=1))


async def released(store: InMemoryEventStore) -> list[tuple[str, str]]:
    events: list[Event] = [r.event for r in await store.load(JOB)]
    return [(e.name, e.how) for e in events if isinstance(e, ResourceReleased)]


@pytest.mark.parametrize(
    "planted_labels",
    [
        {"com.example.service": "postgres"},  # anyone's container, no Dockyard labels
        labels(OTHER_JOB),  # another job's
        labels(attempt=2),  # another attempt's
        labels(deployment="another-installation"),  # another installation's, same job id
        {k: v for k, v in labels().items() if k != LABEL_ORCHESTRATOR},  # outside `select`
    ],
    ids=["unlabelled", "other-job", "other-attempt", "other-installation", "unselected"],
)
async def test_settling_never_removes_a_container_planted_in_the_ledger(
    planted_labels: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    runtime, store = FakeRuntime(images=[IMAGE]), InMemoryEventStore()
    planted = await make(runtime, "dockyard-postgres-1", planted_labels)
    act = executor(runtime, store)

    outcome = await act.do(await ledger_naming(store, "dockyard-postgres-1"))

    assert outcome == "done"
    assert (await runtime.inspect(planted)).running  # untouched: not even stopped
    assert [op for op, _ in runtime.calls if op in ("stop", "remove")] == []
    assert await released(store) == [("dockyard-postgres-1", "gone")]
    assert 'dockyard_janitor_foreign_total{kind="container"} 1.0' in act.metrics.render().decode()
    [warning] = [r for r in caplog.records if "janitor.ledger_not_ours" in r.getMessage()]
    assert JOB in warning.getMessage() and "'dockyard-postgres-1'" in warning.getMessage()


async def test_settling_never_removes_a_network_planted_in_the_ledger() -> None:
    runtime, store = FakeRuntime(images=[IMAGE]), InMemoryEventStore()
    spec = msgspec.convert({"image": IMAGE, "network": "isolated"}, JobSpec)
    network = plan_job(spec, job_id=OTHER_JOB, attempt=1, orchestrator=ORCH).network
    assert network is not None
    await runtime.create_network(network)

    await executor(runtime, store).do(await ledger_naming(store, network.name, "network"))

    assert await runtime.inspect_named("network", network.name) is not None
    assert await released(store) == [(network.name, "gone")]


async def test_a_straggler_proven_the_attempts_is_stopped_and_removed_by_its_id() -> None:
    runtime, store = FakeRuntime(images=[IMAGE]), InMemoryEventStore()
    name = container_name(JOB, 1)
    ours = await make(runtime, name, labels())

    assert await executor(runtime, store).do(await ledger_naming(store, name)) == "done"

    assert await runtime.inspect_named("container", name) is None
    assert ("stop", ours) in runtime.calls and ("remove", ours) in runtime.calls
    assert await released(store) == [(name, "removed")]


async def test_an_entry_whose_name_the_engine_does_not_know_is_settled_gone() -> None:
    runtime, store = FakeRuntime(images=[IMAGE]), InMemoryEventStore()
    name = container_name(JOB, 1)

    await executor(runtime, store).do(await ledger_naming(store, name))

    assert await released(store) == [(name, "gone")]
    assert [op for op, _ in runtime.calls] == ["inspect_named"]


class NameTakenAfterInspect(FakeRuntime):
    """Between the janitor's inspect and its removal, ours goes and someone else's takes
    the name."""

    async def inspect_named(self, kind: ResourceKind, name: str) -> Resource | None:
        found = await super().inspect_named(kind, name)
        if found is not None:
            await super().remove(found.id)
            self.newcomer = await make(self, name, {"com.example.service": "postgres"})
        return found


async def test_a_name_taken_again_between_inspect_and_removal_keeps_the_newcomer() -> None:
    runtime, store = NameTakenAfterInspect(images=[IMAGE]), InMemoryEventStore()
    name = container_name(JOB, 1)
    await make(runtime, name, labels())

    await executor(runtime, store).do(await ledger_naming(store, name))

    assert (await runtime.inspect(runtime.newcomer)).running
    assert await released(store) == [(name, "gone")]
