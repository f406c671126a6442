"""A room: one per job being followed, one upstream feed shared by all its clients.

A room starts its live feed (tail.py: the job's batches pulled from the LOGS stream, at the
pace the room takes them) *before* it reads where the store ends, so every line is either
stored by then or arrives live afterwards: nothing falls between the two. Live chunks enter
the room's ring in seq order; a chunk that would leave a gap (the store still behind, or a
batch that reached the stream late) waits in `pending` while the missing lines are read from
the store, which always gets them (the persister's consumer is durable). So the ring is
gap-free and repeat-free, and a client is only a position in it.

A room also learns when the job ends (its events, and a slow poll of the read model as a
fallback), then waits until every line is stored (completion.py) and sets `final`: the last
seq. Clients past it get the `end` frame. Gaps in the store block readers only until then:
while the job runs a missing line may still be on its way; once all is stored it never will.

A live batch is shown only if its sender (its subject) holds its attempt, as the persister
checks before storing it (holders.py): one whose holder is not known yet waits for the room's
next round to ask, and the batches after it wait behind it; one from anyone else is never
shown, nor one of an attempt that a later one replaced (superseded.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from bisect import insort
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from dockyard.bus import names
from dockyard.bus.errors import BusError, MessageDecodeError, translated
from dockyard.bus.names import log_sender, subject_token
from dockyard.core.state import TERMINAL
from dockyard.job_logs.chunks import Chunk, chunks_of, end_frame
from dockyard.job_logs.store import LogStore, Page
from dockyard.log_relay.completion import Completion
from dockyard.log_relay.holders import AttemptHolders
from dockyard.log_relay.metrics import RelayMetrics
from dockyard.log_relay.ring import Ring
from dockyard.log_relay.superseded import LaterAttempts
from dockyard.log_relay.tail import LiveTail, TailLimits
from dockyard.process.cancelling import cancel_and_wait, raise_if_cancelled
from dockyard.store.ports import JobView, StoreUnavailable

log = logging.getLogger("dockyard.log_relay.room")

# Live batches held while their attempt's holder is asked for; past this they come from the store.
UNVERIFIED_BATCHES: Final = 64
_TERMINAL_EVENTS: Final = frozenset(
    {"job_succeeded", "job_failed", "job_timed_out", "job_cancelled"}
)


class Views(Protocol):
    async def get_view(self, job_id: str) -> JobView | None: ...


@dataclass(frozen=True)
class RoomLimits:
    ring_bytes: int = 16 * 1024 * 1024  # per room; a client left behind it is too slow (1013)
    keep_bytes: int = 256 * 1024  # recent lines kept for newcomers once everyone has them
    pending_bytes: int = 8 * 1024 * 1024  # live lines held while a gap is read from the store
    fill_lines: int = 20_000  # lines read from the store per query
    poll_s: float = 1.0  # the store is checked this often for lines the live path missed
    status_poll_s: float = 5.0  # the read model, in case the job's end event was missed
    retry_s: float = 0.02  # first retry when waiting for the store (doubling to poll_s)
    linger_s: float = 5.0  # an empty room waits this long for a client to come back
    tail: TailLimits = field(default_factory=TailLimits)  # how live batches are pulled


@dataclass(frozen=True)
class Sources:
    nc: NatsClient  # the live connection (core subscriptions)
    store: LogStore
    views: Views
    completion: Completion
    metrics: RelayMetrics
    limits: RoomLimits = RoomLimits()
    # Who holds each attempt (shared with the persister); None shows every live batch.
    holders: AttemptHolders | None = None


class Follower:
    """One client's position: every line up to `sent` has been sent to it."""

    def __init__(self, after: int, on_overrun: Callable[[], object] | None = None) -> None:
        self.sent = after
        self.live = False  # reads the ring (it has caught up with it once)
        self.overrun = False
        self.wake = asyncio.Event()
        self.on_overrun = on_overrun  # called when the ring leaves it behind

    def left_behind(self) -> None:
        self.overrun = True
        self.wake.set()
        if self.on_overrun is not None:
            self.on_overrun()


