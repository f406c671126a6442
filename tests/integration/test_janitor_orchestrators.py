"""The janitor with real orchestrators that die or freeze mid-job (subprocesses it SIGKILLs
or SIGSTOPs), the scheduler's side running in-process (claims, reports, relay, due ticker)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiodocker
import nats.js.errors
import pytest_asyncio
from nats.js import JetStreamContext

from dockyard.bus import names
from dockyard.core import Job
from dockyard.core.events import (
    ContainerStarted,
    Event,
    JobFailed,
    JobSucceeded,
    OrchestratorLost,
    ResourceReleased,
    RetryScheduled,
)
from dockyard.runtime.hardening import container_name, network_name
from tests.support.cut_proxy import cut_proxy
from tests.support.janitor import labelled_with, running_janitor
from tests.support.orchestration import (
    ControlPlane,
    OrchestratorProcess,
    assert_seqs_contiguous,
    new_orchestrator_id,
    running_orchestrator,
    spec,
    wait_for_heartbeat,
)


@pytest_asyncio.fixture(loop_scope="session")
async def control(nats_url: str, database_url: str) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(nats_url, database_url) as plane:
        yield plane


async def wait_silent(js: JetStreamContext, orchestrator: str, timeout_s: float = 30.0) -> None:
    """Until the orchestrator's heartbeat key has expired: it has been silent for a lease."""
    kv = await js.key_value(names.HEARTBEATS_BUCKET)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await kv.get(names.heartbeat_key(orchestrator))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return
        assert time.monotonic() < deadline, f"{orchestrator} still beats"
        await asyncio.sleep(0.2)


def settled(job: Job) -> bool:
    return job.finished and not job.resources


