"""CPU time of benchmark processes, read from /proc: what a figure per job or per line costs."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used so far (this one by default)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
