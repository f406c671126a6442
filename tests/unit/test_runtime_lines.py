"""Bytes in arbitrary chunks to lines: newlines, UTF-8, 64 KiB splits and secret masking."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from dockyard.runtime.lines import MAX_LINE_BYTES, LineSplitter, SecretMasker, split_long

SMALL = 16  # a small line limit, so that hypothesis reaches the long-line paths


def _feed(data: bytes, cuts: list[int], splitter: LineSplitter) -> list[str]:
    """Feed `data` cut at `cuts` (positions), then flush."""
    lines: list[str] = []
    last = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        lines += splitter.feed(data[last:cut])
        last = cut
    return lines + splitter.flush()


def _reference(data: bytes, max_bytes: int) -> list[str]:
    """Split the whole at once: what any chunking must give."""
    segments = data.split(b"\n")
    if segments[-1] == b"":
        segments.pop()  # a final newline ends the last line, it does not start one
    lines: list[str] = []
    for segment in segments:
        text = segment.decode("utf-8", "replace")
        lines += split_long(text[:-1] if text.endswith("\r") else text, max_bytes)
    return lines


_bytes = st.binary(max_size=300) | st.lists(
    st.sampled_from([b"a", b"\n", b"\r", b"\r\n", "é".encode(), "€".encode(), "😀".encode(),
                     b"\xff", b"\xe2\x82", b"\x80", b"0123456789"]),
    max_size=80,
).map(b"".join)  # fmt: skip


@given(data=_bytes, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
@example(data=b"a\r\nb\n", cuts=[2])
@example(data="é".encode() * 20 + b"\n", cuts=[1, 3, 17])
def test_any_chunking_gives_the_lines_of_the_whole(data: bytes, cuts: list[int]) -> None:
    lines = _feed(data, cuts, LineSplitter(max_bytes=SMALL))

    assert lines == _reference(data, SMALL)
    assert all(len(line.encode()) <= SMALL for line in lines)


def test_crlf_and_a_final_line_without_newline() -> None:
    splitter = LineSplitter()

    assert splitter.feed(b"one\r\ntwo\n\nthr") == ["one", "two", ""]
    assert splitter.feed(b"ee") == []
    assert splitter.flush() == ["three"]
    assert splitter.flush() == []


def test_a_character_split_across_chunks_is_kept_whole() -> None:
    splitter = LineSplitter()
    euro = "€".encode()

    assert splitter.feed(b"price: " + euro[:1]) == []
    assert splitter.feed(euro[1:] + b"5\n") == ["price: €5"]


def test_invalid_utf8_is_replaced() -> None:
    assert LineSplitter().feed(b"bad \xff\xfe end\n") == ["bad \ufffd\ufffd end"]


def test_a_line_over_64_kib_is_split_between_characters() -> None:
    line = "é" * 40_000  # 80 000 bytes
    splitter = LineSplitter()

    pieces = splitter.feed(line.encode()[:50_001]) + splitter.feed(line.encode()[50_001:] + b"\n")

    assert "".join(pieces) == line
    assert [len(p.encode()) for p in pieces] == [MAX_LINE_BYTES, 80_000 - MAX_LINE_BYTES]


def test_an_endless_line_is_emitted_in_pieces_as_it_grows() -> None:
    splitter = LineSplitter()
    emitted: list[str] = []
    for _ in range(10):
        emitted += splitter.feed(b"y" * 30_000)

    assert [len(p) for p in emitted] == [MAX_LINE_BYTES] * 4
    assert splitter.flush() == ["y" * (300_000 - 4 * MAX_LINE_BYTES)]


def test_secrets_are_masked_wherever_they_occur() -> None:
    masker = SecretMasker(["hunter2", "abc", "bcd"])

    assert masker.mask("pw=hunter2 and hunter2!") == "pw=*** and ***!"
    assert masker.mask("xabcdx") == "x***x"  # overlapping secrets: no letter left over
    assert masker.mask("nothing here") == "nothing here"


def test_each_line_of_a_multiline_secret_is_masked() -> None:
    key = "-----BEGIN KEY-----\nMIIBOgIBAAJBAK\n-----END KEY-----\n"
    splitter = LineSplitter(SecretMasker([key]))

    assert splitter.feed(key.encode() + b"ok\n") == ["***", "***", "***", "ok"]


def test_blank_secrets_mask_nothing() -> None:
    assert SecretMasker(["", "  "]).mask("a b") == "a b"


def test_a_secret_split_across_chunks_is_masked() -> None:
    splitter = LineSplitter(SecretMasker(["s3cr3t"]))

    assert splitter.feed(b"token s3c") == []
    assert splitter.feed(b"r3t done\n") == ["token *** done"]


_secret = st.text(st.sampled_from("abcxyz€"), min_size=1, max_size=6)


@given(
    secrets=st.lists(_secret, min_size=1, max_size=3),
    parts=st.lists(st.sampled_from(["a", "b", "c", "x", "€", "ab", "abc"]) | _secret, max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
)
def test_no_secret_survives_any_chunking_or_long_line_split(
    secrets: list[str], parts: list[str], cuts: list[int]
) -> None:
    data = "".join(parts).encode()  # one logical line, long enough to be cut in pieces
    lines = _feed(data, cuts, LineSplitter(SecretMasker(secrets), max_bytes=SMALL))
    joined = "".join(lines)

    assert not any(secret in joined for secret in secrets)
    if not any(secret in data.decode() for secret in secrets):
        assert joined == data.decode()


@given(
    secret=st.sampled_from(["", "a", "ab", "€"]),
    lines=st.lists(st.text(alphabet="ab€x", max_size=20), min_size=1, max_size=5),
)
def test_no_piece_exceeds_the_limit_even_when_a_mask_outgrows_its_secret(
    secret: str, lines: list[str]
) -> None:
    # Masking "a" with "***" triples a line: the shortcut that trusts the block's length
    # must not let such a line through uncut.
    splitter = LineSplitter(SecretMasker([secret]), max_bytes=12)
    pieces = splitter.feed("\n".join(lines).encode() + b"\n")

    assert all(len(piece.encode()) <= 12 for piece in pieces)
