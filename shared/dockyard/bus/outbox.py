"""The outbox relay: every committed event reaches JetStream, in order per job, at least once.

The events table is the outbox. The relay reads it in the global catch-up order from its
checkpoint, publishes each event, and moves the checkpoint only past events JetStream has acked.
A crash anywhere (after the commit, after a publish, before the checkpoint is saved) loses
nothing: the next relay resumes from the checkpoint and republishes, JetStream drops the
repeats by Nats-Msg-Id inside its duplicate window, and consumers tolerate duplicates anyway.

Publishes are pipelined (up to `max_in_flight` acks awaited at once) but never two of the same
job: a job's next event is sent only after the previous one is acked, so a failed publish that
is retried can never land behind a later event of its job.

No one message stops the relay. When NATS refuses a publish (rather than being unreachable),
what was in flight is sent again one event at a time; an event refused for itself (its subject,
its size) is set aside — recorded, its job ended, an alert raised, see SetAside — and the rest
goes on. Any other refusal (a stream out of space) is retried, loudly, and nothing is skipped.
At start the relay also sets aside what lies ahead of its checkpoint that the current
validation would refuse (rows an earlier version let in).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from dockyard.bus.errors import BusError, BusRejected, MessageRejected
from dockyard.bus.leader import Leader, LeadershipLost, SoleLeader
from dockyard.core.deliverable import why_undeliverable
from dockyard.core.events import Event
from dockyard.process.cancelling import raise_if_cancelled, to_completion
from dockyard.store.ports import START, Position, RecordedEvent, StoreUnavailable

log = logging.getLogger("dockyard.bus.outbox")

CHECKPOINT: Final = "outbox"

# Retry delays after a failure: 0.1 s doubling to 5 s, so a NATS or PostgreSQL restart is
# picked up within seconds without hammering a server that is coming back.
RETRY_BASE_S: Final = 0.1
RETRY_CAP_S: Final = 5.0
# The checkpoint is written at most this often while events flow (once idle, at the next poll;
# and when the relay stops): a relay that crashes republishes at most this much, which
# JetStream drops as repeats, instead of one more database write per commit.
CHECKPOINT_EVERY_S: Final = 0.5
STOP_SAVE_TIMEOUT_S: Final = 2.0
# Commits are announced (LISTEN); the poll only catches what no notification announces.
POLL_INTERVAL_S: Final = 1.0
# Events sent and not yet acked: room for two batches of the size a paced sink (which holds
# what comes for up to 50 ms after a batch) sends at ~7,000 events/s, so it is never what
# limits the rate.
MAX_IN_FLIGHT: Final = 2000


class OutboxSource(Protocol):
    """What the relay reads: the part of an EventStore (Pg or in-memory) it needs."""

    async def read_all(self, after: Position, limit: int = 1000) -> list[RecordedEvent]: ...

    async def load_checkpoint(self, name: str) -> Position: ...

    async def save_checkpoint(self, name: str, position: Position) -> None: ...

    async def wait_for_events(self, timeout: float) -> bool:  # noqa: ASYNC109 - the port's name
        """Return on a commit notification (LISTEN dockyard_events) or after `timeout`."""
        ...

    def events_pending(self) -> bool:
        """Whether a read now may find what the last one did not (see EventStore)."""
        ...


class EventSink(Protocol):
    """Where the relay sends events: EventPublisher, or a fake in unit tests."""

    async def submit(
        self, event: Event, after: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Any]:
        """Send `event` once `after` (its job's previous event, if still in flight) is stored,
        and never if that failed; the future resolves once it is stored, or raises its error.
        What needs no order among the job's events (a work offer) may go at once."""
        ...


class SetAside(Protocol):
    """What becomes of an event the relay cannot deliver (the scheduler's: recorded in
    PostgreSQL, its job failed, a metric and a log line). Both calls may raise
    StoreUnavailable; setting the same event aside again must be harmless."""

    async def set_aside(self, record: RecordedEvent, why: str) -> None: ...

    async def ahead_of(self, position: Position) -> set[str]:
        """The ids of events set aside after `position`: the relay skips them."""
        ...


class LogOnlySetAside:
    """The default SetAside, for tools and tests: an ERROR log line, and memory."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[RecordedEvent, str]] = {}

    async def set_aside(self, record: RecordedEvent, why: str) -> None:
        self.records[record.event.event_id] = (record, why)
        log.error("outbox.set_aside job=%s why=%s", record.event.job_id, why)

    async def ahead_of(self, position: Position) -> set[str]:
        return {id_ for id_, (r, _) in self.records.items() if r.at > position}


def retry_delay(attempt: int) -> float:
    return min(RETRY_CAP_S, RETRY_BASE_S * 2.0 ** min(attempt, 16)) * random.uniform(0.8, 1.2)


class OutboxRelay:
    """Publishes committed events from `store` to `sink`; one active relay per `leader`."""

    def __init__(
        self,
        store: OutboxSource,
        sink: EventSink,
        *,
        leader: Leader | None = None,
        checkpoint: str = CHECKPOINT,
        page_size: int = 1000,
        max_in_flight: int = MAX_IN_FLIGHT,
        poll_interval_s: float = POLL_INTERVAL_S,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
        set_aside: SetAside | None = None,
    ) -> None:
        if page_size < 1 or max_in_flight < 1:
            raise ValueError("page_size and max_in_flight must be at least 1")
        self._store = store
        self._sink = sink
        self._leader: Leader = leader if leader is not None else SoleLeader()
        self._checkpoint = checkpoint
        self._page_size = page_size
        self._max_in_flight = max_in_flight
        self._poll_interval_s = poll_interval_s
        self._checkpoint_every_s = checkpoint_every_s
        self._set_aside_to: SetAside = set_aside if set_aside is not None else LogOnlySetAside()
        self._skip: set[str] = set()  # ids of events set aside ahead of the position
        self._checking_backlog = False  # validating what was committed before the start
        self._set_aside_since_read = False
        self._position: Position | None = None  # end of the acked prefix
        self._saved = START  # the checkpoint as last saved
        self._saved_at = -math.inf  # monotonic time of that save
        self._read_to = START  # end of what was read (and sent, or queued to be)
        self.published = 0  # events acked since this relay started, repeats included

    @property
    def position(self) -> Position | None:
        """How far this relay has published (None before it has read its checkpoint)."""
        return self._position

    async def run(self) -> None:
        """Relay until cancelled: stand by until active, then publish as events are committed.

        Wakes on the store's commit notifications, and every `poll_interval_s` regardless (a
        commit can become readable later than its notification). Closes the leader when done.
        """
        try:
            while True:
                raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
                await self._leader.acquire()
                try:
                    # Another relay may have moved the checkpoint while this one stood by.
                    self._position = None
                    while True:
                        await self._publish_committed(self._leader.check)
                        await self._wait_for_events()
                except LeadershipLost as exc:
                    log.warning("outbox.standby_again reason=%s", exc)
        finally:
            # Whole, even if cancelled again meanwhile: each step has a timeout of its own.
            await to_completion(self._stop())

    async def _stop(self) -> None:
        await self._save_on_stop()
        await self._leader.close()

    async def _save_on_stop(self) -> None:
        """Best effort: keep the acked progress a stop would otherwise leave to be sent again."""
        if self._position is None or self._position == self._saved:
            return
        try:
            async with asyncio.timeout(STOP_SAVE_TIMEOUT_S):
                await self._leader.check()  # never move a checkpoint another relay now owns
                await self._store.save_checkpoint(self._checkpoint, self._position)
            self._saved = self._position
        except Exception as exc:  # lost the lead, no database, too slow: republished later
            log.info("outbox.checkpoint_unsaved_at_stop error=%s", exc)

    async def _wait_for_events(self) -> None:
        try:
            await self._store.wait_for_events(self._poll_interval_s)
        except StoreUnavailable:
            await asyncio.sleep(self._poll_interval_s)  # the next read retries and logs
        except Exception:
            # Notifications only shorten the wait; whatever breaks them, polling still delivers
            # every event, so a broken listener must not stop the relay.
            log.warning("outbox.wakeups_failed", exc_info=True)
            await asyncio.sleep(self._poll_interval_s)

    async def run_until_idle(self) -> int:
        """Publish everything committed so far, then return how many events were published.

        Does not take the lock: for tests and tools, with no other relay running.
        """
        self._position = None
        return await self._publish_committed(_no_check, final_save=True)

    async def _publish_committed(
        self, check: Callable[[], Awaitable[None]], *, final_save: bool = False
    ) -> int:
        """Publish until a short page with no commit notified since; retry every failure.

        Pages are read ahead while earlier acks are still in flight, so the pipeline does not
        drain at page boundaries and what commits meanwhile goes out at once. The checkpoint
        moves to the acked prefix at most every `checkpoint_every_s`, and with `final_save`
        also at the end.
        """
        published_before = self.published
        failures = 0
        pipeline = _Pipeline(self._sink, self._max_in_flight, self._skip)
        try:
            while True:
                raise_if_cancelled()  # a cancel nats-py lost (Python 3.11)
                await check()
                try:
                    if self._position is None:
                        await self._start_at_checkpoint()
                    records = await self._store.read_all(self._read_to, self._page_size)
                    if self._checking_backlog:
                        await self._set_aside_invalid(records)
                    for record in records:
                        await pipeline.send(record)
                    if records:
                        self._read_to = records[-1].at
                    if not self._more_to_read(records):
                        self._checking_backlog = False
                        # Read to the end: settle the acks, and read again only if a commit
                        # was notified meanwhile (at a trickle, one read per commit instead of
                        # three; busy, reads follow each other with acks still in flight).
                        await pipeline.drain()
                        if not self._store.events_pending():
                            await self._save(self._take_acked(pipeline), force=final_save)
                            return self.published - published_before
                    await self._save(self._take_acked(pipeline), force=False)
                    failures = 0
                except BusRejected as exc:
                    # Refused, not unreachable: find the event refused for itself, if any.
                    log.warning("outbox.refused error=%s: sending one by one", exc)
                    suspects_to = self._read_to
                    await pipeline.abandon()
                    self._read_to = self._take_acked(pipeline)
                    pipeline = _Pipeline(self._sink, self._max_in_flight, self._skip)
                    try:
                        await self._one_by_one(suspects_to, check)
                    except (BusError, StoreUnavailable) as again:
                        self._read_to = self._take_acked(pipeline)
                        await self._back_off(again, failures)
                        failures += 1
                except (BusError, StoreUnavailable) as exc:
                    await pipeline.abandon()
                    if self._position is not None:
                        self._read_to = self._take_acked(pipeline)  # republish the rest
                    await self._back_off(exc, failures)
                    failures += 1
        finally:
            await pipeline.abandon()

    async def _start_at_checkpoint(self) -> None:
        loaded = await self._store.load_checkpoint(self._checkpoint)
        self._skip.clear()
        self._skip.update(await self._set_aside_to.ahead_of(loaded))
        self._checking_backlog = True
        self._position = self._saved = self._read_to = loaded

    async def _set_aside_invalid(self, records: list[RecordedEvent]) -> None:
        """Set aside what the current validation refuses in the backlog found at start (rows
        an earlier version let in); what is committed later was validated as it came."""
        for record in records:
            why = why_undeliverable(record.event)
            if why is not None and record.event.event_id not in self._skip:
                await self._put_aside(record, f"not sent: {why}")

    async def _one_by_one(self, until: Position, check: Callable[[], Awaitable[None]]) -> None:
        """Send each event up to `until` alone, setting aside the one refused for itself."""
        assert self._position is not None, "the checkpoint is loaded before anything is sent"
        while self._position < until:
            await check()
            records = await self._store.read_all(self._position, self._page_size)
            if not records:
                return
            for record in records:
                if record.at > until:
                    return
                await self._send_alone(record)
                self._position = self._read_to = record.at

    async def _send_alone(self, record: RecordedEvent) -> None:
        if record.event.event_id in self._skip:
            return
        try:
            await (await self._sink.submit(record.event))
        except MessageRejected as exc:
            await self._put_aside(record, str(exc))
            return
        self.published += 1

    async def _put_aside(self, record: RecordedEvent, why: str) -> None:
        await self._set_aside_to.set_aside(record, why)
        self._skip.add(record.event.event_id)  # only once it is recorded
        self._set_aside_since_read = True  # it may have appended (the job's failure)

    def _more_to_read(self, records: list[RecordedEvent]) -> bool:
        appended, self._set_aside_since_read = self._set_aside_since_read, False
        return len(records) == self._page_size or appended or self._store.events_pending()

    async def _save(self, acked: Position, *, force: bool) -> None:
        if acked == self._saved:
            return
        now = time.monotonic()
        if force or now - self._saved_at >= self._checkpoint_every_s:
            await self._store.save_checkpoint(self._checkpoint, acked)
            self._saved, self._saved_at = acked, now

    def _take_acked(self, pipeline: _Pipeline) -> Position:
        """Move the acked position to the end of the pipeline's acked prefix; return it."""
        assert self._position is not None, "the checkpoint is loaded before anything is sent"
        self.published += pipeline.take_acked_count()
        if pipeline.acked_to is not None:
            self._position = pipeline.acked_to
        return self._position

    async def _back_off(self, exc: Exception, failures: int) -> None:
        delay = retry_delay(failures)
        # Refused (not merely unavailable): the relay is stuck on this event until an operator
        # fixes the cause (e.g. a message over max_payload). It never skips an event.
        level = logging.ERROR if isinstance(exc, BusRejected) else logging.WARNING
        log.log(
            level,
            "outbox.retry error=%s: %s delay_s=%.2f failures=%d",
            type(exc).__name__,
            exc,
            delay,
            failures + 1,
            extra={"event": "outbox.retry", "error": repr(exc), "failures": failures + 1},
        )
        await asyncio.sleep(delay)