def of_type(events: list[Event], kind: type[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


async def test_orchestrator_sigkilled_mid_job_is_requeued_once_and_finishes_on_attempt_2(
    control: ControlPlane,
    docker: aiodocker.Docker,
    nats_url: str,
    database_url: str,
    busybox_image: str,
) -> None:
    dead_id = new_orchestrator_id()
    process = OrchestratorProcess(nats_url, dead_id)
    job_spec = spec(
        busybox_image,
        "sh",
        "-c",
        "echo start; sleep 3; echo done",
        retry={"max_attempts": 2, "backoff_s": 0},
    )
    try:
        await process.start()
        await wait_for_heartbeat(control.js, dead_id)
        job_id = await control.submit(job_spec)
        await control.wait_running(job_id)
        await process.kill()  # SIGKILL: no drain, no report, its container runs on
    finally:
        await process.kill()
    assert await labelled_with(docker, dead_id) == [container_name(job_id, 1)]
    await wait_silent(control.js, dead_id)

    async with running_janitor(nats_url, database_url, docker, dead_id) as janitor:
        verdict = await janitor.turn(30)
        assert [(a.action, a.outcome) for a in verdict.actions] == [("mark_lost", "done")]
        async with running_orchestrator(nats_url):
            job = await control.wait_finished(job_id, 60)
            # Attempt 2's own release reports land first; else, with no grace in this test,
            # the janitor would settle attempt 2's entries too (harmless, but not this test).
            await control.wait_for(
                job_id,
                lambda j: all(not key.endswith("@2") for key in j.resources),
                what="released attempt 2's resources",
            )
        cleanup = await janitor.turn(30)  # the dead one's container, stale now
        again = await janitor.turn(30)
    assert verdict.ok and cleanup.ok and again.ok
    assert [(a.action, a.outcome) for a in cleanup.actions] == [("remove_resource", "done")]
    assert again.actions == []

    assert (job.status, job.attempt, job.exit_code) == ("succeeded", 2, 0)
    events = await control.events(job_id)
    [lost] = of_type(events, OrchestratorLost)
    [retry] = of_type(events, RetryScheduled)
    assert (lost.orchestrator, lost.attempt, retry.reason) == (dead_id, 1, "orchestrator_lost")
    assert Counter(e.attempt for e in of_type(events, ContainerStarted)) == {1: 1, 2: 1}
    assert [e.attempt for e in of_type(events, JobSucceeded)] == [2]
    # Attempt 1's entry released by the janitor, attempt 2's by the survivor (its report may
    # still be on its way).
    await control.wait_for(job_id, settled, 30, "settled")
    assert await labelled_with(docker, dead_id) == []


async def test_network_left_by_a_killed_orchestrator_is_removed(
    control: ControlPlane,
    docker: aiodocker.Docker,
    nats_url: str,
    database_url: str,
    busybox_image: str,
) -> None:
    dead_id = new_orchestrator_id()
    process = OrchestratorProcess(nats_url, dead_id)
    job_spec = spec(busybox_image, "sleep", "60", network="isolated")
    try:
        await process.start()
        await wait_for_heartbeat(control.js, dead_id)
        job_id = await control.submit(job_spec)
        await control.wait_running(job_id)
        await process.kill()
    finally:
        await process.kill()
    left = [container_name(job_id, 1), network_name(job_id, 1)]
    assert await labelled_with(docker, dead_id) == sorted(left)
    await wait_silent(control.js, dead_id)
    async with running_janitor(nats_url, database_url, docker, dead_id) as janitor:
        verdict = await janitor.turn(30)
        cleanup = await janitor.turn(30)
    assert verdict.ok and cleanup.ok, verdict.lines() + cleanup.lines()
    assert [a.what for a in cleanup.actions] == [
        f"remove container {left[0]} (its job is failed)",
        f"remove network {left[1]} (its job is failed)",
    ]
    assert await labelled_with(docker, dead_id) == []
    job = await control.job(job_id)
    assert (job.status, job.reason) == ("failed", "orchestrator_lost")
    assert settled(job)
    events = await control.events(job_id)
    assert sorted(e.kind for e in of_type(events, ResourceReleased)) == ["container", "network"]
    assert len(of_type(events, JobFailed)) == 1


async def test_a_late_heartbeat_after_the_lost_event_does_not_resurrect_the_old_attempt(
    control: ControlPlane,
    docker: aiodocker.Docker,
    nats_url: str,
    database_url: str,
    busybox_image: str,
) -> None:
    frozen_id = new_orchestrator_id()
    process = OrchestratorProcess(nats_url, frozen_id)
    job_spec = spec(
        busybox_image, "sh", "-c", "sleep 4; echo done", retry={"max_attempts": 2, "backoff_s": 0}
    )
    try:
        await process.start()
        await wait_for_heartbeat(control.js, frozen_id)
        job_id = await control.submit(job_spec)
        await control.wait_running(job_id)
        process.signal(signal.SIGSTOP)  # frozen: no heartbeat, no report, for longer than a lease
        await wait_silent(control.js, frozen_id)
        async with running_janitor(nats_url, database_url, docker, frozen_id) as janitor:
            verdict = await janitor.turn(30)
            assert [a.action for a in verdict.actions] == ["mark_lost"]
            async with running_orchestrator(nats_url):
                await control.wait_for(job_id, lambda j: j.status == "succeeded", 60, "succeeded")
            # It wakes up: its heartbeat is back, its attempt 1 ended meanwhile and reports so.
            process.signal(signal.SIGCONT)
            await wait_for_heartbeat(control.js, frozen_id)
            await control.wait_for(job_id, settled, 60, "settled")
            late = await janitor.turn(30)
        # After its freeze it still stops cleanly. It was once seen to hang here, before
        # bus.close stopped using nats-py's drain (which could wait on dead subscriptions).
        process.signal(signal.SIGTERM)
        assert await process.wait(30) == 0, process.output()[-3000:]
    finally:
        await process.kill()
    assert late.ok and late.actions == [], late.lines()
    job = await control.job(job_id)
    assert (job.status, job.attempt) == ("succeeded", 2)
    events = await control.events(job_id)
    assert len(of_type(events, OrchestratorLost)) == 1
    assert len(of_type(events, RetryScheduled)) == 1
    assert [e.attempt for e in of_type(events, JobSucceeded)] == [2]  # attempt 1's exit refused
    assert Counter(e.attempt for e in of_type(events, ContainerStarted)) == {1: 1, 2: 1}
    assert await labelled_with(docker, frozen_id) == []
    # The frozen attempt's late "done" (numbered from 1 as well) may reach the LOGS stream
    # (batch ids are under each sender's own nonce, so JetStream no longer drops it as a
    # duplicate of attempt 2's first batch), but not the job's log: the relay stores a seq
    # once, and attempt 2's was stored first. Fencing batches by attempt is noted as work left.
    lines = await control.stored_log_lines(job_id)
    assert_seqs_contiguous(lines)
    assert [(line.attempt, line.text) for line in lines] == [(2, "attempt 2 of 2"), (2, "done")]


async def test_an_orchestrator_cut_off_past_its_lease_is_replaced_and_rejoins_harmlessly(
    control: ControlPlane,
    docker: aiodocker.Docker,
    nats_url: str,
    database_url: str,
    busybox_image: str,
) -> None:
    """A partition, not a crash: the orchestrator lives on, its container too, with NATS out
    of reach (through a proxy the test cuts) for longer than a lease."""
    cut_id = new_orchestrator_id()
    job_spec = spec(
        busybox_image,
        "sh",
        "-c",
        "for i in $(seq 1 80); do echo line $i; sleep 0.1; done",
        retry={"max_attempts": 2, "backoff_s": 0},
    )
    async with cut_proxy(nats_url) as proxy:
        process = OrchestratorProcess(proxy.url, cut_id)
        try:
            await process.start()
            await wait_for_heartbeat(control.js, cut_id)
            job_id = await control.submit(job_spec)
            await control.wait_running(job_id)
            await asyncio.sleep(1.0)  # some lines out
            proxy.cut()
            await wait_silent(control.js, cut_id)
            async with running_janitor(nats_url, database_url, docker, cut_id) as janitor:
                verdict = await janitor.turn(30)
                async with running_orchestrator(nats_url):
                    await control.wait_for(job_id, lambda j: j.status == "succeeded", 60, "ok")
                    proxy.restore()  # it comes back: its attempt 1 is over, and it is told so
                    await wait_for_heartbeat(control.js, cut_id, 60)
                    await control.wait_for(job_id, settled, 60, "settled")
                late = await janitor.turn(30)
            process.signal(signal.SIGTERM)
            assert await process.wait(30) == 0, process.output()[-3000:]
        finally:
            await process.kill()
    assert [a.action for a in verdict.actions] == ["mark_lost"]
    assert late.ok and late.actions == [], late.lines()
    events = await control.events(job_id)
    assert len(of_type(events, OrchestratorLost)) == 1
    assert Counter(e.attempt for e in of_type(events, ContainerStarted)) == {1: 1, 2: 1}
    assert [e.attempt for e in of_type(events, JobSucceeded)] == [2]
    assert await labelled_with(docker, cut_id) == []
    lines = await control.log_lines(job_id)
    assert_seqs_contiguous(lines)
    # Attempt 1's lines from before the cut, then attempt 2's. What attempt 1 printed while
    # cut off was numbered from where attempt 2 starts: its orchestrator, back, saw attempt 2
    # claimed and dropped those lines instead of sending them.
    assert "orchestrator.log_superseded" in process.output()
    attempts = [line.attempt for line in lines]
    assert attempts == sorted(attempts) and attempts[-1] == 2
    texts = [line.text for line in lines if line.attempt == 2]
    assert texts == ["attempt 2 of 2", *(f"line {i}" for i in range(1, 81))]