class Room:
    def __init__(self, job_id: str, sources: Sources) -> None:
        self.job_id = job_id
        self.ring = Ring()
        self.followers: set[Follower] = set()
        self.final: int | None = None  # the job's last seq, once finished and all stored
        self.end: bytes | None = None  # the end frame, with `final`
        self._src = sources
        self._limits = sources.limits
        self._opened = False
        self._pending: list[tuple[int, int, Chunk]] = []
        self._pending_bytes = 0
        self._unverified: list[tuple[str, list[Chunk]]] = []  # (sender, chunks): holder unknown
        self._later = LaterAttempts(remembered=1)
        self._finished: JobView | None = None
        self._event_seen = True  # check the read model at the first round
        self._status_checked = 0.0
        self._kick = asyncio.Event()
        self._subs: list[Subscription] = []
        self._tail: LiveTail | None = None
        self._live_at = -1e9  # loop time of the last live batch
        self._task: asyncio.Task[None] | None = None
        self._order = 0

    async def open(self) -> None:
        """Start the live feed, then learn where the store ends. Raises BusUnavailable,
        BusRejected, StoreUnavailable."""
        nc = self._src.nc
        self._tail = LiveTail(nc, self.job_id, self._on_batch, self._limits.tail)
        await self._tail.start()
        with translated():
            events = names.job_events_filter(self.job_id)
            self._subs.append(await nc.subscribe(events, cb=self._on_event))
            await nc.flush()  # the server has both: what is published from now on reaches us
        self.ring = Ring(end=await self._src.store.stored_max(self.job_id))
        self._opened = True
        self._drain_pending()
        self._task = asyncio.create_task(self._maintain(), name=f"room-{self.job_id}")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self._tail is not None:
            await self._tail.close()
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as error:  # the connection is gone: nothing to undo
                log.debug("room.unsubscribe_failed error=%s", error)
        self._subs.clear()
        self._src.metrics.ring_bytes.dec(self.ring.bytes)

    async def read_store(self, after: int, limit: int) -> Page:
        """Stored lines after `after` for a client behind the ring: gap-free while the job
        runs (a missing line may still come), everything once `final` is known."""
        return await self._src.store.read(
            self.job_id, after, limit, contiguous=self.final is None, exact=False
        )

    # -- live lines and events (called from nats-py callbacks: nothing slow)

    def _on_batch(self, data: bytes, subject: str) -> None:
        try:
            chunks = chunks_of(data)
        except MessageDecodeError:
            return  # the persister terms it; nothing to show
        sender = log_sender(subject)
        holders = self._src.holders
        if chunks and sender is not None and holders is not None:
            holder = holders.known((chunks[0].job_id, chunks[0].attempt))
            # Not known yet: the next round asks (a few, the store has it). Later batches
            # wait behind it, in order, for the superseded check (a new attempt's first).
            if holder is None or self._unverified:
                if len(self._unverified) < UNVERIFIED_BATCHES:
                    self._unverified.append((sender, chunks))
                    self._kick.set()
                return
            if subject_token(holder) != sender or not self._later.admit(chunks):
                return  # not its attempt, or replaced: never shown (nor stored)
        self._live_at = asyncio.get_running_loop().time()
        for chunk in chunks:
            self._offer(chunk)

    async def _on_event(self, msg: Msg) -> None:
        if msg.subject.rsplit(".", 1)[-1] in _TERMINAL_EVENTS:
            self._event_seen = True
            self._kick.set()

    def _offer(self, chunk: Chunk) -> None:
        if self._opened and self.ring.follows(chunk):
            self._add(chunk)
            self._drain_pending()
        elif not self._opened or chunk.last > self.ring.end:
            self._hold(chunk)

    def _hold(self, chunk: Chunk) -> None:
        """A chunk past a gap waits for the gap to be filled from the store."""
        if self._pending_bytes + len(chunk.body) > self._limits.pending_bytes:
            return  # it will be read from the store too
        self._order += 1
        insort(self._pending, (chunk.first, self._order, chunk))
        self._pending_bytes += len(chunk.body)
        self._kick.set()

    def _drain_pending(self) -> None:
        while self._pending:
            _, _, chunk = self._pending[0]
            if chunk.first > self.ring.end + 1:
                return
            self._pending.pop(0)
            self._pending_bytes -= len(chunk.body)
            if chunk.last > self.ring.end:
                self._add(chunk)

    def _add(self, chunk: Chunk) -> None:
        before = self.ring.bytes
        self.ring.add(chunk)
        self._trim()
        self._src.metrics.ring_bytes.inc(self.ring.bytes - before)
        for follower in self.followers:
            follower.wake.set()

    def count_sent(self, lines: int) -> None:
        self._src.metrics.lines_sent.inc(lines)

    def advanced(self) -> None:
        """A client moved on: if the ring is filling up, drop what everyone has now."""
        if self.ring.bytes > self._limits.ring_bytes // 2:
            before = self.ring.bytes
            self._trim()
            self._src.metrics.ring_bytes.inc(self.ring.bytes - before)
            self._kick.set()

    def _trim(self) -> None:
        ring, limits = self.ring, self._limits
        while ring.bytes > limits.ring_bytes and len(ring) > 1:
            ring.drop_oldest()
        live = [f.sent for f in self.followers if f.live and not f.overrun]
        done = min(live, default=ring.end)
        while ring.bytes > limits.keep_bytes:
            oldest = ring.oldest_last()
            if oldest is None or oldest > done:
                break
            ring.drop_oldest()
        start = ring.start
        for follower in self.followers:
            if follower.live and not follower.overrun and follower.sent + 1 < start:
                follower.left_behind()

    # -- the room's own loop: fill gaps from the store, notice the end

    async def _maintain(self) -> None:
        failures = 0
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
            try:
                await self._round()
                failures = 0
            except (StoreUnavailable, BusError) as error:
                failures += 1
                log.warning("room.round_failed job=%s error=%s", self.job_id, error)
            except Exception:
                log.exception("room.round_crashed job=%s", self.job_id)
                failures += 1
            delay = self._delay(failures)
            try:
                async with asyncio.timeout(delay):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()

    def _delay(self, failures: int) -> float:
        limits = self._limits
        waiting = self._pending or (self._finished is not None and self.final is None)
        if failures or waiting:
            base = limits.retry_s * 2.0 ** min(failures, 8)
            return min(limits.poll_s, base) * random.uniform(0.8, 1.2)
        if self.final is not None and self.ring.end < self.final:
            return limits.retry_s
        return limits.poll_s

    async def _round(self) -> None:
        if self._unverified:
            await self._verify()
        if self.final is None or self.ring.end < self.final:
            await self._catch_up()
        if self.final is None:
            await self._check_end()

    async def _verify(self) -> None:
        """Ask who holds the attempts of live batches held back; show those from the holder."""
        assert self._src.holders is not None
        known = self._src.holders.known
        holders = await self._src.holders.of(
            {(c[0].job_id, c[0].attempt) for _, c in self._unverified}
        )
        # Taken after the query: batches that came meanwhile queued behind, in order.
        held, self._unverified = self._unverified, []
        for sender, chunks in held:
            key = (chunks[0].job_id, chunks[0].attempt)
            holder = holders.get(key) or known(key)
            if holder is not None and subject_token(holder) == sender and self._later.admit(chunks):
                for chunk in chunks:
                    self._offer(chunk)

    async def _catch_up(self) -> None:
        """Read from the store what the ring lacks: a gap behind pending lines, lines the live
        path missed, or (once `final` is known) everything up to it. While live batches keep
        coming without a gap, the store being ahead only means the feed is behind the
        persister (both read the same stream): the feed brings those lines itself."""
        store, limits = self._src.store, self._limits
        if not self._pending and self.final is None:
            loop = asyncio.get_running_loop()
            if loop.time() - self._live_at < limits.poll_s:
                return
            if await store.stored_max(self.job_id) <= self.ring.end:
                return
        while self.ring.bytes <= limits.ring_bytes // 2:
            page = await store.read(
                self.job_id,
                self.ring.end,
                limits.fill_lines,
                contiguous=self.final is None,
                exact=False,
            )
            if not page.chunks:
                return
            for chunk in page.chunks:
                if chunk.first > self.ring.end + 1:
                    self.ring.skip_to(chunk.first - 1)  # lost for good: the job is complete
                self._add(chunk)
            self._drain_pending()
            if page.gap is not None:
                return

    async def _check_end(self) -> None:
        loop = asyncio.get_running_loop()
        if self._finished is None:
            due = loop.time() - self._status_checked >= self._limits.status_poll_s
            if not (self._event_seen or due):
                return
            self._event_seen = False
            self._status_checked = loop.time()
            view = await self._src.views.get_view(self.job_id)
            if view is None or view["status"] not in TERMINAL:
                return
            self._finished = view
        if not await self._src.completion.all_stored(self.job_id):
            return
        view = self._finished
        self.final = await self._src.store.stored_max(self.job_id)
        self.end = end_frame(view["status"], view.get("exit_code"), view.get("reason"))
        await self._catch_up()
        for follower in self.followers:
            follower.wake.set()
