"""Engine health, with the engine's failures injected into the fake runtime: an outage is
seen, logged once, keeps claims off, shows on the heartbeat and /readyz, and is reconciled
before claims resume."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application

from dockyard.bus.names import LABEL_JOB
from dockyard.orchestrator.engine_health import EngineHealth
from dockyard.orchestrator.heartbeat import Heartbeats
from dockyard.orchestrator.registry import Registry
from dockyard.runtime import FakeRuntime, Script
from dockyard.runtime.ports import ContainerError, RuntimeUnavailable
from dockyard.web import health
from tests.unit.test_orchestrator_recovery import IMAGE, Reports, leave_behind, recovery

DOWN = RuntimeUnavailable("ping the engine: Cannot connect to the Docker daemon")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pings(runtime: FakeRuntime) -> int:
    return sum(1 for operation, _ in runtime.calls if operation == "ping")


async def test_an_outage_is_logged_once_and_reconciled_once_before_it_is_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = FakeRuntime()
    runtime.fail("ping", DOWN, times=5)
    reconciled: list[bool] = []

    async def on_back() -> None:
        reconciled.append(engine.up)  # still down while it reconciles: nothing claims yet

    engine = EngineHealth(runtime, on_back=on_back)
    with caplog.at_level(logging.INFO, "dockyard.orchestrator.engine"):
        for _ in range(5):
            assert await engine.check() is False
        assert engine.error is not None and "Cannot connect" in engine.error
        assert await engine.check() is True
        await engine.check()

    assert (engine.error, engine.outages, reconciled) == (None, 1, [False])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("engine_down" in m for m in messages) == 1  # once per outage, not per ping
    assert sum("engine_back" in m for m in messages) == 1


async def test_a_claim_batch_pings_only_past_the_freshness_window() -> None:
    runtime, clock = FakeRuntime(), Clock()
    engine = EngineHealth(runtime, fresh_s=1.0, clock=clock)

    assert await engine.ready()
    clock.now = 0.5
    assert await engine.ready()
    assert pings(runtime) == 1
    clock.now = 1.5
    runtime.fail("ping", DOWN)
    assert not await engine.ready()
    assert pings(runtime) == 2


async def test_wait_up_holds_claims_while_down_and_lets_them_go_when_back() -> None:
    runtime = FakeRuntime()
    runtime.fail("ping", DOWN, times=3)
    engine = EngineHealth(runtime, fresh_s=0.0)
    stopping = asyncio.Event()

    waiting = asyncio.create_task(engine.wait_up(stopping))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the engine is away: no claim batch
    await engine.check()
    await engine.check()  # the third failure; still away
    assert not waiting.done()
    await engine.check()  # back
    assert await asyncio.wait_for(waiting, 1) is True


async def test_wait_up_gives_up_when_stopping() -> None:
    runtime = FakeRuntime()
    runtime.fail("ping", DOWN, times=100)
    engine = EngineHealth(runtime, fresh_s=100.0)
    stopping = asyncio.Event()

    waiting = asyncio.create_task(engine.wait_up(stopping))
    await asyncio.sleep(0.02)
    stopping.set()
    assert await asyncio.wait_for(waiting, 1) is False


async def test_a_reconcile_that_finds_the_engine_gone_again_stays_down() -> None:
    runtime = FakeRuntime()
    runtime.fail("ping", DOWN)
    calls = 0

    async def on_back() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeUnavailable("list containers: Docker did not answer")
        raise ContainerError("a bug in the reconcile")

    engine = EngineHealth(runtime, on_back=on_back)
    assert not await engine.check()
    assert not await engine.check()  # answered, but gone during the reconcile
    assert await engine.check()  # another failure must not keep claims off for good
    assert calls == 2


async def test_the_heartbeat_says_why_the_engine_is_away() -> None:
    engine = EngineHealth(FakeRuntime())
    beats = Heartbeats(
        None,  # type: ignore[arg-type]
        Registry(),
        orchestrator="o-1",
        queues=("default",),
        max_jobs=2,
        lease_s=15,
        period_s=5,
        engine_error=lambda: engine.error,
    )
    assert beats.current().engine_error is None
    engine.mark_down("ping the engine: Docker did not answer in time")

    assert beats.current().engine_error == "ping the engine: Docker did not answer in time"


async def test_readyz_is_503_naming_the_engine_and_why() -> None:
    engine = EngineHealth(FakeRuntime())
    engine.mark_down("ping the engine: Cannot connect to the Docker daemon")

    async def docker() -> bool:
        return engine.up

    async def render() -> bytes:
        return b""

    app = Application()
    app.add_routes(health.routes({"docker": docker}, render, {"docker": lambda: engine.error}))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/readyz")
        body: Any = await response.json()
        assert response.status == 503
        assert body["error"]["message"] == (
            "not answering: docker (ping the engine: Cannot connect to the Docker daemon)"
        )
        assert body["error"]["details"] == {"docker": False}
        engine.mark_up()
        assert (await client.get("/readyz")).status == 200


async def test_reconciling_leaves_the_attempts_still_running_here_alone() -> None:
    runtime = FakeRuntime(images=[IMAGE])
    runtime.program(["mine-running"], Script(runs_for_s=math.inf))
    runtime.program(["left"], Script(runs_for_s=math.inf))
    await leave_behind(runtime, "mine-running", start=True, sidecar=False)
    await leave_behind(runtime, "left", start=True, sidecar=False)
    reports, registry = Reports(), Registry()

    reconciling = recovery(
        runtime,
        reports,
        registry=registry,
        stop_grace_s=0.1,
        keep=lambda job_id, attempt: job_id == "mine-running",
    )

    assert await reconciling.run() == [("left", 1)]
    assert {job for job, _ in reports.sent} == {"left"}
    left = await runtime.list_labelled({LABEL_JOB: None})
    assert [r.labels[LABEL_JOB] for r in left] == ["mine-running"]
