"""Log batches as chunks of consecutive lines, and chunks as frames: without touching each line.

A chunk is a run of consecutive lines of one job, `first..last`, whose `body` is the lines'
JSON objects exactly as the orchestrator encoded them, comma-separated: `[` + body + `]` is a
JSON array of contract lines. The relay stores, serves and streams these bytes as they came,
so a line is never decoded and re-encoded on its way from the bus to a client. Only the first
and last line of a batch are decoded in full, to check the producer and learn the seq range.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Mapping
from typing import Final

import msgspec
from msgspec import Raw, Struct

from dockyard.bus import names
from dockyard.bus.errors import MessageDecodeError
from dockyard.core.log_line import LogLine


class Chunk(Struct, frozen=True, gc=False):
    """Lines `first..last` of a job, without a gap, as JSON objects joined by commas."""

    job_id: str
    first: int
    last: int
    body: bytes
    # stdout and stderr text in it, as its producer counted (the per-job log cap counts it)
    output_bytes: int = 0
    # The attempt whose batch it came in (0 when read back from the store, which keeps none):
    # the relay keeps a batch only from the orchestrator that holds that attempt.
    attempt: int = 0

    @property
    def count(self) -> int:
        return self.last - self.first + 1


class _RawBatch(Struct, frozen=True):
    job_id: str
    attempt: int
    lines: Raw  # the JSON array, checked to be valid JSON but not taken apart


class _Seq(Struct, frozen=True):
    seq: int


_batch_decoder = msgspec.json.Decoder(_RawBatch)
_seq_decoder = msgspec.json.Decoder(_Seq)
_line_decoder = msgspec.json.Decoder(LogLine)
_raws_decoder = msgspec.json.Decoder(list[Raw])
_encoder = msgspec.json.Encoder()

_LINES_FRAME_HEAD: Final = b'{"type":"lines","lines":['
_LINES_FRAME_TAIL: Final = b"]}"
# How each line of a batch starts as msgspec encodes a LogLine. Inside a JSON string a `"`
# is always escaped, so these bytes can only be the start of a line object.
_LINE_START: Final = b'{"seq":'
_ZLIB_HEAD: Final = b"x"  # zlib's first byte with the default 32 KiB window


def chunks_of(data: bytes) -> list[Chunk]:
    """The chunks of a LogBatch message: one, unless its seqs are not consecutive.

    A batch holds its lines in seq order (LogBatch's promise). That its first and last seq
    span exactly its number of lines is checked, which catches a gap or a repeat, without
    decoding every line: the lines are counted by the bytes that start each of them.
    Raises MessageDecodeError for what is not a batch of contract lines (a poison message).
    """
    try:
        batch = _batch_decoder.decode(data)
        job_id = str(uuid.UUID(batch.job_id))
    except (msgspec.DecodeError, ValueError) as exc:
        raise MessageDecodeError(f"not a log batch: {exc}") from exc
    array = memoryview(batch.lines)
    body = array[1:-1].tobytes() if array[:1].tobytes() == b"[" else b""
    if not body.strip():
        if array.tobytes().replace(b" ", b"") != b"[]":
            raise MessageDecodeError("not a log batch: `lines` is not a list")
        return []
    try:
        chunk = _one_run(job_id, body, batch.attempt)
    except msgspec.DecodeError:
        chunk = None  # laid out otherwise than msgspec does: read it line by line
    if chunk is not None:
        return [chunk]
    try:
        lines = sorted({_seq_decoder.decode(raw).seq: raw for raw in split_body(body)}.items())
        for _, raw in (lines[0], lines[-1]):
            _line_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise MessageDecodeError(f"a log batch holds a line that is not one: {exc}") from exc
    # Not one run (no producer of ours does this): sorted, repeats dropped, split into runs.
    return _runs(job_id, [(seq, raw) for seq, raw in lines if seq >= 1], batch.attempt)


def _one_run(job_id: str, body: bytes, attempt: int) -> Chunk | None:
    """The batch as one chunk if its lines are `first..last` without a gap, else None."""
    if not body.startswith(_LINE_START):
        return None
    first_end = body.find(b"," + _LINE_START)
    first = _line_decoder.decode(body if first_end < 0 else body[:first_end]).seq
    last = _line_decoder.decode(body[body.rfind(_LINE_START) :]).seq
    if first >= 1 and last - first + 1 == body.count(_LINE_START):
        return Chunk(job_id, first, last, body, attempt=attempt)
    return None


def _runs(job_id: str, lines: list[tuple[int, Raw]], attempt: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    start = 0
    for i in range(1, len(lines) + 1):
        if i == len(lines) or lines[i][0] != lines[i - 1][0] + 1:
            run = lines[start:i]
            body = b",".join(raw for _, raw in run)
            chunks.append(Chunk(job_id, run[0][0], run[-1][0], body, attempt=attempt))
            start = i
    return chunks


def split_body(body: bytes) -> list[Raw]:
    """The lines of a chunk body, each as its raw JSON."""
    return _raws_decoder.decode(b"[" + body + b"]")


def with_output_bytes(chunks: list[Chunk], headers: Mapping[str, str] | None) -> list[Chunk]:
    """The batch's stdout/stderr byte count (its header) on its first chunk: a batch is one
    chunk but for a producer's gap, where the count need not be exact."""
    try:
        count = int((headers or {}).get(names.LOG_BYTES, "0"))
    except ValueError:
        count = 0
    if not chunks or count <= 0:
        return chunks
    return [msgspec.structs.replace(chunks[0], output_bytes=count), *chunks[1:]]


def slice_chunk(chunk: Chunk, lo: int, hi: int) -> Chunk:
    """The part of `chunk` with lo <= seq <= hi (which must overlap it)."""
    lo, hi = max(lo, chunk.first), min(hi, chunk.last)
    if lo > hi:
        raise ValueError(f"{lo}..{hi} is outside the chunk {chunk.first}..{chunk.last}")
    if lo == chunk.first and hi == chunk.last:
        return chunk
    raws = split_body(chunk.body)
    body = b",".join(raws[lo - chunk.first : hi - chunk.first + 1])
    return Chunk(chunk.job_id, lo, hi, body)


def lines_frame(bodies: list[bytes]) -> bytes:
    """`{"type": "lines", "lines": [...]}` from chunk bodies in seq order.

    One join: `head + body + tail` would copy a frame twice, each time into fresh memory
    (a frame is far above malloc's mmap threshold), which costs more than the copy itself.
    """
    return b"".join((_LINES_FRAME_HEAD, b",".join(bodies), _LINES_FRAME_TAIL))


def end_frame(status: str, exit_code: int | None, reason: str | None) -> bytes:
    return _encoder.encode(
        {"type": "end", "status": status, "exit_code": exit_code, "reason": reason}
    )


def lines_page(bodies: list[bytes], next_after: int, complete: bool) -> bytes:
    """The HTTP answer `{"lines": [...], "next_after": M, "complete": bool}`."""
    tail = b'],"next_after":%d,"complete":%s}' % (next_after, b"true" if complete else b"false")
    return b"".join((b'{"lines":[', b",".join(bodies), tail))


def packed(body: bytes) -> bytes:
    """A chunk body as it may be stored: zlib-compressed (level 1).

    Compressing here costs a fraction of what PostgreSQL's own TOAST compression (pglz) of
    the same bytes costs the database, and stores smaller rows. `unpacked` reads both forms.
    """
    return zlib.compress(body, 1)


def unpacked(stored: bytes) -> bytes:
    """A chunk body as stored, `packed` or not: a body is JSON objects, so it starts with
    `{`, where a zlib stream (at any level, 32 KiB window) starts with 0x78 (`x`)."""
    return zlib.decompress(stored) if stored[:1] == _ZLIB_HEAD else stored


def encode_lines(lines: list[LogLine]) -> bytes:
    """A chunk body made from lines (for tests and tools; the relay never re-encodes)."""
    return b",".join(_encoder.encode(line) for line in lines)
