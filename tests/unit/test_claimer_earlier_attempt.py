"""A claim granted for a job whose earlier attempt still runs here (this host was cut off
while the job was requeued, and got it back): the earlier attempt is stopped and the offer
kept until it is gone, then the new attempt launches. Handing the offer back instead lost the
job on the cluster: the claim is this orchestrator's, so every other one was refused and acked
the offer, and the job stayed `starting` (tests/cluster/test_chaos.py, the cut-off host)."""

from __future__ import annotations

import asyncio

from dockyard.bus import protocol
from dockyard.bus.messages import WorkOffer, encode_work_offer
from dockyard.core.spec import JobSpec
from dockyard.orchestrator.attempt import Claim
from dockyard.orchestrator.claimer import Claimer
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.outcome import StopRequest
from dockyard.orchestrator.registry import Registry
from dockyard.orchestrator.ticket import Ticket

JOB = "0195f0c8-0000-7000-8000-0000000000aa"


class Offer:
    """A delivery of the job's attempt-2 offer; what was done with it."""

    def __init__(self) -> None:
        self.data = encode_work_offer(WorkOffer(job_id=JOB, attempt=2, queue="q", event_id="e"))
        self.headers: dict[str, str] = {}
        self.reply = "reply"
        self.done: list[str] = []

    async def ack(self) -> None:
        self.done.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.done.append("nak")

    async def in_progress(self) -> None:
        self.done.append("in_progress")


class Earlier:
    """Attempt 1 of the job, still here; it leaves the registry a while after it is stopped."""

    job_id, attempt, log_seq = JOB, 1, 5

    def __init__(self, registry: Registry, stops_after_s: float) -> None:
        self.registry = registry
        self.stops_after_s = stops_after_s
        self.stops: list[StopRequest] = []
        self.ticket: Ticket = None  # type: ignore[assignment]

    def request_stop(self, stop: StopRequest) -> None:
        self.stops.append(stop)
        asyncio.get_running_loop().call_later(self.stops_after_s, self.registry.finish, self)


def claimer(registry: Registry, launched: list[Claim]) -> Claimer:
    async def ask(request: protocol.ClaimRequest) -> protocol.ClaimAnswer:
        return protocol.ClaimAnswer(granted=True, spec=JobSpec(image="busybox"), log_seq=7)

    return Claimer(
        nc=None,  # type: ignore[arg-type]
        js=None,  # type: ignore[arg-type]
        queue="q",
        config=OrchestratorConfig(orchestrator_id="o-1", keepalive_s=0.05),
        slots=asyncio.Semaphore(4),
        registry=registry,
        launch=lambda claim, ticket: launched.append(claim),
        ask=ask,
    )


async def test_the_earlier_attempt_is_stopped_and_the_granted_one_launches_after_it() -> None:
    registry, launched = Registry(), []
    earlier = Earlier(registry, stops_after_s=0.3)
    registry.add(earlier)
    offer = Offer()
    took = await claimer(registry, launched)._take(offer, asyncio.Event())  # type: ignore[arg-type]
    assert took and [(c.job_id, c.attempt, c.log_seq) for c in launched] == [(JOB, 2, 7)]
    assert [s.kind for s in earlier.stops] == ["stop_order"]
    assert "attempt 2" in earlier.stops[0].detail
    assert registry.get(JOB) is None and "nak" not in offer.done and "ack" not in offer.done
    assert "in_progress" in offer.done  # kept from redelivery while the earlier one stopped


async def test_stopping_meanwhile_hands_the_offer_back() -> None:
    registry, launched = Registry(), []
    registry.add(Earlier(registry, stops_after_s=10))
    offer, stopping = Offer(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stopping.set)
    took = await claimer(registry, launched)._take(offer, stopping)  # type: ignore[arg-type]
    assert not took and not launched and offer.done[-1] == "nak"
