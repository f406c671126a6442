"""Whether the lines of a job are all stored: what `complete` and the `end` frame wait for.

The orchestrator publishes an attempt's last batch and waits for JetStream's ack before it
reports the exit, so once a job's terminal event exists, every batch of the job is in the
LOGS stream. But the batches and the event travel on different streams, to different
consumers: the event may well be read before the relay has written the last batch. So the
relay does not guess (no "wait a little"); it checks that its durable consumer has acked
every message up to the job's last one. The consumer acks only after the commit, and its ack
floor is the stream sequence below which every message is acked, so

    all stored  <=>  ack floor >= stream sequence of the last message on `job_logs_filter(job)`

(or the stream holds nothing for the job). The last message, not the highest seq: a batch
resent after a NATS outage can land in the stream after later ones, and this test still
waits for it. (Batches an earlier version left on `dockyard.logs.<job>` are stored, but not
looked at here: a job that ended across an upgrade may say `complete` a moment before they are.)
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Final

import nats.js.errors
from nats.js import JetStreamContext

from dockyard.bus import names
from dockyard.bus.errors import BusRejected, translated

# Many requests in a burst (a page load, a room's followers) share one consumer lookup.
FLOOR_TTL_S: Final = 0.02
REMEMBERED_JOBS: Final = 100_000


class Completion:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        floor_ttl_s: float = FLOOR_TTL_S,
        remembered: int = REMEMBERED_JOBS,
    ) -> None:
        self._js = js
        self._ttl = floor_ttl_s
        self._floor = 0
        self._floor_at = -1.0
        self._floor_lock = asyncio.Lock()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._heads: dict[str, int] = {}  # a finished job's stream head, until all is stored
        self._remembered = remembered

    async def all_stored(self, job_id: str) -> bool:
        """True once every batch the LOGS stream holds for the job has been written.

        Meaningful once the job is finished (no batch can come after). Raises BusUnavailable.
        """
        if job_id in self._done:
            self._done.move_to_end(job_id)
            return True
        last = await self._last_of(job_id)
        if last is None or (last and not await self.acked_through(last)):
            return False
        self._heads.pop(job_id, None)
        self._done[job_id] = None
        if len(self._done) > self._remembered:
            self._done.popitem(last=False)
        return True

    async def acked_through(self, stream_seq: int) -> bool:
        """Whether the log relay's consumer has acked every message up to `stream_seq`."""
        if stream_seq <= self._floor:
            return True
        loop = asyncio.get_running_loop()
        async with self._floor_lock:
            if loop.time() - self._floor_at >= self._ttl:
                with translated():
                    info = await self._js.consumer_info(names.LOGS_STREAM, names.LOGS_DURABLE)
                floor = info.ack_floor.stream_seq if info.ack_floor else None
                self._floor = max(self._floor, floor or 0)
                self._floor_at = loop.time()
        return stream_seq <= self._floor

    async def _last_of(self, job_id: str) -> int | None:
        """A stream sequence at or past the job's last message; None while nobody can say.

        On a cluster, the stream's head as its leader tells it, read once the job is over:
        every batch of the job is below it. Not the job's last message by a direct get: any
        replica answers that, and one cut off from the others (or lagging) answers from a log
        that lacks the last batches, which made a room send `end` lines early. A leader that
        does not hear from a majority of the replicas may be such a one too: asked again
        later. With one server (or credentials without STREAM.INFO) the direct get it is."""
        if job_id in self._heads:
            return self._heads[job_id]
        try:
            with translated():
                info = await self._js.stream_info(names.LOGS_STREAM)
        except BusRejected:
            return await self._last_message_seq(job_id)
        cluster = info.cluster
        if cluster is None or not cluster.replicas:
            return await self._last_message_seq(job_id)
        current = sum(1 for replica in cluster.replicas if replica.current)
        if not cluster.leader or 2 * (1 + current) <= 1 + len(cluster.replicas):
            return None
        self._heads[job_id] = info.state.last_seq
        while len(self._heads) > self._remembered:
            self._heads.pop(next(iter(self._heads)))
        return info.state.last_seq

    async def _last_message_seq(self, job_id: str) -> int:
        with translated():
            try:
                message = await self._js.get_last_msg(
                    names.LOGS_STREAM, names.job_logs_filter(job_id)
                )
            except nats.js.errors.NotFoundError:
                return 0
        return message.seq or 0
