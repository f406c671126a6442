"""The orchestrator under faults: races, redeliveries, NATS restarts, its own death.

Each test injects its fault and checks that nothing was lost (every job ends, every log line
is there once), nothing ran twice (one container start per attempt), and nothing was left
behind (no labelled container or network, no task).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator

import aiodocker
import pytest
import pytest_asyncio
from nats.js.api import ConsumerConfig

from dockyard.bus import names
from dockyard.bus.messages import WorkOffer, encode_work_offer
from dockyard.core import Job
from dockyard.core.events import ContainerStarted, JobClaimed, RetryScheduled
from dockyard.embedded import EmbeddedNats, EmbeddedPostgres
from dockyard.runtime.hardening import container_name
from tests.support.orchestration import (
    ControlPlane,
    OrchestratorProcess,
    assert_nothing_left,
    assert_one_start_per_attempt,
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


def settled(job: Job) -> bool:
    return job.finished and not job.resources


async def offer_again(control: ControlPlane, job_id: str, attempt: int, tag: str) -> None:
    """The same offer once more, as JetStream would redeliver it (a new Msg-Id gets it past
    the duplicate window, as a republish after the window would)."""
    offer = WorkOffer(job_id=job_id, attempt=attempt, queue="default", event_id=tag)
    await control.js.publish(
        names.offer_subject("default"),
        encode_work_offer(offer),
        headers={names.MSG_ID: f"{tag}:{job_id}:{attempt}"},
    )


async def work_left(control: ControlPlane) -> int:
    """Offers the queue's consumer has not had acked: not yet delivered, or delivered and
    pending."""
    info = await control.js.consumer_info(names.OFFERS_STREAM, names.offer_durable("default"))
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


async def until_offers_taken(control: ControlPlane, timeout_s: float = 10.0) -> None:
    """While the orchestrators still run: a losing copy of an offer may be pulled only after
    its job settled (or nak'ed for a later try), and a stop would nak it back to the queue."""
    for _ in range(int(timeout_s / 0.1)):
        if await work_left(control) == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{await work_left(control)} offers still queued after {timeout_s} s")


async def test_two_orchestrators_racing_for_the_same_offers_run_each_once(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    first, second = new_orchestrator_id(), new_orchestrator_id()
    async with (
        running_orchestrator(nats_url, first) as a,
        running_orchestrator(nats_url, second) as b,
    ):
        jobs = []
        for _ in range(8):
            job_id = await control.submit(spec(busybox_image, "echo", "hi"))
            await offer_again(control, job_id, 1, "race")  # both may pull one at once
            jobs.append(job_id)
        for job_id in jobs:
            job = await control.wait_for(job_id, settled, 60, "settled")
            assert (job.status, job.exit_code) == ("succeeded", 0)
        await until_offers_taken(control)
    for job_id in jobs:
        events = await control.events(job_id)
        assert sum(isinstance(e, JobClaimed) for e in events) == 1
        assert sum(isinstance(e, ContainerStarted) for e in events) == 1
        assert [line.text for line in await control.log_lines(job_id)] == ["hi"]
    assert a.finished + b.finished == len(jobs)
    assert await work_left(control) == 0  # the losing offers were acked, not left to redeliver
    await assert_nothing_left(docker, first)
    await assert_nothing_left(docker, second)


async def test_redelivery_of_an_already_claimed_job_never_starts_it_again(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    owner, other = new_orchestrator_id(), new_orchestrator_id()
    async with running_orchestrator(nats_url, owner) as orchestrator:
        job_id = await control.submit(spec(busybox_image, "sh", "-c", "sleep 1; echo once"))
        await control.wait_running(job_id)
        await offer_again(control, job_id, 1, "while-running")  # to its own orchestrator
        await asyncio.sleep(0.3)
        async with running_orchestrator(nats_url, other) as late:
            await offer_again(control, job_id, 1, "to-another")  # refused: claimed by `owner`
            job = await control.wait_for(job_id, settled, 30, "settled")
            await offer_again(control, job_id, 1, "after-the-end")  # refused: over
            await until_offers_taken(control)
        assert late.finished == 0
    assert (job.status, job.exit_code) == ("succeeded", 0)
    assert orchestrator.finished == 1
    events = await control.events(job_id)
    assert sum(isinstance(e, JobClaimed) for e in events) == 1
    assert_one_start_per_attempt(events)
    assert [line.text for line in await control.log_lines(job_id)] == ["once"]
    assert await work_left(control) == 0
    await assert_nothing_left(docker, owner)
    await assert_nothing_left(docker, other)


async def test_long_job_keeps_its_offer_alive_with_in_progress_acks(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    async with running_orchestrator(nats_url, orchestrator_id, keepalive_s=0.3):
        # A 1 s ack wait instead of 30 s: without in-progress acks the offer of this 3 s job
        # would be redelivered (twice).
        durable = names.offer_durable("default")
        current = (await control.js.consumer_info(names.OFFERS_STREAM, durable)).config
        await control.js.add_consumer(
            names.OFFERS_STREAM,
            ConsumerConfig(**{**current.as_dict(), "ack_wait": 1.0, "backoff": [1.0, 2.0]}),
        )
        job_id = await control.submit(spec(busybox_image, "sh", "-c", "sleep 3; echo ok"))
        job = await control.wait_for(job_id, settled, 30, "settled")
        info = await control.js.consumer_info(names.OFFERS_STREAM, durable)
    assert (job.status, job.exit_code) == ("succeeded", 0)
    assert info.num_redelivered == 0
    assert_one_start_per_attempt(await control.events(job_id))
    await assert_nothing_left(docker, orchestrator_id)


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_nats_restarted_mid_job_loses_and_repeats_no_line(
    control: ControlPlane,
    docker: aiodocker.Docker,
    nats_url: str,
    nats_server: EmbeddedNats,
    busybox_image: str,
    how: str,
) -> None:
    """`stop` lets NATS flush and say goodbye; `kill` is SIGKILL, with publishes in flight."""
    orchestrator_id = new_orchestrator_id()
    script = "for i in $(seq 1 100); do echo line $i; sleep 0.01; done; echo end >&2"
    async with running_orchestrator(nats_url, orchestrator_id) as orchestrator:
        job_id = await control.submit(spec(busybox_image, "sh", "-c", script))
        running = await control.wait_running(job_id)
        await asyncio.sleep(0.2)  # some lines are published, the rest is still to come
        await (nats_server.stop() if how == "stop" else nats_server.kill())
        # The container runs on, and ends, while NATS is away: its output and its exit wait.
        container = await docker.containers.get(running.container_id or "")
        for _ in range(100):
            if (await container.show())["State"]["Status"] == "exited":
                break
            await asyncio.sleep(0.05)
        assert (await container.show())["State"]["Status"] == "exited"
        await nats_server.start()
        job = await control.wait_for(job_id, settled, 60, "settled")
        # The work consumer resumed from its durable position: a new job runs too.
        after = await control.submit(spec(busybox_image, "echo", "after"))
        after_job = await control.wait_for(after, settled, 30, "settled")
        assert orchestrator.finished == 2
    assert (job.status, job.exit_code) == ("succeeded", 0)
    assert (after_job.status, after_job.exit_code) == ("succeeded", 0)
    lines = await control.log_lines(job_id)
    assert_seqs_contiguous(lines)
    assert [line.text for line in lines if line.stream == "stdout"] == [
        f"line {i}" for i in range(1, 101)
    ]
    assert [line.text for line in lines if line.stream == "stderr"] == ["end"]
    for one in (job_id, after):
        assert_one_start_per_attempt(await control.events(one))
    await assert_nothing_left(docker, orchestrator_id)


async def until_removed(docker: aiodocker.Docker, container_id: str, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                await docker.containers.get(container_id)
            except aiodocker.DockerError:
                return
            await asyncio.sleep(0.05)


async def test_postgresql_stopped_mid_job_loses_and_repeats_nothing(
    control: ControlPlane,
    docker: aiodocker.Docker,
    nats_url: str,
    pg_server: EmbeddedPostgres,
    busybox_image: str,
) -> None:
    """The orchestrator needs no database: its reports wait in JetStream while PostgreSQL is
    away, and the scheduler side appends each once when it is back."""
    orchestrator_id = new_orchestrator_id()
    script = "for i in $(seq 1 50); do echo line $i; sleep 0.06; done"
    async with running_orchestrator(nats_url, orchestrator_id) as orchestrator:
        job_id = await control.submit(spec(busybox_image, "sh", "-c", script))
        running = await control.wait_running(job_id)
        assert running.container_id
        await pg_server.stop()
        try:  # the job ends, and its exit and removals are reported, while PostgreSQL is away
            container = await docker.containers.get(running.container_id)
            assert (await container.show())["State"]["Running"], "it ended before the fault"
            await until_removed(docker, running.container_id)
        finally:
            await pg_server.start()
        job = await control.wait_for(job_id, settled, 60, "settled")
        after = await control.submit(spec(busybox_image, "echo", "after"))
        after_job = await control.wait_for(after, settled, 30, "settled")
        assert orchestrator.finished == 2
    assert (job.status, job.exit_code, job.attempt) == ("succeeded", 0, 1)
    assert (after_job.status, after_job.exit_code) == ("succeeded", 0)
    lines = await control.log_lines(job_id)
    assert_seqs_contiguous(lines)
    assert [line.text for line in lines] == [f"line {i}" for i in range(1, 51)]
    for one in (job_id, after):
        events = await control.events(one)
        assert_one_start_per_attempt(events)
        assert len({e.event_id for e in events}) == len(events)
    await assert_nothing_left(docker, orchestrator_id)


async def test_orchestrator_sigkill_mid_job_reruns_once_after_restart(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    process = OrchestratorProcess(nats_url, orchestrator_id)
    job_spec = spec(
        busybox_image,
        "sh",
        "-c",
        "echo start; sleep 2; echo done",
        retry={"max_attempts": 2, "backoff_s": 0},
    )
    try:
        await process.start()
        await wait_for_heartbeat(control.js, orchestrator_id)
        job_id = await control.submit(job_spec)
        await control.wait_running(job_id)
        await asyncio.sleep(0.3)  # "start" is published
        await process.kill()  # SIGKILL: no drain, no report
        container = await docker.containers.get(container_name(job_id, 1))
        assert (await container.show())["State"]["Running"]  # left running by the dead one
        await process.start()  # same DOCKYARD_ORCHESTRATOR_ID
        job = await control.wait_for(job_id, settled, 60, "settled")
        process.signal(signal.SIGTERM)
        assert await process.wait(30) == 0
    finally:
        await process.kill()
    output = process.output()
    assert (job.status, job.attempt, job.exit_code) == ("succeeded", 2, 0), output
    events = await control.events(job_id)
    retry = [e for e in events if isinstance(e, RetryScheduled)]
    assert len(retry) == 1 and retry[0].reason == "orchestrator_lost"
    assert Counter(e.attempt for e in events if isinstance(e, ContainerStarted)) == {1: 1, 2: 1}
    lines = await control.log_lines(job_id)
    assert_seqs_contiguous(lines)
    assert [(line.attempt, line.stream, line.text.split(":")[0]) for line in lines] == [
        (1, "stdout", "start"),
        (1, "system", f"orchestrator {orchestrator_id} restarted while running attempt 1"),
        (2, "system", "attempt 2 of 2"),
        (2, "stdout", "start"),
        (2, "stdout", "done"),
    ]
    await assert_nothing_left(docker, orchestrator_id)


async def test_orchestrator_killed_after_the_exit_before_its_last_lines_reruns_the_job(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    """Frozen (SIGSTOP) while the job runs, so that its last line is never read, then killed
    once the container has exited: the restarted process finds a clean exit but no final
    batch. A `succeeded` would hide the lost line; the attempt is lost and runs again."""
    orchestrator_id = new_orchestrator_id()
    process = OrchestratorProcess(nats_url, orchestrator_id)
    job_spec = spec(
        busybox_image,
        "sh",
        "-c",
        "echo start; sleep 1; echo done",
        retry={"max_attempts": 2, "backoff_s": 0},
    )
    try:
        await process.start()
        await wait_for_heartbeat(control.js, orchestrator_id)
        job_id = await control.submit(job_spec)
        await control.wait_running(job_id)
        for _ in range(100):  # "start" is stored
            if await control.log_lines(job_id):
                break
            await asyncio.sleep(0.05)
        process.signal(signal.SIGSTOP)
        container = await docker.containers.get(container_name(job_id, 1))
        assert (await container.wait(timeout=20))["StatusCode"] == 0
        await process.kill()
        await process.start()  # same DOCKYARD_ORCHESTRATOR_ID
        job = await control.wait_for(job_id, settled, 60, "settled")
        process.signal(signal.SIGTERM)
        assert await process.wait(30) == 0
    finally:
        await process.kill()
    output = process.output()
    assert (job.status, job.attempt, job.exit_code) == ("succeeded", 2, 0), output
    events = await control.events(job_id)
    retry = [e for e in events if isinstance(e, RetryScheduled)]
    assert len(retry) == 1 and retry[0].reason == "orchestrator_lost"
    assert Counter(e.attempt for e in events if isinstance(e, ContainerStarted)) == {1: 1, 2: 1}
    lines = await control.log_lines(job_id)
    assert_seqs_contiguous(lines)
    lost = f"orchestrator {orchestrator_id} restarted while running attempt 1: the job had"
    assert [(line.attempt, line.stream, line.text[: len(lost)]) for line in lines] == [
        (1, "stdout", "start"),
        (1, "system", lost),
        (2, "system", "attempt 2 of 2"),
        (2, "stdout", "start"),
        (2, "stdout", "done"),
    ]
    await assert_nothing_left(docker, orchestrator_id)


async def test_sigterm_drains_running_jobs_then_stops_the_rest(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    process = OrchestratorProcess(nats_url, orchestrator_id, DOCKYARD_DRAIN_S="2")
    try:
        await process.start()
        await wait_for_heartbeat(control.js, orchestrator_id)
        short = await control.submit(spec(busybox_image, "sh", "-c", "sleep 1; echo finished"))
        long = await control.submit(spec(busybox_image, "sh", "-c", "echo forever; sleep 60"))
        await control.wait_running(short)
        await control.wait_running(long)
        process.signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        late = await control.submit(spec(busybox_image, "echo", "never here"))
        assert await process.wait(30) == 0
        short_job = await control.wait_for(short, settled, 10, "settled")
        long_job = await control.wait_for(long, settled, 10, "settled")
        await asyncio.sleep(0.5)
        late_job = await control.job(late)
    finally:
        await process.kill()
    assert (short_job.status, short_job.exit_code) == ("succeeded", 0)
    assert (long_job.status, long_job.reason) == ("failed", "orchestrator_lost")
    assert long_job.error is not None and "shut down" in long_job.error
    assert long_job.exit_code == 143
    assert late_job.status == "queued"  # a draining orchestrator claims nothing new
    assert [line.text for line in await control.log_lines(short)] == ["finished"]
    texts = [line.text for line in await control.log_lines(long)]
    assert texts[0] == "forever" and "shut down" in texts[1]
    kv = await control.js.key_value(names.HEARTBEATS_BUCKET)
    assert names.heartbeat_key(orchestrator_id) not in await _keys(kv)
    await assert_nothing_left(docker, orchestrator_id)
    for job_id in (short, long):
        assert_one_start_per_attempt(await control.events(job_id))


async def _keys(kv: object) -> list[str]:
    try:
        return list(await kv.keys())  # type: ignore[attr-defined]
    except Exception:  # no keys at all
        return []
