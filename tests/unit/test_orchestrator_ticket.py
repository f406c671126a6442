"""The work ticket: every delivery of an attempt's offer is acked, even one adopted late."""

from __future__ import annotations

from typing import Any, cast

from nats.aio.msg import Msg

from dockyard.orchestrator.ticket import WorkTicket


class FakeDelivery:
    """A delivery as the ticket uses it (no JetStream metadata: keyed by its reply subject)."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.acks = 0

    @property
    def metadata(self) -> Any:
        raise ValueError("not a JetStream delivery")

    async def ack(self) -> None:
        self.acks += 1


def delivery(reply: str) -> tuple[FakeDelivery, Msg]:
    fake = FakeDelivery(reply)
    return fake, cast(Msg, fake)


async def test_every_adopted_delivery_is_acked_with_the_ticket() -> None:
    (first, first_msg), (copy, copy_msg) = delivery("r1"), delivery("r2")
    ticket = WorkTicket(first_msg, keepalive_s=60)
    assert ticket.adopt(copy_msg)
    await ticket.ack()
    assert (first.acks, copy.acks) == (1, 1)


async def test_a_delivery_pulled_after_the_ack_is_left_to_the_caller() -> None:
    (first, first_msg), (late, late_msg) = delivery("r1"), delivery("r2")
    ticket = WorkTicket(first_msg, keepalive_s=60)
    await ticket.ack()
    assert not ticket.adopt(late_msg)  # the caller acks it: no wait for a redelivery
    assert (first.acks, late.acks) == (1, 0)
