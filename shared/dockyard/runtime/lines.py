"""Bytes in arbitrary chunks to masked log lines, per stream: pure and allocation-light.

A line has no trailing newline (`\\r\\n` counts as one), is valid UTF-8 (invalid bytes become
U+FFFD) and is at most 64 KiB once encoded; a longer one is split without cutting a character.
Secrets are masked on whole lines, so a secret split across chunks is still caught; an
over-long line is cut only where no secret occurrence could straddle the cut.
"""

from __future__ import annotations

import base64
import codecs
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MAX_LINE_BYTES = 64 * 1024
MASK = "***"


def encoded_forms(value: str) -> set[str]:
    """The value and the encodings a job most often prints it in by accident: base64 (plain
    and URL-safe, unpadded, so it matches padded or not) and URL encoding. Best effort: a
    job that means to leak a secret can always transform it some other way."""
    raw = value.encode()
    return {
        value,
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        quote(value, safe=""),
        quote_plus(value, safe=""),
    }


class SecretMasker:
    """Replaces every occurrence of every secret (and of its `encoded_forms`) by `***`,
    overlapping ones included."""

    __slots__ = ("_secrets", "longest")

    def __init__(self, values: Iterable[str]) -> None:
        # Each line of a multi-line secret (a PEM key...) is masked on its own, since the
        # log is cut into lines before masking; whitespace-only pieces would mask everything.
        forms = {form for value in values for form in encoded_forms(value)}
        pieces = {piece for value in forms for piece in value.splitlines() if piece.strip()}
        self._secrets = tuple(sorted(pieces, key=len, reverse=True))
        self.longest = len(self._secrets[0]) if self._secrets else 0

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The merged [start, end) ranges of `text` covered by some secret occurrence."""
        found: list[tuple[int, int]] = []
        for secret in self._secrets:
            start = text.find(secret)
            while start >= 0:
                found.append((start, start + len(secret)))
                start = text.find(secret, start + 1)
        found.sort()
        merged: list[tuple[int, int]] = []
        for start, end in found:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def mask(self, text: str) -> str:
        if not any(secret in text for secret in self._secrets):
            return text  # the common case, at the speed of `in`
        out: list[str] = []
        last = 0
        for start, end in self.spans(text):
            out.append(text[last:start])
            out.append(MASK)
            last = end
        out.append(text[last:])
        return "".join(out)


def utf8_len(text: str) -> int:
    # Most log text is ASCII, where len() already is the answer.
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _fit(text: str, max_bytes: int) -> int:
    """The longest prefix length (in characters) of `text` that encodes to at most max_bytes."""
    if text.isascii():
        return min(len(text), max_bytes)
    encoded = text.encode("utf-8")[:max_bytes]
    return len(encoded.decode("utf-8", "ignore"))  # drops a cut trailing character


def split_long(text: str, max_bytes: int = MAX_LINE_BYTES) -> list[str]:
    """`text` in pieces of at most max_bytes encoded, each cut between characters."""
    pieces: list[str] = []
    while utf8_len(text) > max_bytes:
        cut = _fit(text, max_bytes)
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


class LineSplitter:
    """One stream's splitter: `feed` returns the lines completed by a chunk, `flush` the rest."""

    __slots__ = ("_decoder", "_masker", "_max", "_partial")

    def __init__(self, masker: SecretMasker | None = None, max_bytes: int = MAX_LINE_BYTES) -> None:
        # The incremental decoder keeps a character split across chunks for the next one.
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._masker = masker if masker is not None and masker.longest else None
        self._max = max_bytes
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        text = self._decoder.decode(data)
        end = text.rfind("\n")
        if end < 0:
            self._partial += text
            return self._cut_partial()
        block = self._partial + text[:end] if self._partial else text[:end]
        self._partial = text[end + 1 :]
        lines = self._finish(block.split("\n"), block)
        if len(self._partial) > self._max // 4:
            lines += self._cut_partial()
        return lines

    def flush(self) -> list[str]:
        """The last line if the stream ended without a newline."""
        text = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return self._finish([text], text) if text else []

    def _finish(self, lines: list[str], block: str) -> list[str]:
        """`lines`, the pieces of `block`, without a `\r` ending, masked, split to fit."""
        if "\r" in block:
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        if self._masker is not None:
            lines = [self._masker.mask(line) for line in lines]
        # No line can be longer than its block (a mask of `***` may triple a 1-character
        # secret), and no line of at most max/4 characters can exceed max bytes: both spare
        # a pass over the lines. isascii() is O(1) on a str.
        most = len(block) * (3 if self._masker is not None else 1)
        if (most <= self._max and block.isascii()) or max(map(len, lines)) * 4 <= self._max:
            return lines
        out: list[str] = []
        for line in lines:
            out += split_long(line, self._max)
        return out

    def _cut_partial(self) -> list[str]:
        """Emit 64 KiB pieces of a line still without its newline, so memory stays bounded."""
        # Keep enough text back that a secret starting before the cut lies wholly before it.
        hold = self._masker.longest - 1 if self._masker is not None else 0
        if self._partial.endswith("\r"):
            hold += 1  # it may be the first half of "\r\n": not part of the line
        pieces: list[str] = []
        while utf8_len(self._partial) > self._max + 4 * hold:
            cut = self._safe_cut(_fit(self._partial, self._max))
            piece, self._partial = self._partial[:cut], self._partial[cut:]
            pieces.append(self._masker.mask(piece) if self._masker is not None else piece)
        return pieces

    def _safe_cut(self, cut: int) -> int:
        """Move a cut that falls inside a secret occurrence before it (or after, if at 0)."""
        if self._masker is None:
            return cut
        for start, end in self._masker.spans(self._partial):
            if start < cut < end:
                return start if start > 0 else end
        return cut