class _Pipeline:
    """Acks in flight, in record order: up to `limit`, and never two of one job.

    An event whose job still has one in flight is chained behind it: sent only once that one
    is acked, and never if it failed, so a retried event cannot land behind a later one.
    """

    def __init__(self, sink: EventSink, limit: int, skip: set[str]) -> None:
        self._sink = sink
        self._limit = limit
        self._skip = skip  # events set aside: passed over as if acked
        self.window: deque[tuple[RecordedEvent, asyncio.Future[Any]]] = deque()
        self._latest: dict[str, asyncio.Future[Any]] = {}  # each job's last ack in the window
        self.acked_to: Position | None = None  # the end of the acked prefix
        self._acked_count = 0

    async def send(self, record: RecordedEvent) -> None:
        while len(self.window) >= self._limit:
            await self._settle_oldest()
        event = record.event
        if event.event_id in self._skip:
            ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            ack.set_result(None)
        else:
            ack = await self._sink.submit(event, self._latest.get(event.job_id))
        self.window.append((record, ack))
        self._latest[event.job_id] = ack

    async def drain(self) -> None:
        while self.window:
            await self._settle_oldest()

    def take_acked_count(self) -> int:
        count, self._acked_count = self._acked_count, 0
        return count

    async def abandon(self) -> None:
        """Cancel acks still awaited; their events are republished from the checkpoint."""
        acks = [ack for _, ack in self.window]
        self.window.clear()
        self._latest.clear()
        for ack in acks:
            ack.cancel()
        await asyncio.gather(*acks, return_exceptions=True)

    async def _settle_oldest(self) -> None:
        record, ack = self.window[0]
        await ack  # raises the BusError of a failed publish
        self.window.popleft()
        if self._latest.get(record.event.job_id) is ack:
            del self._latest[record.event.job_id]
        self.acked_to = record.at
        self._acked_count += 1


async def _no_check() -> None:
    return
