"""Numbered log lines: seq without gaps, the byte cap and its ring, a lagging consumer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from dockyard.runtime import LogLine, LogPipeline
from dockyard.runtime.output import LINE_OVERHEAD

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _drain(pipeline: LogPipeline) -> list[LogLine]:
    lines: list[LogLine] = []
    while batch := pipeline.take(512, 256 * 1024):
        lines += batch
    return lines


def _texts(lines: list[LogLine]) -> list[tuple[str, str]]:
    return [(line.stream, line.text) for line in lines]


def test_lines_are_numbered_from_next_seq_across_streams_and_notes() -> None:
    pipeline = LogPipeline(attempt=2, next_seq=41, secrets=["pw"])
    pipeline.note("pulling busybox", T0)
    pipeline.feed("stdout", b"a\nb", T0)
    pipeline.feed("stderr", b"err: pw\n", T0 + timedelta(seconds=1))
    pipeline.finish(T0 + timedelta(seconds=2))

    lines = _drain(pipeline)

    assert [line.seq for line in lines] == [41, 42, 43, 44]
    assert _texts(lines) == [
        ("system", "pulling busybox"),
        ("stdout", "a"),
        ("stderr", "err: ***"),
        ("stdout", "b"),
    ]
    assert {line.attempt for line in lines} == {2}
    assert lines[2].at == T0 + timedelta(seconds=1)
    assert pipeline.next_seq == 45


def test_a_line_encodes_with_exactly_the_contract_keys() -> None:
    line = LogLine(seq=1, stream="stdout", text="hi", at=T0, attempt=1)

    assert msgspec.json.decode(msgspec.json.encode(line)) == {
        "seq": 1,
        "stream": "stdout",
        "text": "hi",
        "at": "2026-01-01T00:00:00Z",
        "attempt": 1,
    }


def test_past_the_cap_one_line_says_so_then_the_ring_tail_comes_at_the_end() -> None:
    pipeline = LogPipeline(attempt=1, cap_bytes=20, ring_lines=3)
    for n in range(1, 11):
        pipeline.feed("stdout", f"line{n}\n".encode(), T0)  # 6 bytes each

    during = _drain(pipeline)
    pipeline.finish(T0)
    after = _drain(pipeline)

    assert _texts(during) == [
        ("stdout", "line1"),
        ("stdout", "line2"),
        ("stdout", "line3"),
        (
            "system",
            "log limit of 20 bytes reached: output is dropped from here on, the job goes on",
        ),
    ]
    assert _texts(after) == [
        ("system", "4 lines omitted past the log limit; the last 3 follow"),
        ("stdout", "line8"),
        ("stdout", "line9"),
        ("stdout", "line10"),
    ]
    assert [line.seq for line in during + after] == list(range(1, 9))
    assert pipeline.capped


def test_the_cap_counts_earlier_attempts() -> None:
    pipeline = LogPipeline(attempt=2, cap_bytes=100, used_bytes=98)
    pipeline.feed("stdout", b"hello\n", T0)

    assert [line.stream for line in _drain(pipeline)] == ["system"]


def test_a_stalled_consumer_costs_a_bounded_backlog_and_learns_what_it_missed() -> None:
    pipeline = LogPipeline(attempt=1, max_pending_lines=10, ring_lines=2)
    for n in range(1, 51):
        pipeline.feed("stdout", f"{n}\n".encode(), T0)

    assert pipeline.pending_lines == 10

    lines = _drain(pipeline)
    pipeline.feed("stdout", b"after\n", T0)
    lines += _drain(pipeline)

    assert _texts(lines) == [
        *[("stdout", str(n)) for n in range(1, 11)],
        ("system", "38 lines omitted while the log reader was behind; the last 2 follow"),
        ("stdout", "49"),
        ("stdout", "50"),
        ("stdout", "after"),
    ]
    assert [line.seq for line in lines] == list(range(1, 15))


def test_streams_ending_while_behind_flush_the_ring_once_and_say_nothing_more() -> None:
    pipeline = LogPipeline(attempt=1, max_pending_lines=10, ring_lines=2)
    for n in range(1, 15):
        pipeline.feed("stdout", f"{n}\n".encode(), T0)
    pipeline.finish(T0)
    texts = [text for _, text in _texts(_drain(pipeline))]
    assert texts[-3:] == [
        "2 lines omitted while the log reader was behind; the last 2 follow",
        "13",
        "14",
    ]
    assert not any(t.startswith("0 lines omitted") for t in texts)


def test_take_respects_the_batch_limits_but_always_takes_one() -> None:
    pipeline = LogPipeline(attempt=1)
    pipeline.feed("stdout", b"x" * 1000 + b"\n" + b"y\n" * 10, T0)

    assert len(pipeline.take(512, 100)) == 1  # one big line, over max_bytes alone
    assert len(pipeline.take(4, 10_000)) == 4
    assert len(pipeline.take(512, 10_000)) == 6
    assert pipeline.take(512, 10_000) == []
    assert pipeline.pending_bytes == 0


_op = st.one_of(
    st.tuples(st.just("feed"), st.sampled_from(["stdout", "stderr"]), st.binary(max_size=40)),
    st.tuples(st.just("note"), st.just("system"), st.binary(max_size=5)),
    st.tuples(st.just("take"), st.just(""), st.binary(max_size=0)),
)


@given(
    ops=st.lists(_op, max_size=60),
    next_seq=st.integers(min_value=1, max_value=1000),
    cap=st.integers(min_value=0, max_value=200),
    max_pending=st.integers(min_value=1, max_value=8),
)
def test_seq_never_gaps_and_the_backlog_stays_bounded(
    ops: list[tuple[str, str, bytes]], next_seq: int, cap: int, max_pending: int
) -> None:
    pipeline = LogPipeline(
        attempt=1, next_seq=next_seq, cap_bytes=cap, ring_lines=3, max_pending_lines=max_pending
    )
    taken: list[LogLine] = []
    notes = 0
    for op, stream, data in ops:
        if op == "feed":
            pipeline.feed(stream, data, T0)  # type: ignore[arg-type]
        elif op == "note":
            pipeline.note(data.hex(), T0)
            notes += 1
        else:
            taken += pipeline.take(3, 1000)
        # The bound, plus notes, the cap's line and a flushed ring (3 lines and a summary).
        assert pipeline.pending_lines <= max_pending + notes + 1 + 3 + 1
    pipeline.finish(T0)
    taken += _drain(pipeline)

    assert [line.seq for line in taken] == list(range(next_seq, next_seq + len(taken)))
    assert pipeline.next_seq == next_seq + len(taken)


def _weight(lines: list[LogLine]) -> int:
    return sum(len(line.text) + LINE_OVERHEAD for line in lines)


def _output(lines: list[LogLine]) -> int:
    return sum(len(line.text) for line in lines if line.stream != "system")


@given(ops=st.lists(_op, max_size=60), max_lines=st.integers(min_value=1, max_value=5))
def test_a_batch_counts_its_output_and_the_backlog_its_weight(
    ops: list[tuple[str, str, bytes]], max_lines: int
) -> None:
    pipeline = LogPipeline(attempt=1, cap_bytes=150, ring_lines=3, max_pending_lines=6)
    taken: list[LogLine] = []
    for op, stream, data in ops:
        if op == "feed":
            pipeline.feed(stream, data, T0)  # type: ignore[arg-type]
        elif op == "note":
            pipeline.note(data.hex(), T0)
        else:
            batch = pipeline.take(max_lines, 200)
            assert batch.output_bytes == _output(batch)
            taken += batch
        assert pipeline.pending_bytes == _weight(pipeline._pending[pipeline._head :])
    pipeline.finish(T0)
    while batch := pipeline.take(max_lines, 200):
        assert batch.output_bytes == _output(batch)
    assert pipeline.pending_bytes == 0


def test_counts_stay_right_after_the_taken_lines_are_compacted_away() -> None:
    pipeline = LogPipeline(attempt=1)
    for i in range(30):
        pipeline.feed("stdout", b"".join(b"%d\n" % n for n in range(i * 500, i * 500 + 500)), T0)
        pipeline.note(f"note {i}", T0)
    batches = []
    while batch := pipeline.take(700, 1 << 20):
        batches.append(batch)
        assert batch.output_bytes == _output(batch)
        assert pipeline.pending_bytes == _weight(pipeline._pending[pipeline._head :])
    assert sum(map(len, batches)) == 30 * 501
    assert pipeline._dropped_lines > 0  # compaction happened along the way
