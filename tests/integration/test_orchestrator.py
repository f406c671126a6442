"""The orchestrator against real NATS, PostgreSQL and Docker: how jobs end, and cleanup.

Every test checks the same three things at its end: nothing labelled with its orchestrator id
is left in the engine, each attempt's container started once, and no task of the orchestrator
outlived it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import nats.js.errors
import pytest
import pytest_asyncio

from dockyard.bus import names
from dockyard.bus.names import LABEL_ATTEMPT, LABEL_DEPLOYMENT, LABEL_JOB, LABEL_ORCHESTRATOR
from dockyard.bus.protocol import StopOrder, decode_heartbeat, encode
from dockyard.core import Job
from dockyard.core.events import ContainerStarted, Event, JobTimedOut, ResourceIntended
from dockyard.core.registries import RegistryPolicy
from dockyard.runtime.hardening import container_name
from tests.support.orchestration import (
    ControlPlane,
    assert_nothing_left,
    assert_one_start_per_attempt,
    assert_seqs_contiguous,
    new_orchestrator_id,
    running_orchestrator,
    spec,
)


@pytest_asyncio.fixture(loop_scope="session")
async def control(nats_url: str, database_url: str) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(nats_url, database_url) as plane:
        yield plane


def settled(job: Job) -> bool:
    """Finished, and every resource in its ledger released."""
    return job.finished and not job.resources


async def run_one(
    control: ControlPlane,
    docker: aiodocker.Docker,
    nats_url: str,
    job_spec: object,
    *,
    timeout_s: float = 30.0,
    **overrides: object,
) -> tuple[str, Job]:
    """Submit one job to a fresh orchestrator, wait until it is settled, check the cleanup."""
    orchestrator_id = new_orchestrator_id()
    async with running_orchestrator(nats_url, orchestrator_id, **overrides):
        job_id = await control.submit(job_spec)  # type: ignore[arg-type]
        job = await control.wait_for(job_id, settled, timeout_s, "settled")
    await assert_nothing_left(docker, orchestrator_id)
    assert_one_start_per_attempt(await control.events(job_id))
    return job_id, job


async def test_success_with_mixed_stdout_and_stderr(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    script = (
        "echo out1; echo err1 >&2; echo out2; printf 'err2' >&2; "
        "head -c 70000 /dev/zero | tr '\\0' x; echo"  # a line over 64 KiB is split
    )
    job_id, job = await run_one(control, docker, nats_url, spec(busybox_image, "sh", "-c", script))
    assert (job.status, job.exit_code, job.reason) == ("succeeded", 0, None)
    lines = await control.log_lines(job_id)
    assert_seqs_contiguous(lines)
    long = ["x" * 65536, "x" * (70000 - 65536)]
    assert [line.text for line in lines if line.stream == "stdout"] == ["out1", "out2", *long]
    assert [line.text for line in lines if line.stream == "stderr"] == ["err1", "err2"]
    assert all(line.attempt == 1 for line in lines)


async def test_non_zero_exit_fails_with_its_code(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    job_spec = spec(busybox_image, "sh", "-c", "echo bye; exit 3")
    job_id, job = await run_one(control, docker, nats_url, job_spec)
    assert (job.status, job.exit_code, job.reason) == ("failed", 3, "exit_code")
    assert job.error == "the command exited with code 3"
    assert [line.text for line in await control.log_lines(job_id)] == ["bye"]


async def test_a_failing_exit_is_retried_once_then_fails_on_the_last_attempt(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    job_spec = spec(
        busybox_image, "sh", "-c", "echo try; exit 3", retry={"max_attempts": 2, "backoff_s": 0}
    )
    job_id, job = await run_one(control, docker, nats_url, job_spec)
    assert (job.status, job.exit_code, job.reason, job.attempt) == ("failed", 3, "exit_code", 2)
    lines = await control.log_lines(job_id)
    assert_seqs_contiguous(lines)
    assert [(line.attempt, line.stream, line.text) for line in lines] == [
        (1, "stdout", "try"),
        (2, "system", "attempt 2 of 2"),
        (2, "stdout", "try"),
    ]


async def test_oom_is_reported_as_oom_killed(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    # The shell itself holds 100 MB in a variable, over a 16 MiB limit (swap = memory).
    script = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"
    job_spec = spec(busybox_image, "sh", "-c", script, resources={"memory_mb": 16})
    _, job = await run_one(control, docker, nats_url, job_spec)
    assert (job.status, job.reason) == ("failed", "oom_killed")
    assert job.exit_code == 137
    assert job.error is not None and "16 MiB" in job.error


async def test_fork_bomb_is_held_under_the_pid_limit(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 30"
    job_spec = spec(busybox_image, "sh", "-c", bomb, resources={"pids": 32}, timeout_s=3)
    async with running_orchestrator(nats_url, orchestrator_id):
        job_id = await control.submit(job_spec)
        running = await control.wait_running(job_id)
        cgroup = Path(f"/sys/fs/cgroup/pids/docker/{running.container_id}")
        peak = 0
        while (cgroup / "pids.current").exists():
            try:
                peak = max(peak, int((cgroup / "pids.current").read_text()))
                limit = (cgroup / "pids.max").read_text().strip()
                refused = (cgroup / "pids.events").read_text()
            except OSError:
                break  # the container is gone
            await asyncio.sleep(0.1)
        job = await control.wait_for(job_id, settled, 30, "settled")
    assert limit == "32"
    assert 0 < peak <= 32
    assert refused.startswith("max ") and int(refused.split()[1]) > 0  # forks were refused
    assert (job.status, job.reason) == ("timed_out", "timed_out")
    await assert_nothing_left(docker, orchestrator_id)
    assert_one_start_per_attempt(await control.events(job_id))


async def test_log_flood_past_the_cap_keeps_the_job_and_the_tail(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    cap = 64 * 1024
    # 5000 numbered lines of ~100 bytes: ~500 KB, far past the 64 KiB cap.
    script = "seq 1 5000 | while read i; do printf '%s %096d\\n' $i 0; done; echo last-line"
    job_spec = spec(busybox_image, "sh", "-c", script)
    job_id, job = await run_one(
        control, docker, nats_url, job_spec, timeout_s=60, log_cap_bytes=cap
    )
    assert (job.status, job.exit_code) == ("succeeded", 0)  # the job is not stopped
    lines = await control.log_lines(job_id)
    assert_seqs_contiguous(lines)
    system = [line for line in lines if line.stream == "system"]
    assert len(system) == 2
    assert system[0].text.startswith("log limit of 65536 bytes reached")
    assert "lines omitted past the log limit" in system[1].text
    omitted = int(system[1].text.split()[0])
    head = lines[: lines.index(system[0])]
    tail = lines[lines.index(system[1]) + 1 :]
    assert sum(len(line.text) + 1 for line in head) <= cap
    assert len(head) + omitted + len(tail) == 5001  # every line counted once
    assert tail[-1].text == "last-line"
    assert [int(line.text.split()[0]) for line in tail[:-1]] == list(
        range(5000 - len(tail) + 2, 5001)
    )


async def test_missing_image_fails_without_retry(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str
) -> None:
    job_spec = spec(
        "dockyard/no-such-image:never",
        "true",
        pull="never",
        retry={"max_attempts": 3, "backoff_s": 0},
    )
    job_id, job = await run_one(control, docker, nats_url, job_spec)
    assert (job.status, job.reason, job.attempt) == ("failed", "image_pull_failed", 1)
    assert job.error is not None and "dockyard/no-such-image:never" in job.error
    texts = [line.text for line in await control.log_lines(job_id)]
    assert texts and texts[-1].startswith("image pull failed:")


async def test_pull_from_an_unreachable_registry_says_unreachable(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str
) -> None:
    job_spec = spec("127.0.0.1:9/nothing/here:1", "true")
    listed = RegistryPolicy(("127.0.0.1:9",))  # a closed loopback port, listed to be tried
    _, job = await run_one(control, docker, nats_url, job_spec, registries=listed)
    assert (job.status, job.reason) == ("failed", "image_pull_failed")
    assert job.error == "image could not be pulled from 127.0.0.1:9: unreachable"


async def test_a_job_stored_with_a_loopback_registry_fails_before_the_engine_is_asked(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str
) -> None:
    # Stored past the API's check (as by an earlier version): the orchestrator checks again.
    job_spec = spec("127.0.0.1:9/nothing/here:1", "true", retry={"max_attempts": 3})
    job_id, job = await run_one(control, docker, nats_url, job_spec)
    assert (job.status, job.reason, job.attempt) == ("failed", "image_pull_failed", 1)
    assert job.error is not None
    assert job.error.startswith("image could not be pulled from 127.0.0.1:9: not allowed")
    texts = [line.text for line in await control.log_lines(job_id)]
    assert texts[-1] == f"image pull failed: {job.error}"


async def test_timeout_sends_sigterm_then_sigkill_after_the_grace(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    polite = spec(
        busybox_image,
        "sh",
        "-c",
        "trap 'echo got TERM; exit 0' TERM; echo started; sleep 30 & wait",
        timeout_s=1,
    )
    stubborn = spec(busybox_image, "sh", "-c", "trap '' TERM; sleep 30", timeout_s=1)
    async with running_orchestrator(nats_url, orchestrator_id, stop_grace_s=2.0):
        polite_id = await control.submit(polite)
        stubborn_id = await control.submit(stubborn)
        polite_job = await control.wait_for(polite_id, settled, 30, "settled")
        stubborn_job = await control.wait_for(stubborn_id, settled, 30, "settled")
    for job_id, job in ((polite_id, polite_job), (stubborn_id, stubborn_job)):
        assert (job.status, job.reason) == ("timed_out", "timed_out")
        assert job.error is not None and job.error.startswith("timed out after 1 s")
        assert_one_start_per_attempt(await control.events(job_id))
    assert polite_job.exit_code == 0
    assert stubborn_job.exit_code == 137  # SIGKILL
    polite_events = await control.events(polite_id)
    stubborn_events = await control.events(stubborn_id)
    polite_duration = _timed_out(polite_events).duration_s
    stubborn_duration = _timed_out(stubborn_events).duration_s
    assert 1.0 <= polite_duration < 2.0  # SIGTERM at 1 s ended it
    assert 3.0 <= stubborn_duration < 4.5  # 1 s, then 2 s of grace, then SIGKILL
    texts = [line.text for line in await control.log_lines(polite_id)]
    assert texts[0] == "started"
    assert texts[1].startswith("timed out after 1 s: stopping the container (SIGTERM")
    assert texts[2] == "got TERM"
    await assert_nothing_left(docker, orchestrator_id)


def _timed_out(events: list[Event]) -> JobTimedOut:
    found = [e for e in events if isinstance(e, JobTimedOut)]
    assert len(found) == 1
    return found[0]


async def test_cancel_while_running_stops_it_and_reports_cancelled(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    job_spec = spec(busybox_image, "sh", "-c", "echo waiting; sleep 30")
    async with running_orchestrator(nats_url, orchestrator_id):
        job_id = await control.submit(job_spec)
        await control.wait_running(job_id)
        container = await docker.containers.get(container_name(job_id, 1))
        labels = container["Config"]["Labels"]
        await control.cancel(job_id)
        job = await control.wait_for(job_id, settled, 20, "settled")
    # The contract's labels, and the installation's id (the janitor judges only its own).
    assert labels[LABEL_JOB] == job_id and labels[LABEL_ATTEMPT] == "1"
    assert labels[LABEL_ORCHESTRATOR] == orchestrator_id
    assert labels[LABEL_DEPLOYMENT] == await control.deployment()
    assert (job.status, job.reason) == ("cancelled", "cancelled")
    assert job.error == "cancelled by test"
    assert job.exit_code == 143  # SIGTERM, forwarded by the container's init
    texts = [line.text for line in await control.log_lines(job_id)]
    assert texts == [
        "waiting",
        "cancelled by test: stopping the container (SIGTERM, SIGKILL after 1 s)",
    ]
    await assert_nothing_left(docker, orchestrator_id)
    assert_one_start_per_attempt(await control.events(job_id))


async def test_sidecar_is_reachable_by_name_and_no_network_without_one(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    client = "for i in $(seq 1 30); do if nc -w 1 db 8080; then exit 0; fi; sleep 0.2; done; exit 1"
    with_sidecar = spec(
        busybox_image,
        "sh",
        "-c",
        client,
        sidecars=[
            {
                "name": "db",
                "image": busybox_image,
                "command": ["nc", "-ll", "-p", "8080", "-e", "echo", "hello-from-db"],
            }
        ],
    )
    alone = spec(busybox_image, "sh", "-c", "cut -d: -f1 /proc/net/dev | tail -n +3")
    async with running_orchestrator(nats_url, orchestrator_id):
        sidecar_job = await control.submit(with_sidecar)
        alone_job = await control.submit(alone)
        done = await control.wait_for(sidecar_job, settled, 30, "settled")
        alone_done = await control.wait_for(alone_job, settled, 30, "settled")
    assert (done.status, done.exit_code) == ("succeeded", 0)
    assert [line.text for line in await control.log_lines(sidecar_job)] == ["hello-from-db"]
    assert (alone_done.status, alone_done.exit_code) == ("succeeded", 0)
    interfaces = [line.text.strip() for line in await control.log_lines(alone_job)]
    assert interfaces == ["lo"]  # network "none": loopback only
    kinds = sorted(
        (e.kind, e.name.removeprefix(f"dockyard-{sidecar_job}-1"))
        for e in await control.events(sidecar_job)
        if isinstance(e, ResourceIntended)
    )
    assert kinds == [("container", ""), ("network", "-net"), ("sidecar", "-db")]
    await assert_nothing_left(docker, orchestrator_id)
    assert_one_start_per_attempt(await control.events(sidecar_job))


async def test_a_sidecar_gets_its_secret_and_the_jobs_log_masks_it(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    client = (
        'for i in $(seq 1 30); do v=$(nc -w 1 db 8080) && [ -n "$v" ] && break; sleep 0.2; done; '
        '[ "$v" = pg-s3cret ] || exit 3; echo "the password is $v"'
    )
    sidecar = {
        "name": "db",
        "image": busybox_image,
        "command": ["nc", "-ll", "-p", "8080", "-e", "sh", "-c", 'echo "$PW"'],
        "env": {"PW": "pg-s3cret"},
        "secrets": ["PW"],
    }
    job_id, job = await run_one(
        control, docker, nats_url, spec(busybox_image, "sh", "-c", client, sidecars=[sidecar])
    )
    assert (job.status, job.exit_code) == ("succeeded", 0)  # the sidecar had the real value
    assert [line.text for line in await control.log_lines(job_id)] == ["the password is ***"]


async def test_a_sidecar_whose_image_is_missing_fails_the_job_and_leaves_nothing(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    job_spec = spec(
        busybox_image,
        "true",
        pull="never",
        sidecars=[{"name": "db", "image": "dockyard/no-such-sidecar:never"}],
        retry={"max_attempts": 2, "backoff_s": 0},  # never retried: the image will not come
    )
    job_id, job = await run_one(control, docker, nats_url, job_spec)
    assert (job.status, job.reason, job.attempt) == ("failed", "image_pull_failed", 1)
    assert job.error is not None and "dockyard/no-such-sidecar:never" in job.error
    # Images come before anything is made: nothing started (and, run_one checks, nothing left).
    assert not any(isinstance(e, ContainerStarted) for e in await control.events(job_id))


async def test_a_timeout_with_a_sidecar_stops_both_and_removes_the_network(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    job_spec = spec(
        busybox_image,
        "sh",
        "-c",
        "echo up; sleep 30",
        timeout_s=1,
        sidecars=[{"name": "db", "image": busybox_image, "command": ["sleep", "60"]}],
    )
    job_id, job = await run_one(control, docker, nats_url, job_spec, stop_grace_s=1.0)
    assert (job.status, job.reason) == ("timed_out", "timed_out")
    texts = [line.text for line in await control.log_lines(job_id)]
    assert texts[0] == "up"
    kinds = sorted(e.kind for e in await control.events(job_id) if isinstance(e, ResourceIntended))
    assert kinds == ["container", "network", "sidecar"]  # all made, and (run_one) all gone


async def test_heartbeat_lists_running_jobs_and_is_withdrawn_at_exit(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    kv = await control.js.key_value(names.HEARTBEATS_BUCKET)
    key = names.heartbeat_key(orchestrator_id)
    async with running_orchestrator(nats_url, orchestrator_id, lease_s=1.5):
        job_id = await control.submit(spec(busybox_image, "sh", "-c", "echo one; sleep 30"))
        await control.wait_running(job_id)
        await asyncio.sleep(0.8)  # a beat every lease/3 = 0.5 s
        beat = decode_heartbeat((await kv.get(key)).value or b"")
        assert (beat.orchestrator, beat.lease_s, beat.draining) == (orchestrator_id, 1.5, False)
        assert [(j.job_id, j.attempt, j.log_seq) for j in beat.jobs] == [(job_id, 1, 1)]
        await control.cancel(job_id)
        await control.wait_for(job_id, settled, 20, "settled")
    with pytest.raises(nats.js.errors.KeyNotFoundError):  # KeyDeletedError is one
        await kv.get(key)
    await assert_nothing_left(docker, orchestrator_id)


async def test_stop_order_for_its_attempt_stops_the_container(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    orchestrator_id = new_orchestrator_id()
    async with running_orchestrator(nats_url, orchestrator_id):
        job_id = await control.submit(spec(busybox_image, "sleep", "30"))
        await control.wait_running(job_id)
        for attempt in (2, 1):  # another attempt's order is not this one's
            order = StopOrder(job_id=job_id, attempt=attempt, reason="attempt is stale")
            await control.nc.publish(names.control_subject(orchestrator_id), encode(order))
        job = await control.wait_for(job_id, settled, 20, "settled")
    assert (job.status, job.reason, job.exit_code) == ("failed", "orchestrator_lost", 143)
    assert job.error == "stopped by the scheduler: attempt is stale"
    await assert_nothing_left(docker, orchestrator_id)
    assert_one_start_per_attempt(await control.events(job_id))
