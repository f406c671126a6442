"""Job output made safe to show on a terminal.

A job's log is written by whoever wrote the job, and read by others (the admin sees every
tenant's): escape sequences in it could set the terminal's title, write the clipboard (OSC 52),
redraw lines to hide text, or answer back as if typed (security review F18). On a terminal
the CLI removes every escape sequence and every C0/C1 control character except tab and
newline; piped or as JSON the text passes unchanged, as the job wrote it.
"""

from __future__ import annotations

import re
from typing import Final, TextIO

# ESC-introduced: CSI (colours, cursor moves), the string commands OSC/DCS/SOS/PM/APC up to
# their terminator (BEL or ST) or the end of the text, and the two-character ones; then the
# same introduced by their 8-bit C1 forms.
_SEQUENCES: Final = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x90\x98\x9d\x9e\x9f][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
)
# What is left of them, and every other control but \t and \n (\r too: it redraws a line).
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_controls(text: str) -> str:
    """`text` without escape sequences and control characters other than \\t and \\n."""
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


def for_stream(text: str, stream: TextIO) -> str:
    """Stripped when `stream` is a terminal, else unchanged."""
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: not a terminal
        terminal = False
    return strip_controls(text) if terminal else text
