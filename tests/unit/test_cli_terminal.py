"""The CLI strips a job's terminal control sequences on a terminal, and only there (F18)."""

from __future__ import annotations

import io
import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.cli import output
from dockyard.cli.terminal import for_stream, strip_controls

pytestmark = pytest.mark.unit

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mred\x1b[0m text", "red text"),
        ("\x1b[2J\x1b[H\x1b[?25lcleared", "cleared"),
        ("\x1b]0;pwned title\x07after", "after"),  # OSC title, BEL-terminated
        ("\x1b]52;c;ZWNobyBoaQ==\x1b\\after", "after"),  # OSC 52 clipboard write, ST
        ("\x1bP+q544e\x1b\\after", "after"),  # DCS: asks the terminal to answer back
        ("\x1b_apc\x1b\\x", "x"),
        ("\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\", "link"),  # hyperlink
        ("\x1b7saved\x1b8", "saved"),  # two-character sequences
        ("\x1b(0box\x1b(B", "box"),
        ("\x9b31mc1 csi", "c1 csi"),
        ("\x9d0;title\x9cafter", "after"),  # 8-bit OSC and ST
        ("secret\rfake", "secretfake"),  # \r would redraw the line over what was printed
        ("back\x08\x08space", "backspace"),
        ("bell\x07 nul\x00 del\x7f", "bell nul del"),
        ("tab\tkept\nnewline kept", "tab\tkept\nnewline kept"),
        ("unicode ✓ ü 日本", "unicode ✓ ü 日本"),
        ("dangling escape\x1b", "dangling escape"),
        ("\x1b]0;unterminated title", ""),
    ],
)
def test_escape_sequences_and_controls_are_stripped(raw: str, shown: str) -> None:
    assert strip_controls(raw) == shown


@given(st.text())
def test_nothing_but_tab_and_newline_survives_and_stripping_again_changes_nothing(
    text: str,
) -> None:
    shown = strip_controls(text)
    assert not CONTROL.search(shown)
    assert strip_controls(shown) == shown


@given(st.text(st.characters(blacklist_categories=["Cc"])))
def test_text_without_controls_is_unchanged(text: str) -> None:
    assert strip_controls(text) == text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_for_stream_strips_only_on_a_terminal() -> None:
    raw = "\x1b]52;c;AAAA\x07ok"
    assert for_stream(raw, Terminal()) == "ok"
    assert for_stream(raw, io.StringIO()) == raw


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_print_line_strips_on_a_terminal(monkeypatch: pytest.MonkeyPatch, stream: str) -> None:
    out, err = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    output.print_line({"stream": stream, "text": "\x1b]0;title\x07hello \x1b[1mworld"})
    written = (out if stream == "stdout" else err).getvalue()
    assert "\x1b]" not in written and "title" not in written
    assert "hello world" in written


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_print_line_passes_the_job_output_unchanged_when_piped(
    monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    raw = "\x1b[31mred\x1b[0m and \x1b]0;title\x07"
    output.print_line({"stream": stream, "text": raw})
    assert (out if stream == "stdout" else err).getvalue() == raw + "\n"


def test_a_system_line_on_a_terminal_is_stripped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", Terminal())
    output.print_line({"stream": "system", "text": "pulling \x1b]0;x\x07image"})
    assert "pulling image" in err.getvalue() and "\x1b]0" not in err.getvalue()


def test_job_fields_on_a_terminal_are_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    output.print_job({"id": "j", "status": "failed", "error": "boom\x1b]52;c;AAAA\x07"})
    assert "\x1b]52" not in out.getvalue() and "boom" in out.getvalue()
