"""The work offer behind a running attempt: kept alive while the job runs, acked once reported.

The offer is acked only after the attempt's exit report is stored: if this orchestrator dies
first, JetStream redelivers the offer, and the claim that follows is refused (the attempt is
over, or taken) or, for this same orchestrator after a restart, fenced by `Registry`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import nats.errors
from nats.aio.msg import Msg

from dockyard.process.cancelling import raise_if_cancelled

log = logging.getLogger("dockyard.orchestrator.ticket")


class Ticket(Protocol):
    def adopt(self, msg: Msg) -> bool:
        """A later delivery of the same offer: keep that one alive and ack it too. False once
        the ticket is acked: the caller acks this delivery itself."""
        ...

    async def keep_alive(self) -> None:
        """Send in-progress acks until cancelled."""
        ...

    async def ack(self) -> None:
        """The attempt is reported: the queue's consumer is done with the offer (best effort)."""
        ...


class WorkTicket:
    """Every offer message for one attempt: a redelivery of the same stream message replaces
    the old delivery; another message offering the same attempt (republished past the
    duplicate window) is kept alive and acked along with it."""

    def __init__(self, msg: Msg, keepalive_s: float) -> None:
        self._msgs: dict[int | str, Msg] = {}
        self._keepalive_s = keepalive_s
        self._acked = False
        self.adopt(msg)

    def adopt(self, msg: Msg) -> bool:
        # The attempt stays registered through its cleanup, after the ack: a copy pulled
        # then would otherwise wait out the ack wait in the queue.
        if self._acked:
            return False
        self._msgs[_stream_seq(msg)] = msg
        return True

    async def keep_alive(self) -> None:
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
            await asyncio.sleep(self._keepalive_s)
            for msg in list(self._msgs.values()):
                try:
                    await msg.in_progress()
                except (nats.errors.Error, OSError) as exc:
                    # Disconnected: the next one may pass. If the ack wait runs out meanwhile
                    # the offer is redelivered, and its claim is refused or fenced.
                    log.info("ticket.keepalive_failed error=%s", exc)

    async def ack(self) -> None:
        self._acked = True
        for msg in list(self._msgs.values()):
            await _ack(msg)


def _stream_seq(msg: Msg) -> int | str:
    try:
        return msg.metadata.sequence.stream
    except (nats.errors.Error, ValueError, AttributeError):
        return msg.reply or id(msg)  # not a JetStream delivery (a test's fake)


async def _ack(msg: Msg) -> None:
    # Not confirmed: a lost ack only means a redelivery later, whose claim is refused, and a
    # confirmation would be one more message each way, and a future, for every job.
    try:
        await msg.ack()  # buffered by the client through a reconnect
    except nats.errors.MsgAlreadyAckdError:
        return
    except nats.errors.Error as exc:
        log.warning("ticket.ack_failed subject=%s error=%s", msg.subject, exc)
