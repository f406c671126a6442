"""The log sink keeps batches in seq order and loses none across reconnects (fake NATS)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import nats.errors

from dockyard.bus import names, protocol
from dockyard.core.log_line import LogLine
from dockyard.orchestrator.logsink import LogSink
from dockyard.runtime.output import LineBatch

AT = datetime(2026, 1, 1, tzinfo=UTC)


class FakeNats:
    def __init__(self) -> None:
        self.is_connected = True
        self.is_closed = False
        self.stats: dict[str, int] = {"reconnects": 0}

    def reconnect(self) -> None:
        self.stats["reconnects"] += 1


class FakeJetStream:
    """publish_async hands back a future the test settles; `sent` is what went on the wire."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, asyncio.Future[Any]]] = []
        self.headers: list[dict[str, str]] = []

    async def publish_async(
        self, subject: str, payload: bytes, headers: dict[str, str], stream: str
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batch = protocol.decode_log_batch(payload)
        name = f"from {batch.lines[0].seq}" if batch.lines else "end"
        if batch.last_seq is not None:
            name = f"{name}, last {batch.last_seq}"
        self.sent.append((name, future))
        self.headers.append(headers)
        return future

    def ids(self) -> list[str]:
        return [msg_id for msg_id, _ in self.sent]

    def ack_all(self) -> None:
        for _, future in self.sent:
            if not future.done():
                future.set_result(object())


def lines(first: int, count: int = 2) -> list[LogLine]:
    return [LogLine(seq, "stdout", f"l{seq}", AT, 1) for seq in range(first, first + count)]


def sink(nc: FakeNats, js: FakeJetStream, window: int = 4) -> LogSink:
    return LogSink(
        nc,  # type: ignore[arg-type]
        js,  # type: ignore[arg-type]
        "job",
        1,
        orchestrator="o",
        window=window,
        ack_timeout_s=0.5,
    )


async def test_batches_are_pipelined_up_to_the_window() -> None:
    nc, js = FakeNats(), FakeJetStream()
    logs = sink(nc, js, window=2)
    await logs.publish(lines(1))
    await logs.publish(lines(3))
    assert js.ids() == ["from 1", "from 3"]  # both in flight, no ack awaited yet
    third = asyncio.create_task(logs.publish(lines(5)))
    await asyncio.sleep(0.01)
    assert not third.done()  # the window is full: wait for the oldest ack
    js.ack_all()
    await third
    js.ack_all()
    await logs.flush()
    assert js.ids() == ["from 1", "from 3", "from 5"]


async def test_the_final_batch_says_so_and_is_sent_even_without_lines() -> None:
    nc, js = FakeNats(), FakeJetStream()
    logs = sink(nc, js)
    await logs.publish([])  # nothing: nothing sent
    await logs.publish(lines(1), last_seq=2)
    await logs.publish([], last_seq=2)
    assert js.ids() == ["from 1, last 2", "end, last 2"]
    assert js.headers[1][names.MSG_ID].endswith(".job:end:1")  # its own id, not a seq's
    js.ack_all()
    await logs.flush()


async def test_a_batch_counts_the_jobs_own_output_for_the_log_cap_not_dockyards_lines() -> None:
    nc, js = FakeNats(), FakeJetStream()
    logs = sink(nc, js)
    await logs.publish([LogLine(1, "stdout", "abc", AT, 1), LogLine(2, "stderr", "de", AT, 1)])
    await logs.publish(
        [LogLine(3, "system", "pulling image", AT, 1), LogLine(4, "stdout", "f", AT, 1)]
    )
    js.ack_all()
    await logs.flush()
    assert [h[names.LOG_BYTES] for h in js.headers] == ["5", "1"]


async def test_a_batch_from_the_pipeline_sends_the_output_bytes_it_carries() -> None:
    nc, js = FakeNats(), FakeJetStream()
    logs = sink(nc, js)
    lines = [LogLine(1, "system", "pulling image", AT, 1), LogLine(2, "stdout", "abc", AT, 1)]
    await logs.publish(LineBatch(lines, output_bytes=3))
    js.ack_all()
    await logs.flush()
    assert js.headers[0][names.LOG_BYTES] == "3"


async def test_nothing_is_sent_behind_batches_of_a_lost_connection() -> None:
    nc, js = FakeNats(), FakeJetStream()
    logs = sink(nc, js)
    await logs.publish(lines(1))
    nc.reconnect()  # batch 1 went out on a socket that died: it may be lost
    publishing = asyncio.create_task(logs.publish(lines(3)))
    await asyncio.sleep(0.2)
    # Batch 3 alone on the new connection could overtake batch 1: both go again, in order.
    assert js.ids() == ["from 1", "from 1", "from 3"]
    js.ack_all()
    await publishing
    await logs.flush()


async def test_a_failed_ack_resends_everything_unacked_in_order() -> None:
    nc, js = FakeNats(), FakeJetStream()
    logs = sink(nc, js)
    await logs.publish(lines(1))
    await logs.publish(lines(3))
    js.sent[0][1].set_exception(nats.errors.TimeoutError())
    js.sent[1][1].set_result(object())  # stored, but behind a failure: sent again anyway
    flushing = asyncio.create_task(logs.flush())
    await asyncio.sleep(0.3)
    assert js.ids() == ["from 1", "from 3", "from 1", "from 3"]
    js.ack_all()
    await flushing


async def test_publishes_while_disconnected_wait_for_the_connection() -> None:
    nc, js = FakeNats(), FakeJetStream()
    logs = sink(nc, js)
    nc.is_connected = False
    flushing = asyncio.create_task(logs.publish(lines(1)))
    await asyncio.sleep(0.1)
    assert js.ids() == []  # not piled into the client's reconnect buffer
    nc.is_connected = True
    nc.reconnect()
    await asyncio.sleep(0.2)
    assert js.ids() == ["from 1"]
    js.ack_all()
    await flushing


class Claims:
    """The sink's question "was a later attempt claimed?": its answer (None: the question
    fails), and how often it was asked."""

    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.asked = 0

    async def superseded(self) -> bool:
        self.asked += 1
        if self.answer is None:
            raise nats.errors.TimeoutError
        return self.answer


def fenced_sink(nc: FakeNats, js: FakeJetStream, claims: Claims) -> LogSink:
    return LogSink(
        nc,  # type: ignore[arg-type]
        js,  # type: ignore[arg-type]
        "job",
        1,
        orchestrator="o",
        window=4,
        ack_timeout_s=0.5,
        superseded=claims.superseded,
    )


async def test_after_an_outage_a_superseded_attempt_sends_nothing_more() -> None:
    """Cut off past its lease, the attempt was replaced: the next attempt numbers its lines
    after what was stored when it was claimed, so what this one still holds is dropped."""
    nc, js, claims = FakeNats(), FakeJetStream(), Claims(True)
    logs = fenced_sink(nc, js, claims)
    await logs.publish(lines(1))
    nc.reconnect()  # batch 1 may have died with the old socket
    await logs.publish(lines(3))
    await logs.flush()
    assert js.ids() == ["from 1"]  # nothing sent again
    await logs.publish(lines(5))  # nor anything later
    await logs.flush()
    assert js.ids() == ["from 1"] and claims.asked == 1


async def test_a_current_attempt_resends_as_before_and_a_failed_check_does_not_stop_it() -> None:
    for answer in (False, None):
        nc, js, claims = FakeNats(), FakeJetStream(), Claims(answer)
        logs = fenced_sink(nc, js, claims)
        await logs.publish(lines(1))
        nc.reconnect()
        publishing = asyncio.create_task(logs.publish(lines(3)))
        await asyncio.sleep(0.2)
        assert js.ids() == ["from 1", "from 1", "from 3"]
        js.ack_all()
        await publishing
        await logs.flush()
        assert claims.asked == 1  # once per connection


async def test_a_superseded_attempt_that_printed_nothing_while_cut_off_sends_nothing_after() -> (
    None
):
    """Nothing was in flight to send again: the first batch on the new connection asks."""
    nc, js = FakeNats(), FakeJetStream()
    logs = fenced_sink(nc, js, Claims(True))
    await logs.publish(lines(1))
    js.ack_all()
    await logs.flush()
    nc.reconnect()
    await logs.publish(lines(3))  # e.g. "stopped by the scheduler", numbered after 2
    await logs.flush()
    assert js.ids() == ["from 1"]


async def test_without_a_new_connection_nothing_is_asked() -> None:
    nc, js, claims = FakeNats(), FakeJetStream(), Claims(True)
    logs = fenced_sink(nc, js, claims)
    await logs.publish(lines(1))
    js.sent[0][1].set_exception(nats.errors.TimeoutError())  # a failure, same connection
    flushing = asyncio.create_task(logs.flush())
    await asyncio.sleep(0.3)
    js.ack_all()
    await flushing
    assert claims.asked == 0 and js.ids() == ["from 1", "from 1"]
