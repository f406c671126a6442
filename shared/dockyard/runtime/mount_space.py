"""How full a running container's tmpfs mounts are, seen through its mount namespace.

`/proc/<pid>/root` is the container's root as its processes see it, so a `statvfs` there
measures its own `/tmp`, not the host's. Needs the same host and root (the orchestrator's
usual place); elsewhere it answers nothing rather than guess.
"""

from __future__ import annotations

import os
from typing import Final, NamedTuple

# Full: less than this free. A write that hit ENOSPC leaves at most a partial page.
FULL_BELOW_BYTES: Final = 64 * 1024
MIB: Final = 1024 * 1024


class Space(NamedTuple):
    size_mb: int
    free_bytes: int

    @property
    def full(self) -> bool:
        return self.free_bytes < FULL_BELOW_BYTES


def space(pid: int, path: str, proc: str = "/proc") -> Space | None:
    """The size and free space of `path` inside the container of `pid`, or None if unknown."""
    try:
        st = os.statvfs(f"{proc}/{pid}/root{path}")
    except OSError:  # the process is gone, or this is not its host
        return None
    return Space(
        size_mb=round(st.f_blocks * st.f_frsize / MIB), free_bytes=st.f_bavail * st.f_frsize
    )
