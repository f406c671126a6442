"""The recent lines of one job, in memory, shared by every client following it: pure.

A ring holds chunks in seq order, `start..end`. Lines enter only in order (`end + 1` next;
what repeats stored lines is trimmed), so whatever a client reads from it, from any position,
is gap-free and repeat-free. Each client is only a position in the ring; the ring's size is
bounded by its owner (room.py), which drops its oldest chunks.
"""

from __future__ import annotations

from bisect import bisect_right

from dockyard.job_logs.chunks import Chunk, slice_chunk


class Ring:
    def __init__(self, end: int = 0) -> None:
        self._chunks: list[Chunk] = []
        self._lasts: list[int] = []
        self._head = 0  # chunks before it are dropped (compacted lazily)
        self.end = end  # every line up to here has entered the ring (or was skipped)
        self.bytes = 0

    @property
    def start(self) -> int:
        """The first seq held; `end + 1` when empty."""
        return self._chunks[self._head].first if self._head < len(self._chunks) else self.end + 1

    def __len__(self) -> int:
        return len(self._chunks) - self._head

    def follows(self, chunk: Chunk) -> bool:
        """Whether `chunk` can be added: it brings lines past `end` without leaving a gap."""
        return chunk.first <= self.end + 1 < chunk.last + 1

    def add(self, chunk: Chunk) -> Chunk | None:
        """Add the lines of `chunk` past `end`: the part added, None if it held nothing new."""
        if chunk.last <= self.end:
            return None
        if chunk.first > self.end + 1:
            raise ValueError(f"lines {self.end + 1}..{chunk.first - 1} would be missing")
        if chunk.first <= self.end:
            chunk = slice_chunk(chunk, self.end + 1, chunk.last)
        self._chunks.append(chunk)
        self._lasts.append(chunk.last)
        self.end = chunk.last
        self.bytes += len(chunk.body)
        return chunk

    def skip_to(self, end: int) -> None:
        """Lines up to `end` will never come (lost for good): go on after them."""
        self.end = max(self.end, end)

    def read(self, after: int, max_bytes: int) -> tuple[list[bytes], int]:
        """Chunk bodies of the lines after `after`, about `max_bytes` of them (at least one
        chunk), and the last seq they hold (`after` if none)."""
        i = bisect_right(self._lasts, after, lo=self._head)
        bodies: list[bytes] = []
        size = 0
        last = after
        while i < len(self._chunks):
            chunk = self._chunks[i]
            if bodies and size + len(chunk.body) > max_bytes:
                break
            if chunk.first <= after:
                chunk = slice_chunk(chunk, after + 1, chunk.last)
            bodies.append(chunk.body)
            size += len(chunk.body)
            last = chunk.last
            i += 1
        return bodies, last

    def oldest_last(self) -> int | None:
        """The last seq of the oldest chunk held (None when empty)."""
        return self._lasts[self._head] if self._head < len(self._chunks) else None

    def drop_oldest(self) -> None:
        if self._head >= len(self._chunks):
            return
        self.bytes -= len(self._chunks[self._head].body)
        self._head += 1
        if self._head >= 1024 and self._head * 2 >= len(self._chunks):
            del self._chunks[: self._head]
            del self._lasts[: self._head]
            self._head = 0
