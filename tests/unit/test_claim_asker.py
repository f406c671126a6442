"""The claim request asks again when its answer is late (found on the cluster, #21): a
scheduler slowed by a NATS election grants after the first wait ended; handing the offer back
then would give it to another orchestrator, which the scheduler refuses, and nobody would run
the job. The same orchestrator asking again gets its standing claim."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nats.errors
import pytest

from dockyard.bus import protocol
from dockyard.core.spec import JobSpec
from dockyard.orchestrator.claimer import CLAIM_ASKS, claim_asker

pytestmark = pytest.mark.unit

REQUEST = protocol.ClaimRequest(job_id="01a2-job", attempt=1, orchestrator="orch-a")
GRANTED = protocol.ClaimAnswer(granted=True, spec=JobSpec(image="busybox"))


@dataclass
class Reply:
    data: bytes
    headers: dict[str, str] | None = None


@dataclass
class LateScheduler:
    """A NATS client whose first `late` requests time out; then the scheduler answers."""

    late: int
    asked: list[str] = field(default_factory=list)

    async def request(self, subject: str, payload: bytes, timeout: float) -> Reply:  # noqa: ASYNC109 - nats-py's signature
        self.asked.append(subject)
        if len(self.asked) <= self.late:
            raise nats.errors.TimeoutError
        return Reply(protocol.encode(GRANTED))


async def test_a_late_answer_is_asked_for_again_and_the_claim_runs() -> None:
    nc: Any = LateScheduler(late=CLAIM_ASKS - 1)
    answer = await claim_asker(nc, timeout_s=0.01)(REQUEST)
    assert answer is not None and answer.granted
    assert len(nc.asked) == CLAIM_ASKS
    assert len(set(nc.asked)) == 1  # the same claim, on its own subject


async def test_no_answer_after_every_ask_is_unanswered() -> None:
    nc: Any = LateScheduler(late=CLAIM_ASKS)
    assert await claim_asker(nc, timeout_s=0.01)(REQUEST) is None
    assert len(nc.asked) == CLAIM_ASKS


async def test_no_scheduler_at_all_is_not_asked_again() -> None:
    class NoResponders:
        asked = 0

        async def request(self, subject: str, payload: bytes, timeout: float) -> Reply:  # noqa: ASYNC109 - nats-py's signature
            NoResponders.asked += 1
            raise nats.errors.NoRespondersError

    assert await claim_asker(NoResponders(), timeout_s=0.01)(REQUEST) is None  # type: ignore[arg-type]
    assert NoResponders.asked == 1  # nobody listens: waiting longer would change nothing
