"""Log batches as chunks, slices and frames: bytes in, the same bytes out."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from dockyard.bus import protocol
from dockyard.bus.errors import MessageDecodeError
from dockyard.core.log_line import LogLine
from dockyard.job_logs.chunks import (
    Chunk,
    chunks_of,
    encode_lines,
    end_frame,
    lines_frame,
    lines_page,
    packed,
    slice_chunk,
    unpacked,
)
from dockyard.job_logs.store import holes_in
from dockyard.log_relay.ring import Ring

JOB = "0195f0c8-0000-7000-8000-000000000001"
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def line(seq: int, text: str | None = None) -> LogLine:
    return LogLine(seq, "stdout", text if text is not None else f"line {seq}", AT, 1)


def batch(seqs: list[int]) -> bytes:
    return protocol.encode(protocol.LogBatch(job_id=JOB, attempt=1, lines=[line(s) for s in seqs]))


def decoded(body: bytes) -> list[int]:
    return [item["seq"] for item in msgspec.json.decode(b"[" + body + b"]")]


def chunk(first: int, last: int) -> Chunk:
    return Chunk(JOB, first, last, encode_lines([line(s) for s in range(first, last + 1)]))


def test_a_batch_is_one_chunk_with_the_lines_as_encoded() -> None:
    (only,) = chunks_of(batch([5, 6, 7]))
    assert (only.job_id, only.first, only.last, only.count) == (JOB, 5, 7, 3)
    assert only.body == encode_lines([line(5), line(6), line(7)])


def test_a_batch_that_is_not_one_run_is_split_sorted_and_deduplicated() -> None:
    chunks = chunks_of(batch([1, 3, 2, 2, 7, 8]))
    assert [(c.first, c.last) for c in chunks] == [(1, 3), (7, 8)]
    assert decoded(chunks[0].body) == [1, 2, 3]


def test_an_empty_batch_has_no_chunks() -> None:
    assert chunks_of(batch([])) == []


def test_a_batch_laid_out_otherwise_is_read_line_by_line() -> None:
    lines = [msgspec.json.decode(msgspec.json.encode(line(s))) for s in (4, 5, 6)]
    for layout in (lines, [{**x, "extra": {"seq": 0}} for x in lines]):
        reordered = [dict(reversed(list(x.items()))) for x in layout]
        data = msgspec.json.encode({"job_id": JOB, "attempt": 1, "lines": reordered})
        data = data.replace(b",{", b", {")
        (only,) = chunks_of(data)
        assert (only.first, only.last) == (4, 6) and decoded(only.body) == [4, 5, 6]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"job_id": "not-a-uuid", "attempt": 1, "lines": []}',
        b'{"job_id": "' + JOB.encode() + b'", "attempt": 1, "lines": [{"seq": "x"}]}',
        b'{"job_id": "' + JOB.encode() + b'", "attempt": 1, "lines": [{"seq": 1}]}',
        b'{"job_id": "' + JOB.encode() + b'", "attempt": 1, "lines": 5}',
        b'{"job_id": "' + JOB.encode() + b'", "attempt": 1, "lines": {"seq": 1}}',
    ],
)
def test_what_is_not_a_batch_of_lines_is_poison(data: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        chunks_of(data)


def test_text_that_looks_like_json_keys_is_kept_as_written() -> None:
    tricky = '{"seq":99,"text":"x"} \\" \u00e9 \x00'
    (only,) = chunks_of(
        protocol.encode(protocol.LogBatch(job_id=JOB, attempt=1, lines=[line(1, tricky)]))
    )
    assert msgspec.json.decode(b"[" + only.body + b"]")[0]["text"] == tricky


def test_slices_keep_whole_chunks_and_cut_inside_them() -> None:
    whole = chunk(10, 20)
    assert slice_chunk(whole, 1, 100) is whole
    part = slice_chunk(whole, 12, 14)
    assert (part.first, part.last, decoded(part.body)) == (12, 14, [12, 13, 14])
    with pytest.raises(ValueError, match="outside"):
        slice_chunk(whole, 21, 30)


def test_frames_are_the_contract_documents() -> None:
    frame = msgspec.json.decode(lines_frame([chunk(1, 2).body, chunk(3, 3).body]))
    assert frame["type"] == "lines" and [x["seq"] for x in frame["lines"]] == [1, 2, 3]
    assert set(frame["lines"][0]) == {"seq", "stream", "text", "at", "attempt"}
    end = msgspec.json.decode(end_frame("failed", 3, "exit_code"))
    assert end == {"type": "end", "status": "failed", "exit_code": 3, "reason": "exit_code"}
    page = msgspec.json.decode(lines_page([chunk(4, 5).body], 5, True))
    assert page["next_after"] == 5 and page["complete"] is True and len(page["lines"]) == 2
    assert msgspec.json.decode(lines_page([], 0, False)) == {
        "lines": [],
        "next_after": 0,
        "complete": False,
    }


def test_a_stored_body_reads_back_the_same_packed_or_not() -> None:
    bodies = [
        encode_lines([line(s) for s in range(1, 4097)]),
        encode_lines([line(1, "x" * 70_000), line(2, "")]),  # text starting with the zlib byte
        encode_lines([line(1, '{"seq":1}\u2028 \x00 é')]),
    ]
    for body in bodies:
        assert unpacked(body) is body  # stored as it came: read as it is
        assert unpacked(packed(body)) == body
    assert len(packed(bodies[0])) * 10 < len(bodies[0])


@pytest.mark.parametrize(
    ("first", "last", "stored", "holes"),
    [
        (1, 10, [], [(1, 10)]),
        (1, 10, [(1, 10)], []),
        (1, 10, [(3, 4), (8, 12)], [(1, 2), (5, 7)]),
        (5, 6, [(1, 4), (7, 9)], [(5, 6)]),
        (1, 10, [(0, 3), (4, 10)], []),
    ],
)
def test_holes_are_the_lines_no_stored_range_covers(
    first: int, last: int, stored: list[tuple[int, int]], holes: list[tuple[int, int]]
) -> None:
    assert holes_in(first, last, stored) == holes


# -- the ring


def test_the_ring_takes_lines_in_order_only_trimming_repeats() -> None:
    ring = Ring(end=4)
    assert ring.start == 5 and len(ring) == 0
    assert ring.follows(chunk(5, 8)) and not ring.follows(chunk(6, 8))
    assert not ring.follows(chunk(1, 4))
    ring.add(chunk(5, 8))
    added = ring.add(chunk(7, 10))
    assert added is not None and (added.first, added.last) == (9, 10)
    assert ring.add(chunk(1, 10)) is None
    with pytest.raises(ValueError, match="missing"):
        ring.add(chunk(12, 13))
    assert (ring.start, ring.end) == (5, 10)


def test_the_ring_reads_from_any_position_many_chunks_at_once() -> None:
    ring = Ring()
    for first in range(1, 100, 10):
        ring.add(chunk(first, first + 9))
    bodies, last = ring.read(0, 10**9)
    assert last == 100 and decoded(b",".join(bodies)) == list(range(1, 101))
    bodies, last = ring.read(55, 10**9)
    assert decoded(b",".join(bodies)) == list(range(56, 101))
    two_chunks = len(chunk(1, 10).body) + len(chunk(11, 20).body)
    bodies, last = ring.read(0, two_chunks)
    assert last == 20
    assert ring.read(100, 10**9) == ([], 100)


def test_the_ring_drops_its_oldest_and_compacts() -> None:
    ring = Ring()
    for seq in range(1, 3001):
        ring.add(chunk(seq, seq))
    for _ in range(2500):
        ring.drop_oldest()
    assert (ring.start, ring.end, len(ring)) == (2501, 3000, 500)
    assert ring.oldest_last() == 2501
    assert ring.bytes == sum(len(chunk(s, s).body) for s in range(2501, 3001))
    bodies, _ = ring.read(2999, 10**9)
    assert decoded(b",".join(bodies)) == [3000]
    ring.skip_to(3005)
    assert ring.follows(chunk(3006, 3006))
