"""A failing job's retries, timed on the real stack (NATS, PostgreSQL, Docker): each attempt
waits its backoff (`backoff_s * backoff_factor^(attempt-1)`, capped at `max_backoff_s`)
after the one before it failed, and not much longer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiodocker
import pytest_asyncio

from dockyard.core.events import ContainerStarted, RetryScheduled
from dockyard.core.retry import backoff_s
from dockyard.core.spec import RetryPolicy
from tests.support.orchestration import (
    ControlPlane,
    assert_nothing_left,
    assert_one_start_per_attempt,
    new_orchestrator_id,
    running_orchestrator,
    spec,
)

# What the wait may add to the backoff: the due ticker (50 ms here), the outbox, the offer,
# the claim and a container start, on a loaded 2-core machine.
SLACK_S = 3.0


@pytest_asyncio.fixture(loop_scope="session")
async def control(nats_url: str, database_url: str) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(nats_url, database_url) as plane:
        yield plane


async def test_retries_of_a_failing_job_wait_their_backoff_schedule(
    control: ControlPlane, docker: aiodocker.Docker, nats_url: str, busybox_image: str
) -> None:
    policy = {"max_attempts": 4, "backoff_s": 0.5, "backoff_factor": 3, "max_backoff_s": 2}
    orchestrator_id = new_orchestrator_id()
    async with running_orchestrator(nats_url, orchestrator_id):
        job_id = await control.submit(spec(busybox_image, "sh", "-c", "exit 7", retry=policy))
        job = await control.wait_for(job_id, lambda j: j.finished, 60, "finished")
    await assert_nothing_left(docker, orchestrator_id)
    events = await control.events(job_id)
    assert_one_start_per_attempt(events)

    assert (job.status, job.attempt, job.exit_code) == ("failed", 4, 7)
    expected = [backoff_s(RetryPolicy(**policy), n) for n in (1, 2, 3)]  # type: ignore[arg-type]
    assert expected == [0.5, 1.5, 2.0]  # the third is capped
    retries = [e for e in events if isinstance(e, RetryScheduled)]
    assert [r.backoff_s for r in retries] == expected
    failed = {r.attempt: r.at for r in retries}  # recorded with the attempt's exit
    starts = {e.attempt: e.at for e in events if isinstance(e, ContainerStarted)}
    for attempt, wait in zip((2, 3, 4), expected, strict=True):
        # From the recorded failure to the next container's start.
        waited = (starts[attempt] - failed[attempt - 1]).total_seconds()
        assert wait <= waited <= wait + SLACK_S, (attempt, wait, waited)
