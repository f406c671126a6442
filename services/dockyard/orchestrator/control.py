"""Being told to stop: cancel requests for jobs running here, and the scheduler's stop orders.

Cancels come from the EVENTS stream's `cancel_requested` subject, read as it is published
(core NATS: no consumer state, every orchestrator sees every cancel and picks its own jobs).
A core subscription misses what is published while it is disconnected, so `sweep` asks the
stream directly, per running job, every heartbeat; a cancel that lands between a claim's
answer and the attempt's registration is remembered for a moment and applied at launch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from typing import Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from dockyard.bus import names, protocol
from dockyard.bus.errors import BusError, BusRejected, MessageDecodeError, translated
from dockyard.bus.messages import decode_event
from dockyard.core.events import CancelRequested
from dockyard.orchestrator.outcome import StopRequest
from dockyard.orchestrator.registry import Registry

log = logging.getLogger("dockyard.orchestrator.control")

CANCEL_TYPE: Final = "cancel_requested"
# A cancel for a job not (yet) running here is kept this long, for the launch that may follow.
EARLY_CANCEL_S: Final = 30.0
EARLY_CANCELS: Final = 1000


def cancel_stop(requested_by: str) -> StopRequest:
    return StopRequest("cancel", f"cancelled by {requested_by}")


class Control:
    def __init__(
        self, nc: NatsClient, js: JetStreamContext, orchestrator: str, registry: Registry
    ) -> None:
        self._nc = nc
        self._js = js
        self._orchestrator = orchestrator
        self._registry = registry
        self._subs: list[Subscription] = []
        self._early: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def start(self) -> None:
        self._subs = [
            await self._nc.subscribe(names.events_of_type(CANCEL_TYPE), cb=self._on_cancel),
            await self._nc.subscribe(
                names.control_subject(self._orchestrator), cb=self._on_stop_order
            ),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error, OSError):  # closing anyway
                await sub.unsubscribe()
        self._subs = []

    def early_cancel(self, job_id: str) -> StopRequest | None:
        """A cancel that came just before this job's attempt was registered here."""
        found = self._early.pop(job_id, None)
        if found is None or time.monotonic() - found[1] > EARLY_CANCEL_S:
            return None
        return cancel_stop(found[0])

    async def sweep(self) -> None:
        """Ask the EVENTS stream whether any job running here was cancelled unseen."""
        for attempt in self._registry:
            requested_by = await self._cancelled_by(attempt.job_id)
            if requested_by is not None:
                attempt.request_stop(cancel_stop(requested_by))

    async def _cancelled_by(self, job_id: str) -> str | None:
        subject = names.event_subject(job_id, CANCEL_TYPE)
        try:
            with translated():
                message = await self._js.get_last_msg(names.EVENTS_STREAM, subject)
            event = decode_event(message.data or b"")
        except BusRejected:
            return None  # not found: never cancelled
        except BusError as exc:
            log.info("orchestrator.cancel_check_failed job=%s error=%s", job_id, exc)
            return None
        return event.requested_by if isinstance(event, CancelRequested) else None

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except MessageDecodeError as exc:
            log.warning("orchestrator.cancel_unreadable error=%s", exc)
            return
        if not isinstance(event, CancelRequested):
            return
        running = self._registry.get(event.job_id)
        if running is not None:
            log.info("orchestrator.cancel job=%s", event.job_id)
            running.request_stop(cancel_stop(event.requested_by))
            return
        self._early[event.job_id] = (event.requested_by, time.monotonic())
        while len(self._early) > EARLY_CANCELS:
            self._early.popitem(last=False)

    async def _on_stop_order(self, msg: Msg) -> None:
        try:
            order = protocol.decode_stop(msg.data)
        except MessageDecodeError as exc:
            log.warning("orchestrator.stop_order_unreadable error=%s", exc)
            return
        running = self._registry.get(order.job_id)
        if running is None or running.attempt != order.attempt:
            return  # not running here (any more): nothing to stop
        log.warning(
            "orchestrator.stop_order job=%s attempt=%d reason=%s",
            order.job_id,
            order.attempt,
            order.reason,
            extra={"event": "orchestrator.stop_order", "job": order.job_id},
        )
        running.request_stop(StopRequest("stop_order", f"stopped by the scheduler: {order.reason}"))
