"""One attempt's output as the contract's numbered log lines, within bounded memory: pure.

`LogPipeline` splits and masks each stream (`lines.py`), numbers lines from the job's next `seq`,
and enforces the per-job byte cap: past it one `system` line says so and only a bounded ring of
the most recent lines is kept, emitted at the end after a `system` line counting the omitted.
The same ring absorbs a consumer that falls too far behind, so memory never grows without
bound whatever the job writes and however slow the bus is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime
from itertools import accumulate, repeat

from dockyard.core.log_line import LogLine, LogStream
from dockyard.runtime.lines import LineSplitter, SecretMasker
from dockyard.runtime.ports import OutputStream

DEFAULT_CAP_BYTES = 16 * 1024 * 1024
RING_LINES = 1000
RING_BYTES = 1024 * 1024
# About 100 MB at most for a stalled consumer (a line object costs ~100 bytes plus its text).
MAX_PENDING_LINES = 100_000
# What a line costs in a batch beyond its text: the JSON keys, seq, time and attempt.
LINE_OVERHEAD = 64


class LineBatch(list[LogLine]):
    """Lines taken together, with the job's own output among them counted as they were taken
    (stdout and stderr text; `system` lines are Dockyard's and do not count toward the cap)."""

    __slots__ = ("output_bytes",)

    def __init__(self, lines: Iterable[LogLine] = (), output_bytes: int = 0) -> None:
        super().__init__(lines)
        self.output_bytes = output_bytes


class LogPipeline:
    """Feed chunks and notes in, take numbered lines out; `finish` once the streams end."""

    def __init__(
        self,
        *,
        attempt: int,
        next_seq: int = 1,
        secrets: Iterable[str] = (),
        cap_bytes: int = DEFAULT_CAP_BYTES,
        used_bytes: int = 0,
        ring_lines: int = RING_LINES,
        ring_bytes: int = RING_BYTES,
        max_pending_lines: int = MAX_PENDING_LINES,
    ) -> None:
        self.attempt = attempt
        self.next_seq = next_seq
        self.used_bytes = used_bytes  # what the job wrote, all attempts: the cap counts this
        self.capped = False
        self.finished = False
        self._cap = cap_bytes
        self.mask(secrets)
        self._pending: list[LogLine] = []  # lines before _head are taken (compacted lazily)
        self._head = 0
        # Text length of _pending[:i] at i: what a batch holds is a difference, not a pass
        # over its lines (the output path's hot loop).
        self._text_before = [0]
        self._dropped_lines = 0  # compacted away: a line's position is this plus its index
        self._system_lines: deque[tuple[int, int]] = deque()  # (position, text length)
        self._max_pending = max_pending_lines
        self._lagging = False
        self._ring: deque[tuple[LogStream, str, datetime]] = deque()
        self._ring_bytes = 0
        self._ring_max = (ring_lines, ring_bytes)
        self._omitted = 0
        self.dropped_bytes = 0  # text of the lines omitted (past the cap, or while behind)

    def mask(self, secrets: Iterable[str]) -> None:
        """Mask these values from now on: call it before any output is fed (an attempt learns
        its secrets when it opens them, just before its containers exist)."""
        self._masker = SecretMasker(secrets)
        self._splitters = {
            "stdout": LineSplitter(self._masker),
            "stderr": LineSplitter(self._masker),
        }

    @property
    def pending_lines(self) -> int:
        return len(self._pending) - self._head

    @property
    def pending_bytes(self) -> int:
        """What the pending lines would weigh in batches: their text plus each line's keys."""
        text = self._text_before[-1] - self._text_before[self._head]
        return text + LINE_OVERHEAD * self.pending_lines

    def feed(self, stream: OutputStream, data: bytes, at: datetime) -> None:
        """Take a chunk as the job wrote it; complete lines become pending (or go to the ring)."""
        if self.finished:
            raise RuntimeError("feed after finish")
        lines = self._splitters[stream].feed(data)
        if (
            not self.capped
            and not self._lagging
            and self.used_bytes + len(data) <= self._cap
            and self.pending_lines + len(lines) <= self._max_pending
        ):
            self.used_bytes += len(data)
            self._emit_many(stream, lines, at)  # the fast path: nearly every chunk
            return
        # Near a limit: account line by line. A chunk's unfinished line is charged with it.
        rest = len(data) - sum(len(line) + 1 for line in lines)
        for line in lines:
            self._accept(stream, line, at, len(line) + 1)
        self._charge(max(rest, 0), at)

    def note(self, text: str, at: datetime) -> None:
        """A `system` line: Dockyard's own words (pulling, timed out...); also after `finish`."""
        self._emit_many("system", [self._masker.mask(text)], at)

    def finish(self, at: datetime) -> None:
        """The streams ended: flush unfinished lines, then the omitted count and the ring."""
        if self.finished:
            return
        for stream in ("stdout", "stderr"):
            for line in self._splitters[stream].flush():
                self._accept(stream, line, at, 0)
        self.finished = True
        self._lagging = False  # the ring is flushed here; take() must not flush it again
        if self._omitted or self._ring:
            why = "past the log limit" if self.capped else "while the log reader was behind"
            self._flush_ring(f"{why}; the last {len(self._ring)} follow", at)

    def take(self, max_lines: int, max_bytes: int) -> LineBatch:
        """Pop the oldest pending lines: at most max_lines, and max_bytes unless one line."""
        head = self._head
        lines = self._pending[head : head + max_lines]
        if self._text(head, len(lines)) + LINE_OVERHEAD * len(lines) > max_bytes:
            lines = _within(lines, max_bytes)  # rare: long lines
        taken = len(lines)
        batch = LineBatch(lines, self._text(head, taken) - self._system_text(head + taken))
        self._head = head + taken
        if self._head > 4096 and self._head * 2 > len(self._pending):
            del self._pending[: self._head]
            del self._text_before[: self._head]
            self._dropped_lines += self._head
            self._head = 0
        if batch and self._lagging and self.pending_lines <= self._max_pending // 2:
            self._catch_up(batch[-1].at)
        return batch

    def _text(self, start: int, count: int) -> int:
        return self._text_before[start + count] - self._text_before[start]

    def _system_text(self, end: int) -> int:
        """Take the system lines before index `end` off their list: their text length."""
        system, total, end = self._system_lines, 0, end + self._dropped_lines
        while system and system[0][0] < end:
            total += system.popleft()[1]
        return total

    def _emit_many(self, stream: LogStream, lines: list[str], at: datetime) -> None:
        if not lines:
            return
        seq, attempt = self.next_seq, self.attempt
        count = len(lines)
        # map() over the type keeps the per-line loop in C: this is the hot path.
        self._pending += map(
            LogLine,
            range(seq, seq + count),
            repeat(stream, count),
            lines,
            repeat(at),
            repeat(attempt),
        )
        self.next_seq = seq + count
        text_before = self._text_before
        if stream == "system":
            at_index = len(text_before) - 1 + self._dropped_lines
            self._system_lines.extend((at_index + i, len(t)) for i, t in enumerate(lines))
        # Its last entry goes back in as `initial`: accumulate yields it first.
        text_before += accumulate(map(len, lines), initial=text_before.pop())

    def _accept(self, stream: LogStream, text: str, at: datetime, cost: int) -> None:
        self._charge(cost, at)
        if not self.capped and self.pending_lines >= self._max_pending and not self._lagging:
            self._lagging = True
        if self.capped or self._lagging:
            self._to_ring(stream, text, at)
        else:
            self._emit_many(stream, [text], at)

    def _charge(self, cost: int, at: datetime) -> None:
        self.used_bytes += cost
        if not self.capped and self.used_bytes > self._cap:
            self.capped = True
            mib, rest = divmod(self._cap, 1024 * 1024)
            limit = f"{mib} MiB" if mib and not rest else f"{self._cap} bytes"
            self._emit_many(
                "system",
                [f"log limit of {limit} reached: output is dropped from here on, the job goes on"],
                at,
            )

    def _to_ring(self, stream: LogStream, text: str, at: datetime) -> None:
        self._ring.append((stream, text, at))
        self._ring_bytes += len(text)
        max_lines, max_bytes = self._ring_max
        while len(self._ring) > max_lines or (self._ring_bytes > max_bytes and len(self._ring) > 1):
            dropped = len(self._ring.popleft()[1])
            self._ring_bytes -= dropped
            self.dropped_bytes += dropped
            self._omitted += 1

    def _catch_up(self, at: datetime) -> None:
        """The consumer drained half the backlog: say what was dropped, resume emitting."""
        self._lagging = False
        if self.capped:
            return  # past the cap the ring waits for the end
        self._flush_ring(f"while the log reader was behind; the last {len(self._ring)} follow", at)

    def _flush_ring(self, why: str, at: datetime) -> None:
        if self._omitted:  # a reader that fell behind but dropped nothing has nothing to say
            self._emit_many("system", [f"{self._omitted} lines omitted {why}"], at)
        for stream, text, line_at in self._ring:
            self._emit_many(stream, [text], line_at)
        self._ring.clear()
        self._ring_bytes = 0
        self._omitted = 0


def _within(batch: list[LogLine], max_bytes: int) -> list[LogLine]:
    """The longest prefix of `batch` within max_bytes, and never less than one line."""
    size = 0
    for count, line in enumerate(batch):
        size += len(line.text) + LINE_OVERHEAD
        if size > max_bytes:
            return batch[: max(count, 1)]
    return batch
