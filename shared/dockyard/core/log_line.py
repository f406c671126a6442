"""A log line as the contract shows it: what the runtime makes, the bus carries and the log
store keeps."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from msgspec import Struct

LogStream = Literal["stdout", "stderr", "system"]


class LogLine(Struct, frozen=True, gc=False):
    """One line of a job's log (gc=False: its fields cannot form cycles)."""

    seq: int
    stream: LogStream
    text: str
    at: datetime
    attempt: int
