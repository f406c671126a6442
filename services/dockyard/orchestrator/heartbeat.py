"""Saying "alive, and running these": a key per orchestrator in the heartbeat KV bucket.

The bucket's TTL is the lease (`DOCKYARD_LEASE_S`); a put every lease/3 keeps the key, so an
orchestrator whose key expired has been silent for a whole lease and is lost (the janitor then
ends its attempts). Each put lists the running attempts with their last log seq, which is what
the janitor and scheduler need to requeue them without repeating a line number.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dockyard.bus import names
from dockyard.bus.errors import BusError, translated
from dockyard.bus.protocol import Heartbeat, RunningJob, encode_heartbeat
from dockyard.orchestrator.registry import Registry
from dockyard.process.cancelling import raise_if_cancelled

log = logging.getLogger("dockyard.orchestrator.heartbeat")

# The longest one put may wait (the JetStream API's own timeout).
PUT_TIMEOUT_MAX_S = 5.0


class Heartbeats:
    def __init__(
        self,
        js: JetStreamContext,
        registry: Registry,
        *,
        orchestrator: str,
        queues: tuple[str, ...],
        max_jobs: int,
        lease_s: float,
        period_s: float,
        on_beat: Callable[[], Awaitable[None]] | None = None,
        on_missed: Callable[[], None] | None = None,
        engine_error: Callable[[], str | None] | None = None,
        move_server: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`move_server`: called when a beat fails while connected, to try another node of a
        NATS cluster (see `run`)."""
        self._move_server = move_server
        self._engine_error = engine_error or (lambda: None)
        self._js = js
        self._registry = registry
        self._orchestrator = orchestrator
        self._key = names.heartbeat_key(orchestrator)
        self._queues = list(queues)
        self._max_jobs = max_jobs
        self._lease_s = lease_s
        self._period_s = period_s
        self._on_beat = on_beat
        self._on_missed = on_missed
        self._started_at = datetime.now(UTC)
        self._kv: KeyValue | None = None
        self.draining = False
        self.sent = 0

    def current(self) -> Heartbeat:
        return Heartbeat(
            orchestrator=self._orchestrator,
            queues=self._queues,
            max_jobs=self._max_jobs,
            lease_s=self._lease_s,
            started_at=self._started_at,
            sent_at=datetime.now(UTC),
            jobs=[
                RunningJob(job_id=a.job_id, attempt=a.attempt, log_seq=a.log_seq)
                for a in self._registry
            ],
            draining=self.draining,
            engine_error=self._engine_error(),
        )

    @property
    def put_timeout_s(self) -> float:
        """How long one put may take: a period plus this twice stays inside the lease (a
        failed put, a move to another server, and a put there), where the JetStream API's
        own 5 s would outlast a short lease at the first put a cut-off node never commits."""
        return min(PUT_TIMEOUT_MAX_S, self._lease_s / 4)

    async def beat(self) -> bool:
        """One put; False if NATS could not take it in time (the next one may)."""
        try:
            with translated():
                async with asyncio.timeout(self.put_timeout_s):
                    if self._kv is None:
                        self._kv = await self._js.key_value(names.HEARTBEATS_BUCKET)
                    await self._kv.put(self._key, encode_heartbeat(self.current()))
        except TimeoutError:
            log.warning(
                "orchestrator.heartbeat_failed error=no answer in %.1f s", self.put_timeout_s
            )
            return False
        except BusError as exc:
            log.warning("orchestrator.heartbeat_failed error=%s", exc)
            return False
        self.sent += 1
        return True

    async def run(self) -> None:
        """Beat every period until cancelled (then the caller calls `withdraw`)."""
        moved = False
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
            if not await self.beat():
                if self._on_missed is not None:
                    self._on_missed()
                if self._move_server is not None and not moved:
                    # A node cut off from the cluster's majority keeps our connection up but
                    # commits nothing: another node may take the beat before the lease runs
                    # out, where staying would get our jobs requeued as lost. So at once,
                    # not a period later; once, so a cluster away for good is not hammered.
                    await self._move_server()
                    moved = True
                    continue
            moved = False
            if self._on_beat is not None:
                try:
                    await self._on_beat()
                except Exception:  # the beat must go on whatever a rider does
                    log.exception("orchestrator.heartbeat_rider_failed")
            await asyncio.sleep(self._period_s)

    async def withdraw(self) -> None:
        """A clean exit, nothing left running: remove the key instead of letting it expire."""
        try:
            with translated():
                if self._kv is None:
                    self._kv = await self._js.key_value(names.HEARTBEATS_BUCKET)
                await self._kv.delete(self._key)
        except BusError as exc:
            log.info("orchestrator.heartbeat_withdraw_failed error=%s", exc)
